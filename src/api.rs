//! The HTTP API of PROTOCOL.md section 5 (`/api/...`): routing, auth, the
//! per-token rate limit and JSON bodies ([`route`], pure), and carrying the
//! call out on the reactor that owns the connection ([`Reactor::api_call`]),
//! with the same rules and paths as the WebSocket frames.

use crate::{
    auth::Claims,
    conn::{Bucket, Limited, Phase},
    deliver::ReplyTo,
    fanout::Cmd,
    http::{self, error, response},
    proto::{self, Code, Cursor, Out, Refusal},
    reactor::{Reactor, Shared},
    storage::Pending,
};
use bytes::Bytes;
use serde_json::{json, Value};
use std::{sync::Arc, time::Instant};

/// Token buckets kept for HTTP callers before old ones are swept.
const MAX_BUCKETS: usize = 10_000;

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
    /// `POST /api/revoke`.
    Revoke { jti: String },
}

fn respond(status: u16, code: &str, message: &str) -> Bytes {
    error(status, code, message)
}

fn refusal_status(code: Code) -> u16 {
    match code {
        Code::BadRequest | Code::InvalidRoom | Code::InvalidUser | Code::TooLong => 400,
        Code::NotMember | Code::Forbidden => 403,
        Code::RateLimited => 429,
        Code::Unavailable => 503,
        Code::Internal => 500,
    }
}

