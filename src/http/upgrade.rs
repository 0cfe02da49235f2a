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
    })
}
