//! HTTP on the shared port: request heads parsed with httparse, routing,
//! the plain endpoints (`/`, `/health`, `/metrics`), the WebSocket upgrade
//! decision ([`upgrade`]) and the API ([`api`]), as `bytes in → decision
//! out` functions.
//!
//! Writes nothing to sockets itself: the reactor queues what it returns.

pub(crate) mod api;
mod upgrade;

use crate::{
    auth::Claims,
    chat::session::Upgrade,
    node::Node,
    wire::http::{error, response, response_with},
};
use bytes::Bytes;

/// The embedded web client.
const INDEX: &str = include_str!("../web/index.html");
/// Its script and style: separate files, so the page's policy allows no
/// inline script or style at all.
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");
/// The client library (`clients/js`), which app.js imports as an ES module:
/// `/chinwag.js` is its index.js, which imports `./msgpack.js`.
const LIB_JS: &str = include_str!("../../clients/js/index.js");
const LIB_MSGPACK_JS: &str = include_str!("../../clients/js/msgpack.js");
/// The content type of every script above.
const JS: &str = "text/javascript; charset=utf-8";
/// The page's Content-Security-Policy: scripts, styles, images and
/// connections (the WebSocket, the API) from its own origin only; never framed.
const CSP: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; \
                   style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'\r\n";

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
    Api(api::Call),
    /// Upgrade: write the 101, then speak WebSocket.
    Upgrade(Upgrade),
}

pub(crate) fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

pub(crate) fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

pub(crate) fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Parses what has arrived of a request and decides.
pub fn handle(buf: &[u8], node: &Node) -> Outcome {
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
    let body_len = match body_length(&req, head_len) {
        Ok(n) => n,
        Err(refusal) => return Outcome::Respond(refusal),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/ws" if method == "GET" => upgrade::upgrade(&req, query, &buf[head_len..], node),
        "/health" if method == "GET" => health(node),
        "/metrics" if method == "GET" => {
            node.metrics().set_storage_up(node.storage_ok());
            let text = node.render_metrics();
            Outcome::Respond(response(200, crate::metrics::CONTENT_TYPE, text.as_bytes()))
        }
        "/" if method == "GET" => {
            Outcome::Respond(response_with(200, "text/html; charset=utf-8", CSP, INDEX.as_bytes()))
        }
        "/app.js" if method == "GET" => Outcome::Respond(response(200, JS, APP_JS.as_bytes())),
        "/chinwag.js" if method == "GET" => Outcome::Respond(response(200, JS, LIB_JS.as_bytes())),
        "/msgpack.js" if method == "GET" => {
            Outcome::Respond(response(200, JS, LIB_MSGPACK_JS.as_bytes()))
        }
        "/app.css" if method == "GET" => {
            Outcome::Respond(response(200, "text/css; charset=utf-8", APP_CSS.as_bytes()))
        }
        "/ws" | "/health" | "/metrics" | "/" | "/app.js" | "/chinwag.js" | "/msgpack.js"
        | "/app.css" => Outcome::Respond(error(405, "method_not_allowed", "use GET")),
        _ if path.starts_with("/api/") => {
            if buf.len() < head_len + body_len {
                return Outcome::Partial;
            }
            let body = &buf[head_len..head_len + body_len];
            let bearer = header(&req, "authorization").and_then(bearer_token);
            match api::route(method, path, query, body, bearer, node) {
                Ok(call) => Outcome::Api(call),
                Err(response) => Outcome::Respond(response),
            }
        }
        _ => Outcome::Respond(error(404, "not_found", "unknown path")),
    }
}

/// The route of a whole request head, an index in `metrics::ROUTES`.
pub fn route_index(head: &[u8]) -> u8 {
    // The target is the request line's second word.
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let target = line.split(|b| *b == b' ').nth(1).unwrap_or_default();
    crate::metrics::route_index(std::str::from_utf8(target).unwrap_or(""))
}

/// Whether the request head in `buf` is still incomplete, looking for its
/// end only from `kept` (what an earlier read had: already searched).
pub fn head_pending(buf: &[u8], kept: usize) -> bool {
    let from = kept.saturating_sub(3);
    let tail = &buf[from.min(buf.len())..];
    let ended = tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n");
    !ended && buf.len() < MAX_HEAD
}

/// Checks a complete head (its size, its framing) and gives the body's
/// length, or the refusal.
fn body_length(req: &httparse::Request<'_, '_>, head_len: usize) -> Result<usize, Bytes> {
    if head_len > MAX_HEAD {
        return Err(error(431, "too_large", "request head too large"));
    }
    let mut lengths = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length"));
    if let Some(first) = lengths.next() {
        if lengths.any(|h| h.value.trim_ascii() != first.value.trim_ascii()) {
            return Err(error(400, "bad_request", "two Content-Length headers disagree"));
        }
    }
    let body_len = match header(req, "content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err(error(400, "bad_request", "bad Content-Length")),
    };
    if body_len > MAX_BODY {
        // Refused on the head alone: the body is never read.
        return Err(error(413, "too_large", "body over 64 KiB"));
    }
    if header(req, "transfer-encoding").is_some() {
        return Err(error(400, "bad_request", "send a Content-Length body, not chunked"));
    }
    Ok(body_len)
}

pub(crate) fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn health(node: &Node) -> Outcome {
    let storage_ok = node.storage_ok();
    let redis = node.peers().state();
    let ok = storage_ok && redis != "down" && node.alive().failed().is_none();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "node": node.cfg().node_id,
        "redis": redis,
        "storage": if storage_ok { "ok" } else { "down" },
        "connections": node.connections(),
        "uptime_s": node.uptime_s(),
    });
    let status = if ok { 200 } else { 503 };
    Outcome::Respond(response(status, "application/json", body.to_string().as_bytes()))
}

/// Checks a token: signature, expiry, user id, revocation. `Err` is the 401 message.
pub fn verify(token: &str, node: &Node) -> Result<Claims, String> {
    let claims = node.keys().verify(token)?;
    if node.revoked().refuses_claims(&claims) {
        return Err("token revoked".into());
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&token=xyz&b", "token"), Some("xyz"));
        assert_eq!(query_param("", "token"), None);
    }
}
