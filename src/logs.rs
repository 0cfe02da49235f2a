//! Logging: the line format (plain, or journald's) and a limiter for the
//! lines that clients can cause.
//!
//! Under systemd, stderr goes to the journal, which stamps every line
//! itself; there a line starts with its syslog priority instead, `<3>` for
//! errors to `<7>` for debug (sd-daemon(3)'s convention), so that
//! `journalctl -p err` and `-p warning` select by level. Elsewhere a line
//! is `[time LEVEL target] message`, as env_logger prints it.
//!
//! Lines about one client's errors (a refused login, a refused request, a
//! connection the server closes) would let any client fill the disk. Each
//! kind gets [`BURST`] lines per [`WINDOW`]; the next line after a quiet
//! spell says how many were left out.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, Instant},
};

/// How many lines of one kind a window allows.
pub const BURST: u32 = 20;
/// The limiter's window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Installs the logger: `RUST_LOG` (default `info`), and the journal's
/// format when stderr is the journal.
pub fn init() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        b.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            match record.target() {
                t if t.starts_with("chinwag") => writeln!(buf, "<{priority}>{}", record.args()),
                t => writeln!(buf, "<{priority}>{t}: {}", record.args()),
            }
        });
    }
    b.init();
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` names its
/// device and inode (systemd sets it for a unit's stdout/stderr; checking
/// them keeps a child whose stderr was redirected elsewhere on the plain
/// format).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    // SAFETY: an all-zero stat is a valid value for fstat(2) to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) on fd 2 fills `st`, which outlives the call.
    let ok = unsafe { libc::fstat(2, &mut st) } == 0;
    ok && st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// One kind's window: when it began, lines logged in it, lines left out.
type Window = (Instant, u32, u64);

/// Every kind's window.
static KINDS: Mutex<Option<HashMap<&'static str, Window>>> = Mutex::new(None);

/// Whether a line of this kind may be logged now. `Some(n)`: yes, and `n`
/// lines of the kind were left out before it (say so in the line).
pub fn allow(kind: &'static str) -> Option<u64> {
    let now = Instant::now();
    let mut kinds = KINDS.lock();
    let (start, logged, left_out) =
        kinds.get_or_insert_with(HashMap::new).entry(kind).or_insert((now, 0, 0));
    if now.duration_since(*start) >= WINDOW {
        (*start, *logged) = (now, 0);
    }
    if *logged >= BURST {
        *left_out += 1;
        return None;
    }
    *logged += 1;
    Some(std::mem::take(left_out))
}

/// ` (N similar lines left out)` when N > 0, for the end of a line.
pub fn left_out(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines left out)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_gets_a_burst_then_says_what_it_left_out() {
        for _ in 0..BURST {
            assert_eq!(allow("test-kind"), Some(0));
        }
        assert_eq!(allow("test-kind"), None);
        assert_eq!(allow("test-kind"), None);
        assert_eq!(allow("other-kind"), Some(0), "kinds are counted apart");
        // A new window: the first line tells.
        KINDS.lock().as_mut().unwrap().get_mut("test-kind").unwrap().0 -= WINDOW;
        assert_eq!(allow("test-kind"), Some(2));
        assert_eq!(left_out(2), " (2 similar lines left out)");
    }
}
