//! What each client frame does: the rules of PROTOCOL.md sections 3 and 4
//! applied on the reactor that owns the connection.
//!
//! Owns the chat semantics (membership checks, seq allocation under the
//! room's lock, replies, broadcasts, durable-before-reply ordering). Sockets,
//! timers and subscriptions bookkeeping stay in `reactor`.

use crate::{
    conn::{Conn, Limited},
    deliver::ReplyTo,
    fanout::{Cmd, ConnRef, UserAction},
    proto::{self, Code, Cursor, Encoding, Out, Refusal, Request, Wire},
    reactor::{Close, Reactor},
    storage::{unavailable_wire, Pending},
};
use serde_json::Value;
use std::sync::Arc;

/// `joined` with `since` returns at most this many messages.
const SINCE_MAX: usize = 1000;

impl Reactor {
    /// Handles one client frame's payload.
    pub(crate) fn on_frame(&mut self, idx: u32, payload: &[u8], enc: Encoding) {
        let (rate, burst) = (self.shared.cfg.rate, self.shared.cfg.burst);
        let now = self.now;
        let Some(session) = self.conns.get_mut(idx as usize).and_then(Conn::session_mut) else {
            return;
        };
        let limited = session.bucket.take(rate, burst, now);
        self.metrics.frames_in += 1;
        let decoded = proto::decode(payload, enc, self.shared.cfg.max_text);
        let id = decoded.id;
        match limited {
            Ok(()) => {}
            Err(Limited::Abuse) => return self.start_closing(idx, Some(Close::Policy)),
            Err(Limited::Refuse(ms)) => {
                self.metrics.rate_limited += 1;
                return self.error(
                    idx,
                    id.as_ref(),
                    Code::RateLimited,
                    "rate limit exceeded",
                    Some(ms),
                );
            }
        }
        let result = match decoded.request {
            Ok(req) => self.act(idx, req, id.as_ref()),
            Err(refusal) => Err(refusal),
        };
        if let Err(r) = result {
            self.error(idx, id.as_ref(), r.code, &r.message, None);
        }
    }

    /// Queues an `error` frame.
    fn error(
        &mut self,
        idx: u32,
        id: Option<&Value>,
        code: Code,
        message: &str,
        retry_after_ms: Option<u64>,
    ) {
        self.reply(idx, &Out::Error { id, code, message, retry_after_ms });
    }

    /// Queues a reply in the connection's encoding.
    fn reply(&mut self, idx: u32, frame: &Out<'_>) {
        let Some(enc) = self.session_enc(idx) else { return };
        self.queue(idx, proto::encode(frame, enc));
    }

    fn ws_reply(&self, idx: u32, id: Option<&Value>) -> ReplyTo {
        let enc = self.session_enc(idx).unwrap_or(Encoding::Json);
        ReplyTo::Ws { conn: self.conn_ref(idx), id: id.cloned(), enc }
    }

    fn session_enc(&self, idx: u32) -> Option<Encoding> {
        self.conns.get(idx as usize).and_then(Conn::session).map(|s| s.enc)
    }

    fn user_of(&self, idx: u32) -> Option<Arc<str>> {
        self.conns.get(idx as usize).and_then(Conn::session).map(|s| s.user.clone())
    }

    /// Checks that the user may use `room` for send/typing/history/read/presence.
    fn member_room(&self, idx: u32, room: &str) -> Result<(), Refusal> {
        let Some(session) = self.conns.get(idx as usize).and_then(Conn::session) else {
            return Err(Refusal::new(Code::Internal, "no session"));
        };
        if !proto::valid_room(room) {
            match proto::dm_users(room) {
                Some((a, b)) if *session.user != *a && *session.user != *b => {
                    return Err(Refusal::new(
                        Code::Forbidden,
                        "a direct-message room of other users",
                    ))
                }
                Some(_) => {}
                None => return Err(Refusal::new(Code::InvalidRoom, "invalid room name")),
            }
        }
        if session.has_room(room) {
            Ok(())
        } else {
            Err(Refusal::new(Code::NotMember, "join the room first"))
        }
    }

