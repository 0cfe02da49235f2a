//! `chinwag export DEST`: every room's events as JSON Lines, one file per
//! room (`DEST/<room>.jsonl`), each line one event as `history` gives it
//! (a message with its current state: edited text, deleted, reactions,
//! replies), in seq order, so a team can take its history elsewhere.
//!
//! Consistent while the server runs: it reads a consistent copy made the
//! way `chinwag backup` makes one (streamed from the running server, else
//! from the files), in a folder inside DEST that it removes at the end.

use crate::{
    control,
    storage::Storage,
    wire::{Cursor, Msg},
};
use std::{
    fs,
    io::{BufWriter, Write},
    os::unix::fs::DirBuilderExt,
    path::Path,
};

/// Events read from the copy per step.
const PAGE: usize = 1000;

/// Exports `data_dir` into `dest`; returns the rooms and events written.
pub fn export(data_dir: &Path, dest: &Path) -> Result<(usize, u64), String> {
    let dest = std::path::absolute(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let copy = dest.join(".chinwag-export-copy");
    if copy.exists() {
        return Err(format!("{} exists: an export is running, or one failed", copy.display()));
    }
    control::backup(data_dir, &copy)?;
    let done = write_rooms(&copy, &dest);
    let _ = fs::remove_dir_all(&copy);
    done
}

/// Writes one file per room of the database in `copy`.
fn write_rooms(copy: &Path, dest: &Path) -> Result<(usize, u64), String> {
    let storage = Storage::open(copy).map_err(|e| e.to_string())?;
    let rooms = storage.event_rooms().map_err(|e| e.to_string())?;
    let mut events = 0;
    for room in &rooms {
        // Room names are [a-z0-9_.-] and DM rooms add `:` and users'
        // [A-Za-z0-9_.-]: never a path separator, never `.` or `..`.
        if room.contains('/') || room.starts_with('.') {
            return Err(format!("unexpected room name {room:?}"));
        }
        let path = dest.join(format!("{room}.jsonl"));
        let file = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = BufWriter::new(file);
        events += write_room(&storage, room, &mut out).map_err(|e| format!("{room}: {e}"))?;
        out.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((rooms.len(), events))
}

/// Writes `room`'s events, a JSON object a line; returns how many.
fn write_room(storage: &Storage, room: &str, out: &mut impl Write) -> Result<u64, String> {
    let mut after = 0;
    let mut n = 0;
    loop {
        let (page, more) =
            storage.history(room, Cursor::After(after), PAGE).map_err(|e| e.to_string())?;
        for ev in &page {
            line(ev, out)?;
            after = ev.seq;
            n += 1;
        }
        if !more || page.is_empty() {
            return Ok(n);
        }
    }
}

fn line(ev: &Msg, out: &mut impl Write) -> Result<(), String> {
    serde_json::to_writer(&mut *out, ev).map_err(|e| e.to_string())?;
    out.write_all(b"\n").map_err(|e| e.to_string())
}
