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
    // Pages read forward keep their oldest messages, others their newest.
    let forward = matches!(cursor, Cursor::After(_));
    more |= fit(&mut messages, ctx.node.cfg().max_output, forward);
    Ok((messages, more))
}

/// Room for everything in a reply besides its messages.
const REPLY_HEADROOM: usize = 4096;

/// Counts bytes written.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps as many of `msgs` as fit in one reply under `max_output` bytes
/// (JSON, the larger encoding, measured), from the front (`keep_oldest`) or
/// the back. True if any was left out: no single reply is over the
/// slow-consumer limit, the client pages for the rest.
pub(crate) fn fit(msgs: &mut Vec<Msg>, max_output: usize, keep_oldest: bool) -> bool {
    let budget = max_output.saturating_sub(REPLY_HEADROOM);
    let size = |m: &Msg| {
        let mut c = Count(1);
        let _ = serde_json::to_writer(&mut c, m);
        c.0
    };
    let mut used = 0;
    let keep = if keep_oldest {
        msgs.iter()
            .take_while(|m| {
                used += size(m);
                used <= budget
            })
            .count()
    } else {
        msgs.iter()
            .rev()
            .take_while(|m| {
                used += size(m);
                used <= budget
            })
            .count()
    };
    if keep == msgs.len() {
        return false;
    }
    if keep_oldest {
        msgs.truncate(keep);
    } else {
        msgs.drain(..msgs.len() - keep);
    }
    true
}