    fn act(&mut self, idx: u32, req: Request, id: Option<&Value>) -> Result<(), Refusal> {
        let Some(user) = self.user_of(idx) else { return Ok(()) };
        match req {
            Request::Join { room, since } => self.join(idx, &user, &room, since, id),
            Request::Leave { room } => self.leave(idx, &user, &room, id),
            Request::Send { room, text } => {
                self.member_room(idx, &room)?;
                let reply = self.ws_reply(idx, id);
                self.accept_message(&user, &room, &text, true, reply)
            }
            Request::Dm { to, text } => {
                if *to == *user {
                    return Err(Refusal::new(
                        Code::BadRequest,
                        "cannot send a direct message to yourself",
                    ));
                }
                let room = proto::dm_room(&user, &to);
                let known = self
                    .conns
                    .get(idx as usize)
                    .and_then(Conn::session)
                    .is_some_and(|s| s.has_room(&room));
                let reply = self.ws_reply(idx, id);
                self.accept_message(&user, &room, &text, known, reply)
            }
            Request::Typing { room, active } => {
                self.member_room(idx, &room)?;
                self.shared.broadcast(
                    &room,
                    &Out::Typing { room: &room, user: &user, active },
                    0,
                    Some(user.clone()),
                );
                if let Some(c) = &self.shared.cluster {
                    c.typing(&room, &user, active);
                }
                Ok(())
            }
            Request::History { room, cursor, limit } => {
                self.member_room(idx, &room)?;
                let (messages, more) = self.shared.storage.history(&room, cursor, limit)?;
                self.reply(idx, &Out::History { id, room: &room, messages, more });
                Ok(())
            }
            Request::Read { room, seq } => {
                self.member_room(idx, &room)?;
                let latest = self.shared.with_room(&room, |e| e.seq)?;
                let seq = self.shared.storage.set_read(&user, &room, seq.min(latest))?;
                // Durable with the next group commit; nobody waits for it.
                self.shared.committer.after_flush(Pending::new(self.id, None, None));
                let me = self.conn_ref(idx);
                let name: Arc<str> = Arc::from(room.as_str());
                self.shared.frame_to_user(&user, &name, &Out::Read { room: &room, seq }, Some(me));
                if let Some(c) = &self.shared.cluster {
                    c.read(&room, &user, seq);
                }
                Ok(())
            }
            Request::Presence { room } => {
                self.member_room(idx, &room)?;
                let online = self.online_members(&room)?.1;
                self.reply(idx, &Out::PresenceList { id, room: &room, online });
                Ok(())
            }
            Request::Ping => {
                self.reply(idx, &Out::Pong { id, ts: proto::now_ms() });
                Ok(())
            }
        }
    }

    /// All members of a room and those of them online on this node.
    fn online_members(&self, room: &str) -> Result<(Vec<String>, Vec<String>), Refusal> {
        let members = self.shared.storage.members(room)?;
        let online = members.iter().filter(|m| self.shared.is_online(m)).cloned().collect();
        Ok((members, online))
    }

    fn join(
        &mut self,
        idx: u32,
        user: &Arc<str>,
        room: &str,
        since: Option<u64>,
        id: Option<&Value>,
    ) -> Result<(), Refusal> {
        if !proto::valid_room(room) {
            return Err(Refusal::new(Code::InvalidRoom, "invalid room name"));
        }
        let new = self.shared.storage.add_member(room, user)?;
        let conn = self.conn_ref(idx);
        let room: Arc<str> = Arc::from(room);
        if new {
            // Membership is durable before `joined` is sent.
            let cmd = Cmd::Joined {
                conn,
                room,
                user: user.clone(),
                since,
                id: id.cloned(),
                new,
                http: false,
            };
            let enc = self.session_enc(idx);
            let fail =
                unavailable_wire(id, enc == Some(Encoding::Json), enc == Some(Encoding::MsgPack));
            let fail = Cmd::Reply { conn, wire: Arc::new(fail) };
            self.shared.committer.after_flush(Pending::new(self.id, Some(cmd), Some(fail)));
        } else {
            self.finish_join(conn, &room, user, since, id.cloned(), new, false);
        }
        Ok(())
    }

