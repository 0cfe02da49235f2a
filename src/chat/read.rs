//! `read`: moves the user's read marker (never backwards, never past the
//! room's latest seq) and tells the user's other connections.

use super::{may_use, Ctx};
use crate::{
    durable::AfterFlush,
    fanout::ConnId,
    wire::{Refusal, ServerFrame},
};
use std::sync::Arc;

/// Sets `user`'s read marker in `room` to `seq` (from connection `conn`).
pub(crate) fn read(
    ctx: &mut Ctx<'_>,
    conn: ConnId,
    user: &Arc<str>,
    room: &str,
    seq: u64,
) -> Result<(), Refusal> {
    may_use(ctx, Some(conn), user, room)?;
    let node = ctx.node;
    // Not past the room's latest stored message (in a cluster the sender's
    // ack can come before this node has released its own message).
    let latest = node.visible_seq(room)?.max(node.storage().last_seq(room)?);
    let seq = node.storage().set_read(user, room, seq.min(latest))?;
    // Durable with the next group commit; nobody waits for it.
    node.after_flush(AfterFlush::nothing());
    let name: Arc<str> = Arc::from(room);
    node.fanout().frame_to_user(user, &name, &ServerFrame::Read { room, seq }, Some(conn));
    node.peers().read(room, user, seq);
    Ok(())
}
