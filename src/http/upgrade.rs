//! The WebSocket upgrade decision: RFC 6455 headers, the token (or
//! `?user=` in open mode) and the subprotocol, which picks the encoding.

use super::{bearer_token, error, has_token, header, query_param, verify, Outcome};
use crate::{
    auth::Claims,
    chat::session::Upgrade,
    node::Node,
    wire::{valid_user, Encoding},
};
use bytes::Bytes;

/// Checks the token (or `?user=` in open mode). `Err` is the 401 message.
fn authenticate(
    req: &httparse::Request<'_, '_>,
    query: &str,
    node: &Node,
) -> Result<Claims, String> {
    let bearer = header(req, "authorization").and_then(bearer_token);
    if let Some(token) = bearer.or_else(|| query_param(query, "token")) {
        return verify(token, node);
    }
    if node.cfg().open {
        if let Some(user) = query_param(query, "user") {
            if !valid_user(user) {
                return Err("`user` is not a valid user id".into());
            }
            return Ok(Claims {
                sub: user.into(),
                exp: u64::MAX,
                name: None,
                admin: false,
                jti: None,
                // A later revocation of the user ends this session too,
                // without refusing the user's next one.
                iat: Some(crate::wire::now_ms() / 1000),
            });
        }
    }
    Err("missing token".into())
}

/// `host[:port]` split, IPv6 brackets kept, the port defaulted.
fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// Whether a browser page of `origin` may open a WebSocket here: same host
/// and port as the request's `Host` (schemes not compared), or listed in
/// `allowed` (`*`: any). PROTOCOL.md section 2.
fn origin_allowed(origin: &str, host: Option<&str>, tls: bool, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let origin_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => 443,
        _ => 80,
    };
    let theirs = host_port(authority, origin_port);
    let ours = host.and_then(|h| host_port(h.trim(), if tls { 443 } else { 80 }));
    theirs.is_some() && theirs == ours
}

pub(super) fn upgrade(
    req: &httparse::Request<'_, '_>,
    query: &str,
    rest: &[u8],
    node: &Node,
) -> Outcome {
    let key = header(req, "sec-websocket-key");
    let ok = has_token(header(req, "upgrade"), "websocket")
        && has_token(header(req, "connection"), "upgrade")
        && header(req, "sec-websocket-version") == Some("13")
        && key.is_some_and(|k| !k.is_empty());
    let Some(key) = key.filter(|_| ok) else {
        return Outcome::Respond(error(400, "bad_request", "not a WebSocket upgrade"));
    };
    if let Some(origin) = header(req, "origin") {
        // Behind a TLS proxy the page was https though this hop is plain.
        // `X-Forwarded-Proto` counts only where proxies are configured; a
        // cross-site page cannot set it anyway (a browser sends no custom
        // headers with a WebSocket handshake).
        let forwarded_https = !node.cfg().trusted_proxies.is_empty()
            && header(req, "x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
        let tls = node.cfg().tls.is_some() || forwarded_https;
        if !origin_allowed(origin, header(req, "host"), tls, &node.cfg().allowed_origins) {
            node.metrics().refuse("forbidden_origin");
            let why = "this page's origin may not open a WebSocket here";
            return Outcome::Respond(error(403, "forbidden", why));
        }
    }
    let claims = match authenticate(req, query, node) {
        Ok(c) => c,
        Err(why) => return Outcome::Respond(error(401, "unauthorized", &why)),
    };
    let offered = Encoding::choose(header(req, "sec-websocket-protocol"));
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    );
    if let Some(enc) = offered {
        response.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", enc.subprotocol()));
    }
    response.push_str("\r\n");
    Outcome::Upgrade(Upgrade {
        response: Bytes::from(response),
        claims,
        enc: offered.unwrap_or(Encoding::Json),
        leftover: rest.to_vec(),
        forwarded: header(req, "x-forwarded-for")
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_host_and_port_or_the_list() {
        let none: &[String] = &[];
        assert!(origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080"), false, none));
        assert!(origin_allowed("https://chat.example", Some("chat.example:443"), true, none));
        assert!(origin_allowed("http://chat.example", Some("chat.example"), false, none));
        assert!(origin_allowed("https://[::1]:9000", Some("[::1]:9000"), false, none));
        assert!(!origin_allowed("http://evil.example", Some("chat.example"), false, none));
        assert!(!origin_allowed("http://localhost:8080", Some("127.0.0.1:8080"), false, none));
        assert!(!origin_allowed("http://127.0.0.1:8081", Some("127.0.0.1:8080"), false, none));
        assert!(!origin_allowed("null", Some("127.0.0.1:8080"), false, none));
        assert!(!origin_allowed("http://a.example", None, false, none));
        let list = ["https://a.example".to_string()];
        assert!(origin_allowed("https://a.example/", Some("b.example"), false, &list));
        assert!(origin_allowed("http://x", Some("y"), false, &["*".to_string()]));
    }
}
