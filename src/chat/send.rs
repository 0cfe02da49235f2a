//! `send`, `dm` and `POST /api/rooms/{room}/messages`: a message gets its
//! seq under its room's lock (or, in a cluster, from Redis through the
//! bridge) and is stored; after the flush that makes it durable, the commit
//! thread hands it to every subscriber and answers the sender (`ack` or 201).

use super::Ctx;
use crate::{
    durable::{AfterFlush, Message},
    fanout::ReplyTo,
    wire::{self, Code, Refusal},
};
use std::sync::Arc;

/// `dm`: a message in the DM room of `user` and `peer`, which it creates.
pub(crate) fn dm(
    ctx: &mut Ctx<'_>,
    user: &Arc<str>,
    peer: &str,
    text: String,
    to: ReplyTo,
) -> Result<(), Refusal> {
    if *peer == **user {
        return Err(Refusal::new(Code::BadRequest, "cannot send a direct message to yourself"));
    }
    let room = wire::dm_room(user, peer);
    let known = ctx.conns.session(to.conn()).is_some_and(|s| s.has_room(&room));
    if !known {
        super::room_quota(ctx, user, &room)?;
    }
    accept(ctx, user, &room, text, known, to)
}

/// Accepts a message for `room` from `user` (membership already checked).
/// `known`: both members of a DM room are already members (no membership
/// to write).
pub(crate) fn accept(
    ctx: &mut Ctx<'_>,
    user: &Arc<str>,
    room: &str,
    text: String,
    known: bool,
    to: ReplyTo,
) -> Result<(), Refusal> {
    let ts = wire::now_ms();
    let node = ctx.node;
    ctx.conns.counts.messages += 1;
    if let Some(link) = node.peers().link() {
        let floor = || node.with_room(room, |e| e.seq).unwrap_or(0);
        // The answer comes back through the bridge; a refusal (link down)
        // is answered by the caller at once, parked or not.
        ctx.park(&to);
        return link.send(room, user, &text, ts, known, floor, to);
    }
    ctx.park(&to);
    let storage = node.storage();
    node.with_room(room, |e| -> Result<_, Refusal> {
        if let (false, Some((a, b))) = (known, wire::dm_users(room)) {
            storage.add_member(room, a)?;
            storage.add_member(room, b)?;
        }
        let seq = e.seq + 1;
        storage.append(room, seq, ts, user, &text)?;
        e.seq = seq;
        // Queued under the lock: the commit thread releases the room's
        // messages (to its members, and the ack) in seq order.
        let (room, from, to) = (e.name.clone(), user.clone(), Some(to));
        node.after_flush(AfterFlush::message(Message { room, seq, ts, from, text, to }));
        Ok(())
    })?
}
