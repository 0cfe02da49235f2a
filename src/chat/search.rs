//! `search` and `GET /api/search`: messages of the user's rooms whose
//! current text has every query word as a word prefix, newest first, in
//! pages. The index proposes; storage decides: a hit is shown only if the
//! message, as stored now, is live and still matches (the index may lag
//! an edit or a delete by up to a poll).

use super::{may_use, Ctx};
use crate::{
    fanout::ConnId,
    search::{self, Rank},
    wire::{Code, Msg, Refusal},
};

/// A page of results and the cursor of the next page, if any.
pub(crate) type Page = (Vec<Msg>, Option<String>);

/// Rounds of index queries one page may take (hits refused by storage
/// make a round come back short).
const ROUNDS: usize = 8;

fn encode_cursor((ts, room, seq): &Rank) -> String {
    format!("{ts}.{seq}.{room}")
}

fn decode_cursor(c: &str) -> Option<Rank> {
    let mut parts = c.splitn(3, '.');
    let ts = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((ts, parts.next()?.to_string(), seq))
}

/// Runs a search for `user` (`conn`: the WebSocket asking, if any).
pub(crate) fn run(
    ctx: &Ctx<'_>,
    conn: Option<ConnId>,
    user: &str,
    query: &str,
    room: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page, Refusal> {
    let node = ctx.node;
    let rooms = match room {
        Some(r) => {
            may_use(ctx, conn, user, r)?;
            vec![r.to_string()]
        }
        None => node.storage().rooms_of(user)?,
    };
    let mut before = match cursor {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| bad("`cursor` is not one we gave"))?),
        None => None,
    };
    let Some(index) = node.search() else {
        return Err(Refusal::new(Code::Unavailable, "search is unavailable on this server"));
    };
    let words = search::words(query);
    let mut out: Vec<(Rank, Msg)> = Vec::new();
    if rooms.is_empty() {
        return Ok((Vec::new(), None));
    }
    for _ in 0..ROUNDS {
        let (hits, more) = index
            .query(&words, &rooms, before.as_ref(), limit + 1)
            .map_err(|e| internal(&e.to_string()))?;
        if hits.is_empty() {
            break;
        }
        before = hits.last().cloned();
        for rank in hits {
            if let Some(m) = shown(ctx, &rank, &words)? {
                out.push((rank, m));
            }
        }
        if out.len() > limit || !more {
            break;
        }
    }
    let next = (out.len() > limit).then(|| encode_cursor(&out[limit - 1].0));
    out.truncate(limit);
    Ok((out.into_iter().map(|(_, m)| m).collect(), next))
}

/// The message behind a hit, if it is visible, live and still matches.
fn shown(ctx: &Ctx<'_>, (_, room, seq): &Rank, words: &[String]) -> Result<Option<Msg>, Refusal> {
    if *seq > ctx.node.visible_seq(room)? {
        return Ok(None);
    }
    let m = ctx.node.storage().event(room, *seq)?;
    Ok(m.filter(|m| !m.deleted && m.text.as_deref().is_some_and(|t| search::matches(words, t))))
}

fn bad(why: &str) -> Refusal {
    Refusal::new(Code::BadRequest, why)
}

fn internal(why: &str) -> Refusal {
    log::warn!("search failed: {why}");
    Refusal::new(Code::Internal, "search failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let r = (17, "dm:a.b:c".to_string(), 4);
        assert_eq!(decode_cursor(&encode_cursor(&r)), Some(r));
        assert_eq!(decode_cursor("x"), None);
    }
}
