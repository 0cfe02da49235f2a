//! `edit`, `delete` and `react` (and `PATCH` / `DELETE
//! /api/rooms/{room}/messages/{seq}`): the rules of PROTOCOL.md section
//! 3.1; each accepted one is a room event published like a message.

use super::{may_use, mentions, send, Ctx};
use crate::{
    fanout::ReplyTo,
    storage,
    wire::{Code, Kind, Msg, Refusal},
};

/// The WebSocket asking, if it is one (its session knows its rooms).
fn ws(to: &ReplyTo) -> Option<crate::fanout::ConnId> {
    matches!(to, ReplyTo::Ws { .. }).then(|| to.conn())
}

/// `edit`: a new text for `user`'s own message `seq`.
pub(crate) fn edit(
    ctx: &mut Ctx<'_>,
    to: ReplyTo,
    user: &str,
    room: &str,
    seq: u64,
    text: String,
) -> Result<(), Refusal> {
    may_use(ctx, ws(&to), user, room)?;
    if send::live(ctx, room, seq)?.from != user {
        return Err(Refusal::new(Code::Forbidden, "only its author may edit a message"));
    }
    let mut ev = Msg::on_target(Kind::Edit, room, user, seq);
    ev.mentions = mentions::of_members(ctx.node, room, &text)?;
    ev.text = Some(text);
    send::publish(ctx, room, ev, true, to)
}

/// `delete`: by its author, or by an admin.
pub(crate) fn delete(
    ctx: &mut Ctx<'_>,
    to: ReplyTo,
    user: &str,
    admin: bool,
    room: &str,
    seq: u64,
) -> Result<(), Refusal> {
    may_use(ctx, ws(&to), user, room)?;
    if send::live(ctx, room, seq)?.from != user && !admin {
        return Err(Refusal::new(Code::Forbidden, "only its author or an admin may delete it"));
    }
    send::publish(ctx, room, Msg::on_target(Kind::Delete, room, user, seq), true, to)
}

/// `react`: adds (`on`) or removes `user`'s reaction `emoji`.
pub(crate) fn react(
    ctx: &mut Ctx<'_>,
    to: ReplyTo,
    user: &str,
    room: &str,
    seq: u64,
    emoji: String,
    on: bool,
) -> Result<(), Refusal> {
    may_use(ctx, ws(&to), user, room)?;
    let m = send::live(ctx, room, seq)?;
    if on && m.over_limit(&emoji) {
        ctx.node.metrics().refuse("limit_reached");
        return Err(storage::emoji_limit());
    }
    let mut ev = Msg::on_target(Kind::Reaction, room, user, seq);
    ev.emoji = Some(emoji);
    ev.on = Some(on);
    send::publish(ctx, room, ev, true, to)
}
