//! HTTP on the shared port: request heads parsed with httparse, routing, the
//! WebSocket upgrade decision (auth, subprotocol, RFC 6455 headers) and the
//! plain endpoints, as pure `bytes in → decision out` functions.
//!
//! Writes nothing to sockets itself: the reactor queues what it returns.

use crate::{
    api,
    auth::Claims,
    proto::{valid_user, Encoding},
    reactor::Shared,
};
use bytes::Bytes;
use std::sync::atomic::Ordering;

/// The embedded web client.
const INDEX: &str = include_str!("web/index.html");

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 64 << 10;
/// Most headers accepted.
const MAX_HEADERS: usize = 48;

/// What to do with a connection once its request head is in.
#[derive(Debug)]
pub enum Outcome {
    /// Need more bytes.
    Partial,
    /// Answer with these bytes, then close.
    Respond(Bytes),
    /// An API call to carry out on the reactor (it answers, maybe later).
    Api(crate::api::Call),
    /// Upgrade: write `response` (the 101), then speak WebSocket. `leftover`
    /// holds bytes read past the head.
    Upgrade { response: Bytes, claims: Claims, enc: Encoding, leftover: Vec<u8> },
}

/// A JSON error body `{"error":code,"message":..}` with its status.
pub fn error(status: u16, code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    response(status, "application/json", body.as_bytes())
}

/// A complete `Connection: close` response.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Bytes {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        201 => "Created",
        202 => "Accepted",
        401 => "Unauthorized",
        403 => "Forbidden",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

pub(crate) fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Parses what has arrived of a request and decides.
pub fn handle(buf: &[u8], shared: &Shared) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Outcome::Respond(error(431, "too_large", "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Outcome::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Outcome::Respond(error(431, "too_large", "too many headers"))
        }
        Err(e) => return Outcome::Respond(error(400, "bad_request", &format!("bad request: {e}"))),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let body_len = match header(&req, "content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Outcome::Respond(error(400, "bad_request", "bad Content-Length")),
    };
    if body_len > MAX_BODY {
        // Refused on the head alone: the body is never read.
        return Outcome::Respond(error(413, "too_large", "body over 64 KiB"));
    }
    if header(&req, "transfer-encoding").is_some() {
        return Outcome::Respond(error(
            400,
            "bad_request",
            "send a Content-Length body, not chunked",
        ));
    }
    match path {
        "/ws" if method == "GET" => upgrade(&req, query, &buf[head_len..], shared),
        "/health" if method == "GET" => health(shared),
        "/metrics" if method == "GET" => Outcome::Respond(response(
            200,
            crate::metrics::CONTENT_TYPE,
            shared.metrics.render(shared).as_bytes(),
        )),
        "/" if method == "GET" => {
            Outcome::Respond(response(200, "text/html; charset=utf-8", INDEX.as_bytes()))
        }
        "/ws" | "/health" | "/metrics" | "/" => {
            Outcome::Respond(error(405, "method_not_allowed", "use GET"))
        }
        _ if path.starts_with("/api/") => {
            if buf.len() < head_len + body_len {
                return Outcome::Partial;
            }
            let body = &buf[head_len..head_len + body_len];
            let bearer = header(&req, "authorization").and_then(bearer_token);
            match api::route(method, path, query, body, bearer, shared) {
                Ok(call) => Outcome::Api(call),
                Err(response) => Outcome::Respond(response),
            }
        }
        _ => Outcome::Respond(error(404, "not_found", "unknown path")),
    }
}

fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn health(shared: &Shared) -> Outcome {
    let storage_ok = shared.storage.is_healthy();
    let redis = match &shared.cluster {
        None => "off",
        Some(c) if c.is_up() => "ok",
        Some(_) => "down",
    };
    let ok = storage_ok && redis != "down";
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "node": shared.cfg.node_id,
        "redis": redis,
        "storage": if storage_ok { "ok" } else { "down" },
        "connections": shared.connections.load(Ordering::Relaxed),
        "uptime_s": shared.started.elapsed().as_secs(),
    });
    let status = if ok { 200 } else { 503 };
    Outcome::Respond(response(status, "application/json", body.to_string().as_bytes()))
}

/// Checks a token: signature, expiry, user id, revocation. `Err` is the 401 message.
pub fn verify(token: &str, shared: &Shared) -> Result<Claims, String> {
    let claims = shared.keys.verify(token)?;
    if claims.jti.as_deref().is_some_and(|j| shared.revoked.contains(j)) {
        return Err("token revoked".into());
    }
    Ok(claims)
}

/// Checks the token (or `?user=` in open mode). `Err` is the 401 message.
fn authenticate(
    req: &httparse::Request<'_, '_>,
    query: &str,
    shared: &Shared,
) -> Result<Claims, String> {
    let bearer = header(req, "authorization").and_then(bearer_token);
    if let Some(token) = bearer.or_else(|| query_param(query, "token")) {
        return verify(token, shared);
    }
    if shared.cfg.open {
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
            });
        }
    }
    Err("missing token".into())
}

fn upgrade(req: &httparse::Request<'_, '_>, query: &str, rest: &[u8], shared: &Shared) -> Outcome {
    let key = header(req, "sec-websocket-key");
    let ok = has_token(header(req, "upgrade"), "websocket")
        && has_token(header(req, "connection"), "upgrade")
        && header(req, "sec-websocket-version") == Some("13")
        && key.is_some_and(|k| !k.is_empty());
    let Some(key) = key.filter(|_| ok) else {
        return Outcome::Respond(error(400, "bad_request", "not a WebSocket upgrade"));
    };
    let claims = match authenticate(req, query, shared) {
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
    Outcome::Upgrade {
        response: Bytes::from(response),
        claims,
        enc: offered.unwrap_or(Encoding::Json),
        leftover: rest.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&token=xyz&b", "token"), Some("xyz"));
        assert_eq!(query_param("", "token"), None);
    }

    #[test]
    fn responses_carry_length() {
        let r = error(404, "not_found", "x");
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let body = s.split("\r\n\r\n").nth(1).unwrap();
        assert!(s.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
