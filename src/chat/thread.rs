//! `thread`: a thread root's replies, in their current state, for members.

use super::{history, may_use, Ctx};
use crate::{
    fanout::ConnId,
    wire::{Code, Kind, Msg, Refusal},
};

/// Up to `limit` replies to `root` after seq `after`, and whether more
/// exist. `root` must be a message that is not a reply (deleted or not).
pub(crate) fn query(
    ctx: &Ctx<'_>,
    conn: Option<ConnId>,
    user: &str,
    room: &str,
    root: u64,
    after: u64,
    limit: usize,
) -> Result<(Vec<Msg>, bool), Refusal> {
    may_use(ctx, conn, user, room)?;
    let visible = ctx.node.visible_seq(room)?;
    let storage = ctx.node.storage();
    let is_root = root <= visible
        && storage
            .event(room, root)?
            .is_some_and(|m| m.kind == Kind::Message && m.reply_to.is_none());
    if !is_root {
        return Err(Refusal::new(Code::NotFound, "no such thread root"));
    }
    let (mut messages, mut more) = storage.thread(room, root, after, limit)?;
    if messages.last().is_some_and(|m| m.seq > visible) {
        messages.retain(|m| m.seq <= visible);
        more = false;
    }
    more |= history::fit(&mut messages, ctx.node.cfg().max_output, true);
    Ok((messages, more))
}
