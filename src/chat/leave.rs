//! `leave`: the removal is durable before anyone hears of it; then every
//! connection of the user is unsubscribed and told, and the room hears.

use super::{may_use, Ctx};
use crate::{
    durable::AfterFlush,
    fanout::{Cmd, Reply, ReplyTo, UserAction, STORAGE_DOWN},
    wire::{self, Code, Encoded, Presence, Refusal, ServerFrame},
};
use std::sync::Arc;

/// Ends `user`'s membership of `room`; answers `to` once that is durable.
pub(crate) fn start(
    ctx: &mut Ctx<'_>,
    user: &Arc<str>,
    room: &str,
    to: ReplyTo,
) -> Result<(), Refusal> {
    if !wire::valid_room(room) {
        return Err(Refusal::new(Code::InvalidRoom, "invalid room name"));
    }
    may_use(ctx, Some(to.conn()), user, room)?;
    ctx.node.storage().remove_member(room, user)?;
    let fail = Cmd::Reply { to: to.clone(), reply: Reply::Unavailable(STORAGE_DOWN) };
    let reactor = to.reactor();
    let done = Cmd::Left { to: to.clone(), room: Arc::from(room) };
    ctx.after_flush(&to, AfterFlush::then(reactor, done, Some(fail)));
    Ok(())
}

/// The removal is durable: unsubscribe and tell all the user's
/// connections, and tell the room.
pub(crate) fn finish(ctx: &mut Ctx<'_>, to: &ReplyTo, room: &Arc<str>) {
    let Some(user) = ctx.conns.session(to.conn()).map(|s| s.user.clone()) else { return };
    let frame = ServerFrame::Left { id: to.id(), room };
    let frame = Arc::new(Encoded::encode(&frame, true, true));
    ctx.node.fanout().to_user(&user, || Cmd::ToUser {
        user: user.clone(),
        action: UserAction::Unsubscribe { room: room.clone() },
        frame: Some((frame.clone(), 0, room.clone())),
        skip: None,
    });
    ctx.node.presence(room, &user, Presence::Offline);
    ctx.node.peers().member(room, &user, None);
}
