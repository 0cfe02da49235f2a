//! Upgrades a database written by an earlier release to the current
//! layout, once, when it is opened: member counts for the directory, and
//! messages of the first format rewritten as event records with their
//! ordinal and author index entries (the unread counts read them).

use super::{
    events::Record,
    keys::{sub, tag, Part::*},
    Result, StorageError, Trees,
};

/// The `meta` key holding the layout version.
const LAYOUT_KEY: &[u8] = b"layout";
/// The current layout.
const LAYOUT: u8 = 2;
/// Writes per batch while upgrading.
const BATCH: usize = 10_000;

/// Brings `t` to the current layout (a no-op once done).
pub(super) fn run(t: &Trees) -> Result<()> {
    if t.meta.get(LAYOUT_KEY)?.is_some_and(|v| v.first() == Some(&LAYOUT)) {
        return Ok(());
    }
    let mut counts: Vec<(Vec<u8>, u64)> = Vec::new();
    for kv in t.members.iter() {
        let (k, _) = kv?;
        let room = k.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        match counts.last_mut() {
            Some((r, n)) if *r == room => *n += 1,
            _ => counts.push((room, 1)),
        }
    }
    for (room, n) in counts {
        t.room_members.insert(room, &n.to_be_bytes())?;
    }
    let mut b = sled::Batch::default();
    let (mut pending, mut upgraded) = (0, 0u64);
    let mut ord: (Vec<u8>, u64) = (Vec::new(), 0);
    for kv in t.messages.iter() {
        let (k, v) = kv?;
        // Only event keys (`room 0x00 seq`) of the first format.
        if k.len() < 10 || k[k.len() - 9] != 0 || v.first() != Some(&0x93) {
            continue;
        }
        let room = std::str::from_utf8(&k[..k.len() - 9])
            .map_err(|_| StorageError("corrupt message key".into()))?;
        let seq = super::keys::tail_u64(&k).unwrap_or(0);
        if ord.0 != room.as_bytes() {
            ord = (room.as_bytes().to_vec(), 0);
        }
        ord.1 += 1;
        let rec = Record::decode(&v)?;
        b.insert(sub(room, tag::ORD, &[N(seq)]), ord.1.to_be_bytes().to_vec());
        b.insert(sub(room, tag::OWN, &[S(&rec.from), N(seq)]), vec![]);
        b.insert(k.to_vec(), rec.encode());
        pending += 1;
        upgraded += 1;
        if pending >= BATCH {
            t.messages.apply_batch(std::mem::take(&mut b))?;
            pending = 0;
        }
    }
    // Only when there is something to write: sled's first `apply_batch`
    // switches on a process-wide lock that every later read and write
    // then takes (its transactions' isolation), even on a new database.
    if pending > 0 {
        t.messages.apply_batch(b)?;
    }
    t.meta.insert(LAYOUT_KEY, &[LAYOUT])?;
    t.db.flush()?;
    if upgraded > 0 {
        log::info!("storage: upgraded {upgraded} messages to the current layout");
    }
    Ok(())
}
