//! `join` (and `POST /api/rooms/{room}/join`): the membership is durable
//! before anyone hears of it; then the joining connection is subscribed
//! and answered (`joined` with history, or 200), the user's other
//! connections follow, and the room hears of a new member.

use super::{presence, Ctx};
use crate::{
    durable::AfterFlush,
    fanout::{Cmd, Reply, ReplyTo, UserAction, STORAGE_DOWN},
    local::Fresh,
    storage::Storage,
    wire::{self, http, Code, Cursor, Msg, Presence, Refusal, ServerFrame},
};
use serde_json::json;
use std::sync::Arc;

/// `joined` with `since` returns at most this many messages.
const SINCE_MAX: usize = 1000;

/// Makes `user` a member of `room`; answers `to` once that is durable.
pub(crate) fn start(
    ctx: &mut Ctx<'_>,
    user: &Arc<str>,
    room: &str,
    since: Option<u64>,
    to: ReplyTo,
) -> Result<(), Refusal> {
    if !wire::valid_room(room) {
        return Err(Refusal::new(Code::InvalidRoom, "invalid room name"));
    }
    super::room_quota(ctx, user, room)?;
    let new = ctx.node.storage().add_member(room, user)?;
    let room: Arc<str> = Arc::from(room);
    if !new {
        finish(ctx, &to, &room, user, since, false);
        return Ok(());
    }
    let fail = Cmd::Reply { to: to.clone(), reply: Reply::Unavailable(STORAGE_DOWN) };
    let reactor = to.reactor();
    let done = Cmd::Joined { to: to.clone(), room, user: user.clone(), since, new };
    ctx.after_flush(&to, AfterFlush::then(reactor, done, Some(fail)));
    Ok(())
}

/// The membership is durable: subscribe the joining connection (a
/// WebSocket) and the user's others, answer, announce a new member.
pub(crate) fn finish(
    ctx: &mut Ctx<'_>,
    to: &ReplyTo,
    room: &Arc<str>,
    user: &Arc<str>,
    since: Option<u64>,
    new: bool,
) {
    let seq = match subscribe_and_reply(ctx, to, room, since) {
        Ok(seq) => seq,
        Err(r) => return ctx.refuse(to, &r),
    };
    let node = ctx.node;
    node.fanout().to_user(user, || Cmd::ToUser {
        user: user.clone(),
        action: UserAction::Subscribe { room: room.clone(), floor: seq },
        frame: None,
        skip: Some(to.conn()),
    });
    if new {
        node.presence(room, user, Presence::Online);
        node.peers().member(room, user, Some(seq));
    }
    if let ReplyTo::Http { conn, .. } = to {
        ctx.respond(*conn, http::json(200, &json!({ "room": &**room, "seq": seq })));
    }
}

/// Subscribes a joining WebSocket and sends it `joined`; returns the
/// room's seq then (for an API call: the latest stored).
fn subscribe_and_reply(
    ctx: &mut Ctx<'_>,
    to: &ReplyTo,
    room: &Arc<str>,
    since: Option<u64>,
) -> Result<u64, Refusal> {
    let node = ctx.node;
    let conn = to.conn();
    match to {
        ReplyTo::Ws { id, .. } if ctx.conns.session(conn).is_some() => {
            let (_, seq) = ctx.local.subscribe(node, ctx.conns, conn, room, None, Fresh::No)?;
            let (mut history, mut more) = history_for(node.storage(), room, since, seq)?;
            more |= super::history::fit(&mut history, node.cfg().max_output, since.is_some());
            let (members, online) = presence::online_members(node, room)?;
            let names = node.storage().names(&members)?;
            let id = id.as_ref();
            let frame =
                ServerFrame::Joined { id, room, seq, members, online, names, history, more };
            ctx.frame(conn, &frame);
            Ok(seq)
        }
        _ => Ok(node.visible_seq(room)?),
    }
}

/// The history in `joined`: everything up to `seq` comes from storage
/// (later messages arrive live), after `since` or the latest page.
fn history_for(
    storage: &Storage,
    room: &str,
    since: Option<u64>,
    seq: u64,
) -> Result<(Vec<Msg>, bool), Refusal> {
    Ok(match since {
        Some(since) => {
            let (mut msgs, _) = storage.history(room, Cursor::After(since), SINCE_MAX + 1)?;
            msgs.retain(|m| m.seq <= seq);
            let more = msgs.len() > SINCE_MAX;
            msgs.truncate(SINCE_MAX);
            (msgs, more)
        }
        None => {
            storage.history(room, Cursor::Before(seq.saturating_add(1)), wire::DEFAULT_HISTORY)?
        }
    })
}
