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
    Post { room: String, text: String, reply_to: Option<u64> },
    /// `PATCH /api/rooms/{room}/messages/{seq}`.
    Edit { room: String, seq: u64, text: String },
    /// `DELETE /api/rooms/{room}/messages/{seq}`.
    Delete { room: String, seq: u64 },
    /// `GET /api/rooms`: the directory.
    Rooms { prefix: String, cursor: Option<String>, limit: usize },
    /// `GET /api/search`.
    Search { q: String, room: Option<String>, cursor: Option<String>, limit: usize },
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
    let one_of = |allowed: &[&'static str]| {
        allowed.iter().copied().find(|m| *m == method).unwrap_or(allowed[0])
    };
    let (want, which) = match parts.as_slice() {
        ["rooms"] => ("GET", "rooms"),
        ["search"] => ("GET", "search"),
        ["rooms", _, "messages"] => (one_of(&["POST", "GET"]), "messages"),
        ["rooms", _, "messages", _] => (one_of(&["PATCH", "DELETE"]), "message"),
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
            let m = body_json(body)?;
            let text = body_str(&m, "text")?;
            wire::check_text(&text, node.cfg().max_text).map_err(|r| refused(&r))?;
            let reply_to = match m.get("reply_to") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().filter(|&s| s > 0).ok_or_else(|| {
                    respond(400, "bad_request", "`reply_to` must be a positive integer")
                })?),
            };
            Op::Post { room, text, reply_to }
        }
        ("message", _) => message_op(&parts, method, body, node)?,
        ("rooms", _) => Op::Rooms {
            prefix: super::query_param(query, "prefix")
                .and_then(percent_decode)
                .unwrap_or_default(),
            cursor: super::query_param(query, "cursor").and_then(percent_decode),
            limit: limit_param(query, wire::DEFAULT_HISTORY, wire::MAX_HISTORY)?,
        },
        ("search", _) => search_op(query)?,
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

/// A `limit` query parameter: `default` when absent, capped at `max`.
fn limit_param(query: &str, default: usize, max: usize) -> Result<usize, Bytes> {
    match query_u64(query, "limit")? {
        None => Ok(default),
        Some(0) => Err(respond(400, "bad_request", "`limit` must be at least 1")),
        Some(l) => Ok((l as usize).min(max)),
    }
}

/// `PATCH` (`{"text"}`) or `DELETE /api/rooms/{room}/messages/{seq}`.
fn message_op(parts: &[&str], method: &str, body: &[u8], node: &Node) -> Result<Op, Bytes> {
    let room = path_room(parts)?;
    let seq =
        parts.get(3).and_then(|s| s.parse::<u64>().ok()).filter(|&s| s > 0).ok_or_else(|| {
            respond(400, "bad_request", "the message seq must be a positive integer")
        })?;
    if method == "DELETE" {
        return Ok(Op::Delete { room, seq });
    }
    let text = body_str(&body_json(body)?, "text")?;
    wire::check_text(&text, node.cfg().max_text).map_err(|r| refused(&r))?;
    Ok(Op::Edit { room, seq, text })
}

/// `GET /api/search?q=&room=&cursor=&limit=`.
fn search_op(query: &str) -> Result<Op, Bytes> {
    let q = super::query_param(query, "q")
        .and_then(|v| percent_decode(&v.replace('+', " ")))
        .unwrap_or_default();
    wire::check_query(&q).map_err(|r| refused(&r))?;
    let room = super::query_param(query, "room").and_then(percent_decode).filter(|r| !r.is_empty());
    Ok(Op::Search {
        q,
        room,
        cursor: super::query_param(query, "cursor").and_then(percent_decode),
        limit: limit_param(query, 20, wire::MAX_SEARCH)?,
    })
}

/// `GET /api/rooms/{room}/messages?limit=&before=|after=`.
fn history_op(room: String, query: &str) -> Result<Op, Bytes> {
    let limit = limit_param(query, wire::DEFAULT_HISTORY, wire::MAX_HISTORY)?;
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
/// parks the connection until its durable answer is released.
pub(crate) fn execute(ctx: &mut Ctx<'_>, conn: ConnId, call: Call) {
    let claims = call.claims;
    if let Err(r) = chat::session::first_sight(ctx, &claims.sub, claims.name.as_deref()) {
        return ctx.respond(conn, refused(&r));
    }
    let user: Arc<str> = Arc::from(claims.sub.as_str());
    let to = |status| ReplyTo::Http { conn, status };
    let result: Result<Option<Bytes>, Refusal> = match call.op {
        Op::History { room, cursor, limit } => {
            chat::history::query(ctx, None, &user, &room, cursor, limit).map(|(messages, more)| {
                Some(json_response(200, &json!({ "messages": messages, "more": more })))
            })
        }
        Op::Join { room } => chat::join::start(ctx, &user, &room, None, to(200)).map(|()| None),
        Op::Post { room, text, reply_to } => chat::may_use(ctx, None, &user, &room)
            .and_then(|()| chat::send::send(ctx, &user, &room, text, reply_to, to(201)))
            .map(|()| None),
        Op::Edit { room, seq, text } => {
            chat::events::edit(ctx, to(200), &user, &room, seq, text).map(|()| None)
        }
        Op::Delete { room, seq } => {
            chat::events::delete(ctx, to(200), &user, claims.admin, &room, seq).map(|()| None)
        }
        Op::Rooms { prefix, cursor, limit } => {
            chat::directory::list(ctx, &prefix, cursor.as_deref(), limit).map(|(rooms, cursor)| {
                let mut body = json!({ "rooms": rooms });
                if let Some(c) = cursor {
                    body["cursor"] = json!(c);
                }
                Some(json_response(200, &body))
            })
        }
        Op::Search { q, room, cursor, limit } => {
            chat::search::run(ctx, None, &user, &q, room.as_deref(), cursor.as_deref(), limit).map(
                |(messages, cursor)| {
                    let mut body = json!({ "messages": messages });
                    if let Some(c) = cursor {
                        body["cursor"] = json!(c);
                    }
                    Some(json_response(200, &body))
                },
            )
        }
        Op::Notify { user: who, kind, text, data } => {
            Ok(Some(notify(ctx.node, who, kind, text, data)))
        }
        Op::Revoke(r) => revoke(ctx, to(200), r),
    };
    match result {
        Ok(Some(bytes)) => ctx.respond(conn, bytes),
        Ok(None) => {}
        Err(r) => ctx.respond(conn, refused(&r)),
    }
}

/// `POST /api/notify`: to the user's connections here and on every node.
fn notify(node: &Node, who: String, kind: String, text: String, data: Option<Value>) -> Bytes {
    let ts = wire::now_ms();
    let frame = ServerFrame::Notification { kind: &kind, text: &text, data: data.as_ref(), ts };
    let who: Arc<str> = Arc::from(who.as_str());
    node.fanout().frame_to_user(&who, &who, &frame, None);
    node.peers().notify(&who, &kind, &text, data.as_ref(), ts);
    response(202, "application/json", b"{\"status\":\"accepted\"}")
}

/// `POST /api/revoke`: stored, refused here and everywhere, answered once
/// durable.
fn revoke(ctx: &mut Ctx<'_>, to: ReplyTo, r: Revocation) -> Result<Option<Bytes>, Refusal> {
    let node = ctx.node;
    node.storage().revoke(&r, wire::now_ms() / 1000)?;
    node.revoked().add(&r);
    node.peers().revoke(&r);
    let p = AfterFlush::answer(to.clone(), Reply::Revoked(r), STORAGE_DOWN);
    ctx.after_flush(&to, p);
    Ok(None)
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
