//! `send`, `dm` and `POST /api/rooms/{room}/messages`, and how every room
//! event is published: it gets its seq under its room's lock (or, in a
//! cluster, from Redis through the bridge) and is stored; after the flush
//! that makes it durable, the flusher (this loop at the end of its turn,
//! or the commit thread) hands it to every subscriber and answers the
//! sender (`ack`, 201 or 200).

use super::{mentions, Ctx};
use crate::{
    durable::{AfterFlush, Message},
    fanout::ReplyTo,
    storage::{self, LiveMessage, Storage},
    wire::{self, Code, Kind, Msg, Refusal},
};
use std::sync::Arc;

/// `dm`: a message in the DM room of `user` and `peer`, which it creates.
pub(crate) fn dm(
    ctx: &mut Ctx<'_>,
    user: &Arc<str>,
    peer: &str,
    text: String,
    reply_to: Option<u64>,
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
    let ev = message(ctx, user, &room, text, reply_to)?;
    publish(ctx, &room, ev, known, to)
}

/// `send` (membership already checked).
pub(crate) fn send(
    ctx: &mut Ctx<'_>,
    user: &Arc<str>,
    room: &str,
    text: String,
    reply_to: Option<u64>,
    to: ReplyTo,
) -> Result<(), Refusal> {
    let ev = message(ctx, user, room, text, reply_to)?;
    publish(ctx, room, ev, true, to)
}

/// A new `message` event: its thread root checked, its mentions found.
fn message(
    ctx: &Ctx<'_>,
    user: &str,
    room: &str,
    text: String,
    reply_to: Option<u64>,
) -> Result<Msg, Refusal> {
    if let Some(root) = reply_to {
        if live(ctx, room, root)?.reply_to.is_some() {
            return Err(Refusal::new(Code::NotFound, "a reply cannot start a thread"));
        }
    }
    let mentions = mentions::of_members(ctx.node, room, &text)?;
    let mut ev = Msg::message(room, user, text);
    ev.reply_to = reply_to;
    ev.mentions = mentions;
    Ok(ev)
}

/// Message `seq` of `room` if it is visible and not deleted, else
/// `not_found`.
pub(crate) fn live(ctx: &Ctx<'_>, room: &str, seq: u64) -> Result<LiveMessage, Refusal> {
    let node = ctx.node;
    let found =
        if seq <= node.visible_seq(room)? { node.storage().live_message(room, seq)? } else { None };
    found.ok_or_else(crate::storage::not_found)
}

/// The target (or thread root) of `ev` is still a live message, and a
/// reaction still fits under [`MAX_EMOJI`](storage::MAX_EMOJI), as of the events applied so far.
fn recheck(storage: &Storage, room: &str, ev: &Msg) -> Result<(), Refusal> {
    let target = if ev.kind == Kind::Message { ev.reply_to } else { ev.target };
    let Some(t) = target else { return Ok(()) };
    let Some(m) = storage.live_message(room, t)? else { return Err(crate::storage::not_found()) };
    let adds = ev.kind == Kind::Reaction && ev.on == Some(true);
    if adds && m.over_limit(ev.emoji.as_deref().unwrap_or_default()) {
        return Err(storage::emoji_limit());
    }
    Ok(())
}

/// Publishes room event `ev` (its rules already checked). `known`: both
/// members of a DM room are already members (no membership to write).
pub(crate) fn publish(
    ctx: &mut Ctx<'_>,
    room: &str,
    mut ev: Msg,
    known: bool,
    to: ReplyTo,
) -> Result<(), Refusal> {
    ev.ts = wire::now_ms();
    let node = ctx.node;
    ctx.conns.counts.messages += 1;
    if let Some(link) = node.peers().link() {
        // Refused here while this node cannot store it: once the cluster
        // has sequenced it, the other nodes deliver it whatever happens here.
        node.storage().takes_writes()?;
        let floor = || node.with_room(room, |e| e.seq).unwrap_or(0);
        // The answer comes back through the bridge; a refusal (link down)
        // is answered by the caller at once, parked or not.
        ctx.park(&to);
        return link.send(room, &ev, known, floor, to);
    }
    ctx.park(&to);
    let storage = node.storage();
    node.with_room(room, |e| -> Result<_, Refusal> {
        if let (false, Some((a, b))) = (known, wire::dm_users(room)) {
            storage.add_member(room, a)?;
            storage.add_member(room, b)?;
        }
        // Checked again under the lock: another reactor's event for the
        // same target may have been applied since the first check.
        recheck(storage, room, &ev)?;
        let seq = e.seq + 1;
        ev.seq = seq;
        storage.apply(room, seq, &ev)?;
        e.seq = seq;
        // Queued under the lock: the flusher releases the room's events
        // (to its members, and the ack) in seq order.
        let room = e.name.clone();
        node.after_flush(AfterFlush::message(Message { room, ev, to: Some(to), cluster_n: None }));
        Ok(())
    })?
}
