//! The HTTP API of PROTOCOL.md section 5 (`/api/...`): routing, auth, the
//! per-token rate limit and JSON bodies ([`route`]), and carrying the call
//! out on the reactor that owns the connection ([`execute`]) with the same
//! rule functions as the WebSocket frames.

use super::{error, response};
use crate::{
    auth::{Claims, Revocation},
    chat::{self, Ctx},
    conn::Limited,
    durable::AfterFlush,
    fanout::{ConnId, Reply, ReplyTo, STORAGE_DOWN},
    node::Node,
    wire::{self, http::json as json_response, http::refused, Cursor, Refusal, ServerFrame},
};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// One API call, authenticated and parsed.
#[derive(Debug)]
pub struct Call {
    /// The caller's token claims.
    pub claims: Claims,
    /// What to do.
    pub op: Op,
}

/// The API operations.
#[derive(Debug)]
pub enum Op {
    /// `GET /api/rooms/{room}/messages`.
    History { room: String, cursor: Cursor, limit: usize },
    /// `POST /api/rooms/{room}/join`.
    Join { room: String },
    /// `POST /api/rooms/{room}/messages`.
    Post { room: String, text: String },
    /// `POST /api/notify`.
    Notify { user: String, kind: String, text: String, data: Option<Value> },
    /// `POST /api/revoke`: `{"jti"}` or `{"user"}`.
    Revoke(Revocation),
}

fn respond(status: u16, code: &str, message: &str) -> Bytes {
    error(status, code, message)
}

/// Decodes `%XX` escapes (room names in paths may carry `%3A` for `:`).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query_u64(query: &str, key: &str) -> Result<Option<u64>, Bytes> {
    match super::query_param(query, key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| respond(400, "bad_request", &format!("`{key}` must be an integer"))),
    }
}

fn body_json(body: &[u8]) -> Result<serde_json::Map<String, Value>, Bytes> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(respond(400, "bad_request", "the body must be a JSON object")),
    }
}

fn body_str(m: &serde_json::Map<String, Value>, key: &str) -> Result<String, Bytes> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(respond(400, "bad_request", &format!("`{key}` must be a string"))),
    }
}

/// Routes an `/api/` request: authenticates, rate-limits and parses it, or
/// gives the complete error response.
pub fn route(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    bearer: Option<&str>,
    node: &Node,
) -> Result<Call, Bytes> {
    let parts: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    // Match the route before auth so an unknown path is 404 for anyone.
    let (want, which) = match parts.as_slice() {
        ["rooms", _, "messages"] => (if method == "GET" { "GET" } else { "POST" }, "messages"),
        ["rooms", _, "join"] => ("POST", "join"),
        ["notify"] => ("POST", "notify"),
        ["revoke"] => ("POST", "revoke"),
        _ => return Err(respond(404, "not_found", "unknown path")),
    };
    if method != want {
        return Err(respond(405, "method_not_allowed", &format!("use {want}")));
    }
    let Some(token) = bearer else {
        return Err(respond(401, "unauthorized", "missing bearer token"));
    };
    let claims = super::verify(token, node).map_err(|why| respond(401, "unauthorized", &why))?;
    take_token(token, node)?;
    let op = match (which, method) {
        ("messages", "GET") => history_op(path_room(&parts)?, query)?,
        ("messages", _) => {
            let room = path_room(&parts)?;
            let text = body_str(&body_json(body)?, "text")?;
            wire::check_text(&text, node.cfg().max_text).map_err(|r| refused(&r))?;
            Op::Post { room, text }
        }
        ("join", _) => {
            let room = path_room(&parts)?;
            if !wire::valid_room(&room) {
                return Err(respond(400, "invalid_room", "direct-message rooms cannot be joined"));
            }
            Op::Join { room }
        }
        _ if !claims.admin => return Err(respond(403, "forbidden", "needs an admin token")),
        ("notify", _) => notify_op(body)?,
        _ => revoke_op(body)?,
    };
    Ok(Call { claims, op })
}

/// The room of a `/api/rooms/{room}/...` path (`%3A` may stand for `:`).
fn path_room(parts: &[&str]) -> Result<String, Bytes> {
    let room = parts
        .get(1)
        .and_then(|p| percent_decode(p))
        .ok_or_else(|| respond(400, "invalid_room", "invalid room name"))?;
    if wire::valid_room(&room) || wire::dm_users(&room).is_some() {
        Ok(room)
    } else {
        Err(respond(400, "invalid_room", "invalid room name"))
    }
}

