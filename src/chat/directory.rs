//! `rooms` and `GET /api/rooms`: the room directory, every room with a
//! member (DM rooms excluded), by name, in pages.

use super::Ctx;
use crate::wire::{Refusal, RoomInfo};

/// A page of the directory from after `cursor` (a room name), and the
/// cursor of the next page if there is one.
pub(crate) fn list(
    ctx: &Ctx<'_>,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<RoomInfo>, Option<String>), Refusal> {
    let node = ctx.node;
    let (rooms, more) = node.storage().directory(prefix, cursor, limit)?;
    let mut out = Vec::with_capacity(rooms.len());
    for (room, members) in rooms {
        let seq = node.visible_seq(&room)?;
        let ts = if seq == 0 { 0 } else { node.storage().last_ts(&room)? };
        out.push(RoomInfo { room, members, seq, ts });
    }
    let next = if more { out.last().map(|r| r.room.clone()) } else { None };
    Ok((out, next))
}
