//! `presence`: who of a room's members is online, on any node.

use super::{may_use, Ctx};
use crate::{
    fanout::ReplyTo,
    node::Node,
    wire::{Refusal, ServerFrame},
};

/// Answers `to` with the online members of `room`.
pub(crate) fn list(ctx: &mut Ctx<'_>, to: &ReplyTo, user: &str, room: &str) -> Result<(), Refusal> {
    may_use(ctx, Some(to.conn()), user, room)?;
    let online = online_members(ctx.node, room)?.1;
    ctx.frame(to.conn(), &ServerFrame::PresenceList { id: to.id(), room, online });
    Ok(())
}

/// All members of a room, and those of them online.
pub(crate) fn online_members(
    node: &Node,
    room: &str,
) -> Result<(Vec<String>, Vec<String>), Refusal> {
    let members = node.storage().members(room)?;
    let online = members.iter().filter(|m| node.is_online(m)).cloned().collect();
    Ok((members, online))
}
