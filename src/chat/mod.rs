//! What each client frame and API call does: the rules of PROTOCOL.md
//! sections 3 to 5, one file per rule, applied on the reactor that owns the
//! connection. WebSocket frames and HTTP calls run the same rule functions;
//! a [`ReplyTo`] says how to answer.
//!
//! A rule runs on a small context ([`Ctx`]): the node, this reactor's
//! [`LocalIndex`] and [`ConnTable`] (its outbox), never the whole reactor.
//! Rules never close a connection themselves: [`on_frame`] returns the
//! close code and the reactor closes.

pub(crate) mod directory;
pub(crate) mod events;
pub(crate) mod history;
pub(crate) mod join;
pub(crate) mod leave;
pub(crate) mod mentions;
pub(crate) mod presence;
pub(crate) mod read;
pub(crate) mod refresh;
pub(crate) mod search;
pub(crate) mod send;
pub(crate) mod session;
pub(crate) mod thread;
pub(crate) mod typing;

use crate::{
    conn::{Close, Conn, ConnTable, Limited},
    durable::AfterFlush,
    fanout::{ConnId, Reply, ReplyTo, STORAGE_DOWN},
    local::LocalIndex,
    node::Node,
    storage::StorageError,
    wire::{self, http, Code, Encoding, Refusal, Request, ServerFrame},
};
use std::{sync::Arc, time::Instant};

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        // Logged where it happened; a person reads the message.
        log::debug!("refused: {e}");
        Refusal::new(Code::Unavailable, STORAGE_DOWN)
    }
}

/// What a rule works on.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    /// The node.
    pub node: &'a Node,
    /// This reactor's rooms and users.
    pub local: &'a mut LocalIndex,
    /// This reactor's connections: where frames are queued.
    pub conns: &'a mut ConnTable,
    /// The time of this turn.
    pub now: Instant,
}

impl Ctx<'_> {
    /// Queues `frame` for an open connection, in its encoding.
    pub fn frame(&mut self, id: ConnId, frame: &ServerFrame<'_>) {
        let Some(enc) = self.conns.session(id).map(|s| s.enc) else { return };
        self.conns.queue(id, wire::encode(frame, enc));
    }

    /// Answers `to` now, if it still waits: a frame for an open WebSocket,
    /// the response (then close) for an API call.
    pub fn answer(&mut self, to: &ReplyTo, reply: &Reply) {
        match to {
            ReplyTo::Ws { conn, .. } => {
                if self.conns.session(*conn).is_some() {
                    self.conns.queue(*conn, to.render(reply));
                }
            }
            ReplyTo::Http { conn, .. } => {
                if self.conns.get(*conn).is_some_and(Conn::awaits_response) {
                    self.conns.respond(*conn, to.render(reply), self.now);
                }
            }
        }
    }

    /// Answers `to` with a refusal: an `error` frame, or the error response.
    pub fn refuse(&mut self, to: &ReplyTo, r: &Refusal) {
        match to {
            ReplyTo::Ws { conn, id, .. } => {
                let (code, message) = (r.code, r.message.as_str());
                let frame =
                    ServerFrame::Error { id: id.as_ref(), code, message, retry_after_ms: None };
                self.frame(*conn, &frame);
            }
            ReplyTo::Http { conn, .. } => self.respond(*conn, http::refused(r)),
        }
    }

    /// Answers an API call with `bytes`, then closes.
    pub fn respond(&mut self, id: ConnId, bytes: bytes::Bytes) {
        self.conns.respond(id, bytes, self.now);
    }

    /// Parks an API call until its durable answer comes back.
    pub fn park(&mut self, to: &ReplyTo) {
        if let ReplyTo::Http { conn, .. } = to {
            if let Some(c) = self.conns.get_mut(*conn) {
                c.park(self.now);
            }
        }
    }

    /// Queues `p` for the next flush; an API call `to` waits for it, parked.
    pub fn after_flush(&mut self, to: &ReplyTo, p: AfterFlush) {
        self.park(to);
        self.node.after_flush(p);
    }
}

/// Handles one client frame's payload. `Some`: close the connection so.
pub(crate) fn on_frame(
    ctx: &mut Ctx<'_>,
    id: ConnId,
    payload: &[u8],
    enc: Encoding,
) -> Option<Close> {
    let cfg = ctx.node.cfg();
    let (rate, burst, max_text) = (cfg.rate, cfg.burst, cfg.max_text);
    let session = ctx.conns.session_mut(id)?;
    let limited = session.bucket.take(rate, burst, ctx.now);
    let user = session.user.clone();
    ctx.conns.counts.frames_in += 1;
    let decoded = wire::decode(payload, enc, max_text);
    let to = ReplyTo::Ws { conn: id, id: decoded.id, enc };
    let (ms, abuse) = match limited {
        Ok(()) => (0, None),
        Err(Limited::Refuse(ms)) => (ms, Some(false)),
        // The `burst`-th refusal: its error first, then the 1008 close.
        Err(Limited::Abuse(ms)) => (ms, Some(true)),
    };
    if let Some(abuse) = abuse {
        ctx.conns.counts.rate_limited += 1;
        let (id_value, message) = (to.id(), "rate limit exceeded");
        let code = Code::RateLimited;
        let frame = ServerFrame::Error { id: id_value, code, message, retry_after_ms: Some(ms) };
        ctx.frame(id, &frame);
        return abuse.then_some(Close::Policy);
    }
    if let Err(r) = decoded.request.and_then(|req| act(ctx, &to, &user, req)) {
        ctx.refuse(&to, &r);
    }
    None
}