/// `GET /api/rooms/{room}/messages?limit=&before=|after=`.
fn history_op(room: String, query: &str) -> Result<Op, Bytes> {
    let limit = match query_u64(query, "limit")? {
        None => wire::DEFAULT_HISTORY,
        Some(0) => return Err(respond(400, "bad_request", "`limit` must be at least 1")),
        Some(l) => (l as usize).min(wire::MAX_HISTORY),
    };
    let cursor = match (query_u64(query, "before")?, query_u64(query, "after")?) {
        (None, None) => Cursor::Latest,
        (Some(b), None) => Cursor::Before(b),
        (None, Some(a)) => Cursor::After(a),
        _ => return Err(respond(400, "bad_request", "give `before` or `after`, not both")),
    };
    Ok(Op::History { room, cursor, limit })
}

/// `POST /api/notify` `{user, kind, text, data?}`.
fn notify_op(body: &[u8]) -> Result<Op, Bytes> {
    let m = body_json(body)?;
    let user = body_str(&m, "user")?;
    if !wire::valid_user(&user) {
        return Err(respond(400, "bad_request", "`user` is not a valid user id"));
    }
    Ok(Op::Notify {
        user,
        kind: body_str(&m, "kind")?,
        text: body_str(&m, "text")?,
        data: m.get("data").cloned(),
    })
}

/// `POST /api/revoke` `{"jti"}` (that token) or `{"user"}` (every token of
/// the user issued up to now).
fn revoke_op(body: &[u8]) -> Result<Op, Bytes> {
    let m = body_json(body)?;
    if m.contains_key("user") {
        let user = body_str(&m, "user")?;
        if !wire::valid_user(&user) {
            return Err(respond(400, "bad_request", "`user` is not a valid user id"));
        }
        return Ok(Op::Revoke(Revocation::User { user, before: wire::now_ms() / 1000 }));
    }
    Ok(Op::Revoke(Revocation::Token(body_str(&m, "jti")?)))
}

/// The per-token bucket: the same `rate`/`burst` as a WebSocket connection.
fn take_token(token: &str, node: &Node) -> Result<(), Bytes> {
    let ms = match node.take_http_token(token) {
        Ok(()) => return Ok(()),
        Err(Limited::Refuse(ms)) => ms,
        Err(Limited::Abuse(ms)) => ms,
    };
    let body =
        json!({"error": "rate_limited", "message": "rate limit exceeded", "retry_after_ms": ms});
    Err(response(429, "application/json", body.to_string().as_bytes()))
}

/// Carries out an API call for the HTTP connection `conn`: answers now, or
/// parks the connection until the commit thread sends the durable answer.
pub(crate) fn execute(ctx: &mut Ctx<'_>, conn: ConnId, call: Call) {
    let user: Arc<str> = Arc::from(call.claims.sub.as_str());
    let to = ReplyTo::Http { conn };
    let node = ctx.node;
    let result: Result<Option<Bytes>, Refusal> = match call.op {
        Op::History { room, cursor, limit } => {
            chat::history::query(ctx, None, &user, &room, cursor, limit).map(|(messages, more)| {
                Some(json_response(200, &json!({ "messages": messages, "more": more })))
            })
        }
        Op::Join { room } => chat::join::start(ctx, &user, &room, None, to).map(|()| None),
        Op::Post { room, text } => chat::may_use(ctx, None, &user, &room)
            .and_then(|()| chat::send::accept(ctx, &user, &room, text, true, to))
            .map(|()| None),
        Op::Notify { user: who, kind, text, data } => {
            let ts = wire::now_ms();
            let frame =
                ServerFrame::Notification { kind: &kind, text: &text, data: data.as_ref(), ts };
            let who: Arc<str> = Arc::from(who.as_str());
            node.fanout().frame_to_user(&who, &who, &frame, None);
            node.peers().notify(&who, &kind, &text, data.as_ref(), ts);
            Ok(Some(response(202, "application/json", b"{\"status\":\"accepted\"}")))
        }
        Op::Revoke(r) => {
            node.storage().revoke(&r, wire::now_ms() / 1000).map_err(Refusal::from).map(|()| {
                node.revoked().add(&r);
                node.peers().revoke(&r);
                let p = AfterFlush::answer(to.clone(), Reply::Revoked(r), STORAGE_DOWN);
                ctx.after_flush(&to, p);
                None
            })
        }
    };
    match result {
        Ok(Some(bytes)) => ctx.respond(conn, bytes),
        Ok(None) => {}
        Err(r) => ctx.respond(conn, refused(&r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("dm%3Aa%3Ab").as_deref(), Some("dm:a:b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("cut%3"), None);
    }
}
