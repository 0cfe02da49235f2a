//! The snapshot thread: keeps short the log that sled replays when the
//! node starts, after a crash too ([`Storage::snapshot_if_due`] says why
//! and when), and takes a last snapshot after the clean stop's flush.

use crate::storage::{SnapshotDue, Storage, SNAPSHOT_AFTER};
use crossbeam_channel::{RecvTimeoutError, Sender};
use std::{io, thread, time::Duration, time::Instant};

/// How often the thread looks at how much log was written.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Tests set a small threshold, to take snapshots between writes.
const TEST_ENV: &str = "CHINWAG_TEST_SNAPSHOT_BYTES";

/// The running thread; [`Snapshots::stop`] ends it.
#[derive(Debug)]
pub struct Snapshots {
    stop: Sender<()>,
    handle: thread::JoinHandle<()>,
    storage: Storage,
}

/// Starts the thread, at nice 19 and in the idle I/O class: a snapshot is
/// never urgent, and its file write must not get ahead of a flush.
pub fn start(storage: Storage) -> io::Result<Snapshots> {
    let after = std::env::var(TEST_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(SNAPSHOT_AFTER);
    let (stop, rx) = crossbeam_channel::bounded::<()>(1);
    let s = storage.clone();
    let handle = thread::Builder::new().name("chinwag-snapshot".into()).spawn(move || {
        crate::priority::background();
        while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(LOOK_EVERY) {
            take(&s, SnapshotDue::Running(after));
        }
    })?;
    Ok(Snapshots { stop, handle, storage })
}

impl Snapshots {
    /// Ends the thread; then, after the clean stop's last flush, takes a
    /// snapshot if more than a little log would be replayed at the next
    /// start.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.handle.join();
        take(&self.storage, SnapshotDue::Stopping);
    }
}

fn take(s: &Storage, due: SnapshotDue) {
    let t = Instant::now();
    match s.snapshot_if_due(due) {
        Ok(Some(bytes)) => {
            log::info!("sled snapshot of {bytes} bytes written in {:?}", t.elapsed())
        }
        Ok(None) => {}
        Err(e) => log::warn!("sled snapshot not written ({e}): the next start replays more"),
    }
}
