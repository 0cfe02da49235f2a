//! `history` (and `GET /api/rooms/{room}/messages`): a page of stored
//! messages, for members only.

use super::{may_use, Ctx};
use crate::{
    fanout::ConnId,
    wire::{Cursor, Msg, Refusal},
};

/// Up to `limit` messages of `room` from `cursor`, and whether more exist.
/// `conn`: the WebSocket asking, if any (its session knows its rooms).
pub(crate) fn query(
    ctx: &Ctx<'_>,
    conn: Option<ConnId>,
    user: &str,
    room: &str,
    cursor: Cursor,
    limit: usize,
) -> Result<(Vec<Msg>, bool), Refusal> {
    may_use(ctx, conn, user, room)?;
    // Only what is durable (released) shows.
    let visible = ctx.node.visible_seq(room)?;
    let cursor = match cursor {
        Cursor::Latest => Cursor::Before(visible.saturating_add(1)),
        Cursor::Before(b) => Cursor::Before(b.min(visible.saturating_add(1))),
        after => after,
    };
    let (mut messages, mut more) = ctx.node.storage().history(room, cursor, limit)?;
    if messages.last().is_some_and(|m| m.seq > visible) {
        messages.retain(|m| m.seq <= visible);
        more = false;
    }
    Ok((messages, more))
}
