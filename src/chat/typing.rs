//! `typing`: best effort, to the room's other members, never stored.

use super::{may_use, Ctx};
use crate::{
    fanout::ConnId,
    wire::{Refusal, ServerFrame},
};
use std::sync::Arc;

/// `user` (on `conn`) is typing in `room`, or stopped.
pub(crate) fn typing(
    ctx: &mut Ctx<'_>,
    conn: ConnId,
    user: &Arc<str>,
    room: &str,
    active: bool,
) -> Result<(), Refusal> {
    may_use(ctx, Some(conn), user, room)?;
    let frame = ServerFrame::Typing { room, user, active };
    ctx.node.broadcast(room, &frame, Some(user.clone()));
    ctx.node.peers().typing(room, user, active);
    Ok(())
}