/// Runs the rule for one decoded frame.
fn act(ctx: &mut Ctx<'_>, to: &ReplyTo, user: &Arc<str>, req: Request) -> Result<(), Refusal> {
    let conn = to.conn();
    let id = to.id();
    match req {
        Request::Join { room, since } => join::start(ctx, user, &room, since, to.clone()),
        Request::Leave { room } => leave::start(ctx, user, &room, to.clone()),
        Request::Typing { room, active } => typing::typing(ctx, conn, user, &room, active),
        Request::History { room, cursor, limit } => {
            let (messages, more) = history::query(ctx, Some(conn), user, &room, cursor, limit)?;
            ctx.frame(conn, &ServerFrame::History { id, room: &room, messages, more });
            Ok(())
        }
        Request::Thread { room, root, after, limit } => {
            let (messages, more) = thread::query(ctx, Some(conn), user, &room, root, after, limit)?;
            ctx.frame(conn, &ServerFrame::Thread { id, room: &room, root, messages, more });
            Ok(())
        }
        Request::Search { query, room, cursor, limit } => {
            let (room, cursor) = (room.as_deref(), cursor.as_deref());
            let (messages, cursor) =
                search::run(ctx, Some(conn), user, &query, room, cursor, limit)?;
            ctx.frame(conn, &ServerFrame::SearchResults { id, query: &query, messages, cursor });
            Ok(())
        }
        Request::Rooms { prefix, cursor, limit } => {
            let (rooms, cursor) = directory::list(ctx, &prefix, cursor.as_deref(), limit)?;
            ctx.frame(conn, &ServerFrame::RoomList { id, rooms, cursor });
            Ok(())
        }
        Request::Read { room, seq } => read::read(ctx, conn, user, &room, seq),
        Request::Presence { room } => presence::list(ctx, to, user, &room),
        Request::Refresh => refresh::refresh(ctx, to),
        Request::Ping => {
            ctx.frame(conn, &ServerFrame::Pong { id, ts: wire::now_ms() });
            Ok(())
        }
        event => act_event(ctx, to, user, event),
    }
}

/// Runs the rule for a frame that makes a room event.
fn act_event(
    ctx: &mut Ctx<'_>,
    to: &ReplyTo,
    user: &Arc<str>,
    req: Request,
) -> Result<(), Refusal> {
    let conn = Some(to.conn());
    let to = to.clone();
    match req {
        Request::Send { room, text, reply_to } => {
            may_use(ctx, conn, user, &room)?;
            send::send(ctx, user, &room, text, reply_to, to)
        }
        Request::Dm { to: peer, text, reply_to } => send::dm(ctx, user, &peer, text, reply_to, to),
        Request::Edit { room, seq, text } => events::edit(ctx, to, user, &room, seq, text),
        Request::Delete { room, seq } => {
            let admin = ctx.conns.session(to.conn()).is_some_and(|s| s.admin);
            events::delete(ctx, to, user, admin, &room, seq)
        }
        Request::React { room, seq, emoji, on } => {
            events::react(ctx, to, user, &room, seq, emoji, on)
        }
        _ => Err(Refusal::new(Code::Internal, "not a room event")),
    }
}

/// Refuses a new membership of `user` in `room` past `max_rooms_per_user`
/// (one count of the user's rooms, only when the room would be new).
pub(crate) fn room_quota(ctx: &Ctx<'_>, user: &str, room: &str) -> Result<(), Refusal> {
    let storage = ctx.node.storage();
    let max = ctx.node.cfg().max_rooms_per_user;
    if !storage.is_member(room, user)? && storage.count_rooms_of(user)? >= max {
        ctx.node.metrics().refuse("limit_reached");
        let why = format!("a user may be a member of at most {max} rooms");
        return Err(Refusal::new(Code::LimitReached, why));
    }
    Ok(())
}

/// Whether `user` may use `room` (send, typing, history, read, presence):
/// a DM room only its two users, any other room its members. Membership
/// comes from the WebSocket session `conn` if it has one, else storage.
pub(crate) fn may_use(
    ctx: &Ctx<'_>,
    conn: Option<ConnId>,
    user: &str,
    room: &str,
) -> Result<(), Refusal> {
    if !wire::valid_room(room) {
        match wire::dm_users(room) {
            Some((a, b)) if user != a && user != b => {
                return Err(Refusal::new(Code::Forbidden, "a direct-message room of other users"))
            }
            Some(_) => {}
            None => return Err(Refusal::new(Code::InvalidRoom, "invalid room name")),
        }
    }
    let member = match conn.and_then(|c| ctx.conns.session(c)) {
        Some(session) => session.has_room(room),
        None => ctx.node.storage().is_member(room, user)?,
    };
    if member {
        Ok(())
    } else {
        Err(Refusal::new(Code::NotMember, "join the room first"))
    }
}