/// The JSON error response for a refusal.
pub fn refused(r: &Refusal) -> Bytes {
    let code = serde_json::to_value(r.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    error(refusal_status(r.code), &code, &r.message)
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
    match http::query_param(query, key) {
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
    shared: &Shared,
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
    let claims = http::verify(token, shared).map_err(|why| respond(401, "unauthorized", &why))?;
    take_token(token, shared)?;
    let room = || -> Result<String, Bytes> {
        let room = percent_decode(parts[1])
            .ok_or_else(|| respond(400, "invalid_room", "invalid room name"))?;
        if proto::valid_room(&room) || proto::dm_users(&room).is_some() {
            Ok(room)
        } else {
            Err(respond(400, "invalid_room", "invalid room name"))
        }
    };
    let op = match (which, method) {
        ("messages", "GET") => {
            let room = room()?;
            let limit = match query_u64(query, "limit")? {
                None => proto::DEFAULT_HISTORY,
                Some(0) => return Err(respond(400, "bad_request", "`limit` must be at least 1")),
                Some(l) => (l as usize).min(proto::MAX_HISTORY),
            };
            let cursor = match (query_u64(query, "before")?, query_u64(query, "after")?) {
                (None, None) => Cursor::Latest,
                (Some(b), None) => Cursor::Before(b),
                (None, Some(a)) => Cursor::After(a),
                _ => return Err(respond(400, "bad_request", "give `before` or `after`, not both")),
            };
            Op::History { room, cursor, limit }
        }
        ("messages", _) => {
            let room = room()?;
            let text = body_str(&body_json(body)?, "text")?;
            proto::check_text(&text, shared.cfg.max_text).map_err(|r| refused(&r))?;
            Op::Post { room, text }
        }
        ("join", _) => {
            let room = room()?;
            if !proto::valid_room(&room) {
                return Err(respond(400, "invalid_room", "direct-message rooms cannot be joined"));
            }
            Op::Join { room }
        }
        (admin_op, _) => {
            if !claims.admin {
                return Err(respond(403, "forbidden", "needs an admin token"));
            }
            let m = body_json(body)?;
            if admin_op == "notify" {
                let user = body_str(&m, "user")?;
                if !proto::valid_user(&user) {
                    return Err(respond(400, "bad_request", "`user` is not a valid user id"));
                }
                Op::Notify {
                    user,
                    kind: body_str(&m, "kind")?,
                    text: body_str(&m, "text")?,
                    data: m.get("data").cloned(),
                }
            } else {
                Op::Revoke { jti: body_str(&m, "jti")? }
            }
        }
    };
    Ok(Call { claims, op })
}

/// The per-token bucket: the same `rate`/`burst` as a WebSocket connection.
fn take_token(token: &str, shared: &Shared) -> Result<(), Bytes> {
    let now = Instant::now();
    let (rate, burst) = (shared.cfg.rate, shared.cfg.burst);
    let mut buckets = shared.http_buckets.lock();
    if buckets.len() >= MAX_BUCKETS {
        // Full buckets carry no state worth keeping: drop the idle ones.
        buckets.retain(|_, b| b.busy(now, rate, burst));
    }
    let bucket = buckets.entry(token.to_string()).or_insert_with(|| Bucket::new(burst, now));
    match bucket.take(rate, burst, now) {
        Ok(()) => Ok(()),
        Err(limited) => {
            let ms = match limited {
                Limited::Refuse(ms) => ms,
                Limited::Abuse => 1000,
            };
            let body = json!({"error": "rate_limited", "message": "rate limit exceeded", "retry_after_ms": ms});
            Err(response(429, "application/json", body.to_string().as_bytes()))
        }
    }
}

impl Reactor {
    /// Carries out an API call for the HTTP connection `idx`. Answers now,
    /// or parks the connection until the commit thread makes the change
    /// durable and sends the answer back as [`Cmd::Http`].
    pub(crate) fn api_call(&mut self, idx: u32, call: Call) {
        let user: Arc<str> = Arc::from(call.claims.sub.as_str());
        let result: Result<Option<Bytes>, Refusal> = (|| match call.op {
            Op::History { room, cursor, limit } => {
                self.api_member(&room, &user)?;
                let (messages, more) = self.shared.storage.history(&room, cursor, limit)?;
                let body = json!({ "messages": messages, "more": more }).to_string();
                Ok(Some(response(200, "application/json", body.as_bytes())))
            }
            Op::Join { room } => {
                let new = self.shared.storage.add_member(&room, &user)?;
                let conn = self.conn_ref(idx);
                let cmd = Cmd::Joined {
                    conn,
                    room: Arc::from(room.as_str()),
                    user,
                    since: None,
                    id: None,
                    new,
                    http: true,
                };
                self.after_flush_http(idx, cmd);
                Ok(None)
            }
            Op::Post { room, text } => {
                self.api_member(&room, &user)?;
                let conn = self.conn_ref(idx);
                self.accept_message(&user, &room, &text, true, ReplyTo::Http { conn })?;
                if let Some(c) = self.conns.get_mut(idx as usize) {
                    c.phase = Phase::HttpWait;
                }
                Ok(None)
            }
            Op::Notify { user: to, kind, text, data } => {
                let ts = proto::now_ms();
                let frame = Out::Notification { kind: &kind, text: &text, data: data.as_ref(), ts };
                let to: Arc<str> = Arc::from(to.as_str());
                self.shared.frame_to_user(&to, &to, &frame, None);
                if let Some(c) = &self.shared.cluster {
                    c.notify(&to, &kind, &text, data.as_ref(), ts);
                }
                Ok(Some(response(202, "application/json", b"{\"status\":\"accepted\"}")))
            }
            Op::Revoke { jti } => {
                self.shared.storage.revoke(&jti, 0)?;
                self.shared.revoked.add(&jti);
                if let Some(c) = &self.shared.cluster {
                    c.revoke(&jti);
                }
                let conn = self.conn_ref(idx);
                let body = json!({ "revoked": jti }).to_string();
                self.after_flush_http(
                    idx,
                    Cmd::Http { conn, bytes: response(200, "application/json", body.as_bytes()) },
                );
                Ok(None)
            }
        })();
        match result {
            Ok(Some(bytes)) => self.respond_and_close(idx, bytes),
            Ok(None) => {}
            Err(r) => self.respond_and_close(idx, refused(&r)),
        }
    }

    /// Membership for the API: from storage (there is no session here).
    fn api_member(&self, room: &str, user: &str) -> Result<(), Refusal> {
        if let Some((a, b)) = proto::dm_users(room) {
            if user != a && user != b {
                return Err(Refusal::new(Code::Forbidden, "a direct-message room of other users"));
            }
        }
        if self.shared.storage.is_member(room, user)? {
            Ok(())
        } else {
            Err(Refusal::new(Code::NotMember, "join the room first"))
        }
    }

    /// Parks connection `idx` until `cmd` comes back after the next flush.
    fn after_flush_http(&mut self, idx: u32, cmd: Cmd) {
        if let Some(conn) = self.conns.get_mut(idx as usize) {
            conn.phase = Phase::HttpWait;
        }
        let conn = self.conn_ref(idx);
        let fail = Cmd::Http {
            conn,
            bytes: error(503, "unavailable", "storage unavailable: nothing was accepted"),
        };
        self.shared.committer.after_flush(Pending::new(self.id, Some(cmd), Some(fail)));
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

    #[test]
    fn refusal_statuses() {
        let b = refused(&Refusal::new(Code::NotMember, "x"));
        assert!(b.starts_with(b"HTTP/1.1 403 "));
        let b = refused(&Refusal::new(Code::TooLong, "x"));
        assert!(b.starts_with(b"HTTP/1.1 400 "));
    }
}