    /// The membership is durable: subscribe the joining connection (if it
    /// is a WebSocket) and the user's others, answer (`joined` with the
    /// history, or HTTP 200), announce a new member.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_join(
        &mut self,
        conn: ConnRef,
        room: &str,
        user: &Arc<str>,
        since: Option<u64>,
        id: Option<Value>,
        new: bool,
        http: bool,
    ) {
        let idx = (conn.reactor == self.id)
            .then_some(conn.idx)
            .filter(|&i| self.conns.get(i as usize).is_some_and(|c| c.gen == conn.gen));
        let result = (|| -> Result<(), Refusal> {
            let ws = idx
                .filter(|&i| !http && self.conns.get(i as usize).and_then(Conn::session).is_some());
            let seq = match ws {
                Some(idx) => {
                    let (_, seq) = self.subscribe_local(idx, room, None)?;
                    // Everything up to `seq` comes from storage, later ones live.
                    let (history, more) = match since {
                        Some(since) => {
                            let (mut msgs, _) = self.shared.storage.history(
                                room,
                                Cursor::After(since),
                                SINCE_MAX + 1,
                            )?;
                            msgs.retain(|m| m.seq <= seq);
                            let more = msgs.len() > SINCE_MAX;
                            msgs.truncate(SINCE_MAX);
                            (msgs, more)
                        }
                        None => self.shared.storage.history(
                            room,
                            Cursor::Before(seq.saturating_add(1)),
                            proto::DEFAULT_HISTORY,
                        )?,
                    };
                    let (members, online) = self.online_members(room)?;
                    self.reply(
                        idx,
                        &Out::Joined { id: id.as_ref(), room, seq, members, online, history, more },
                    );
                    seq
                }
                None => self.shared.storage.last_seq(room)?,
            };
            let name: Arc<str> = Arc::from(room);
            self.to_user(user, || Cmd::User {
                user: user.clone(),
                action: UserAction::Subscribe { room: name.clone(), floor: seq },
                wire: None,
                skip: Some(conn),
            });
            if new {
                self.presence(room, user, "online");
                if let Some(c) = &self.shared.cluster {
                    c.member(room, user, true);
                }
            }
            if let (true, Some(idx)) = (http, idx) {
                let body = serde_json::json!({ "room": room, "seq": seq }).to_string();
                self.respond_and_close(
                    idx,
                    crate::http::response(200, "application/json", body.as_bytes()),
                );
            }
            Ok(())
        })();
        if let (Err(r), Some(idx)) = (result, idx) {
            if http {
                self.respond_and_close(idx, crate::api::refused(&r));
            } else {
                self.error(idx, id.as_ref(), r.code, &r.message, None);
            }
        }
    }

    fn leave(
        &mut self,
        idx: u32,
        user: &Arc<str>,
        room: &str,
        id: Option<&Value>,
    ) -> Result<(), Refusal> {
        if !proto::valid_room(room) {
            return Err(Refusal::new(Code::InvalidRoom, "invalid room name"));
        }
        self.member_room(idx, room)?;
        self.shared.storage.remove_member(room, user)?;
        let conn = self.conn_ref(idx);
        let enc = self.session_enc(idx);
        let fail =
            unavailable_wire(id, enc == Some(Encoding::Json), enc == Some(Encoding::MsgPack));
        let cmd = Cmd::Left { conn, room: Arc::from(room), id: id.cloned() };
        let fail = Cmd::Reply { conn, wire: Arc::new(fail) };
        self.shared.committer.after_flush(Pending::new(self.id, Some(cmd), Some(fail)));
        Ok(())
    }

    /// The removal is durable: unsubscribe and tell all the user's
    /// connections, and tell the room.
    pub(crate) fn finish_leave(&mut self, conn: ConnRef, room: &str, id: Option<Value>) {
        let Some(user) = (conn.reactor == self.id)
            .then(|| self.conns.get(conn.idx as usize).filter(|c| c.gen == conn.gen))
            .flatten()
            .and_then(Conn::session)
            .map(|s| s.user.clone())
        else {
            return;
        };
        let wire = Arc::new(Wire::encode(&Out::Left { id: id.as_ref(), room }, true, true));
        let room: Arc<str> = Arc::from(room);
        self.to_user(&user, || Cmd::User {
            user: user.clone(),
            action: UserAction::Unsubscribe { room: room.clone() },
            wire: Some((wire.clone(), 0, room.clone())),
            skip: None,
        });
        self.presence(&room, &user, "offline");
        if let Some(c) = &self.shared.cluster {
            c.member(&room, &user, false);
        }
    }

    /// Accepts a message for `room` from `user`: allocates its seq, stores
    /// it and hands it to every subscriber, all under the room's lock (or,
    /// in a cluster, through the bridge, which allocates the seq in Redis);
    /// `reply` is answered once it is durable. `known`: both members of a
    /// DM room are already members (no membership to write).
    pub(crate) fn accept_message(
        &mut self,
        user: &Arc<str>,
        room: &str,
        text: &str,
        known: bool,
        reply: ReplyTo,
    ) -> Result<(), Refusal> {
        let ts = proto::now_ms();
        self.metrics.messages += 1;
        if let Some(cluster) = &self.shared.cluster {
            return cluster.send(room, user, text, ts, known, reply);
        }
        let shared = &self.shared;
        let seq = shared.with_room(room, |e| -> Result<u64, Refusal> {
            if let (false, Some((a, b))) = (known, proto::dm_users(room)) {
                shared.storage.add_member(room, a)?;
                shared.storage.add_member(room, b)?;
            }
            let seq = e.seq + 1;
            shared.storage.append(room, seq, ts, user, text)?;
            e.seq = seq;
            shared.deliver_message(e, seq, ts, user, text);
            Ok(seq)
        })??;
        let pending =
            Pending::new(reply.reactor(), Some(reply.ok(room, seq, ts)), Some(reply.fail()));
        self.shared.committer.after_flush(pending);
        Ok(())
    }
}
