//! The local control socket (`DATA_DIR/control.sock`, mode 0600) through
//! which `chinwag backup` asks a running server for a consistent copy of
//! its data (sled allows one process per database), and the backup itself.
//!
//! The server only reads: it streams every record and the kept files over
//! the socket, and the `chinwag backup` process writes the copy. So DEST is
//! resolved against the command's working directory, and the copy lands
//! where the operator may write even when the server may not (the systemd
//! unit's read-only file system, private /tmp and dynamic user).
//!
//! The stream is a sequence of items, each a tag byte and length-prefixed
//! (u32, big-endian) parts: `R tree key value`, `F name bytes`, then
//! `E count` (done) or `X message` (failed).
//!
//! One blocking thread; it never touches connections or reactors.

use crate::storage::{Copy, Storage, StorageError};
use std::{
    fs,
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    os::unix::{
        fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

/// The control socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Files of the data directory besides the database that a backup carries.
const KEPT_FILES: [&str; 2] = ["secret", "node_id"];

/// How long `chinwag backup` waits for the next item before giving up.
const STALL: Duration = Duration::from_secs(60);

/// Serves the control socket until the process exits.
pub fn serve(storage: Storage, data_dir: PathBuf) -> io::Result<()> {
    let path = socket_path(&data_dir);
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    thread::Builder::new().name("chinwag-control".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Err(e) = handle(&stream, &storage, &data_dir) {
                log::warn!("backup: the copy was not sent: {e}");
            }
        }
    })?;
    Ok(())
}

fn handle(stream: &UnixStream, storage: &Storage, data_dir: &Path) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let mut out = BufWriter::new(stream);
    if line.trim_end() != "backup" {
        put(&mut out, b'X', &[b"unknown request"])?;
        return out.flush();
    }
    match send_copy(&mut out, storage, data_dir) {
        Ok(n) => {
            put(&mut out, b'E', &[n.to_string().as_bytes()])?;
            out.flush()?;
            log::info!("backup: {n} records sent");
        }
        // A failed socket write ends the stream; anything else is told.
        Err(Sent::Io(e)) => return Err(e),
        Err(Sent::Storage(e)) => {
            log::warn!("backup failed: {e}");
            put(&mut out, b'X', &[e.to_string().as_bytes()])?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Why the server's side of a backup stopped.
enum Sent {
    Io(io::Error),
    Storage(StorageError),
}

fn send_copy(out: &mut impl Write, storage: &Storage, data_dir: &Path) -> Result<u64, Sent> {
    let mut io_err = None;
    let n = storage
        .each_record(|tree, k, v| {
            put(out, b'R', &[tree, k, v]).map_err(|e| {
                let why = StorageError(e.to_string());
                io_err = Some(e);
                why
            })
        })
        .map_err(|e| io_err.take().map_or(Sent::Storage(e), Sent::Io))?;
    for name in KEPT_FILES {
        match fs::read(data_dir.join(name)) {
            Ok(bytes) => put(out, b'F', &[name.as_bytes(), &bytes]).map_err(Sent::Io)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Sent::Storage(StorageError(format!("cannot read {name}: {e}")))),
        }
    }
    Ok(n)
}

/// Writes one item: its tag, then each part with its length.
fn put(w: &mut impl Write, tag: u8, parts: &[&[u8]]) -> io::Result<()> {
    w.write_all(&[tag])?;
    for p in parts {
        w.write_all(&(p.len() as u32).to_be_bytes())?;
        w.write_all(p)?;
    }
    Ok(())
}

/// Reads one item: its tag and its parts (how many follows from the tag).
fn get(r: &mut impl Read) -> io::Result<(u8, Vec<Vec<u8>>)> {
    let mut tag = [0u8];
    r.read_exact(&mut tag)?;
    let count = match tag[0] {
        b'R' => 3,
        b'F' => 2,
        b'E' | b'X' => 1,
        t => return Err(io::Error::other(format!("unexpected item {t:#x} from the server"))),
    };
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let mut part = vec![0; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut part)?;
        parts.push(part);
    }
    Ok((tag[0], parts))
}

/// `chinwag backup`: writes a consistent copy of `data_dir` into `dest`
/// (relative to the working directory): from the server running there,
/// else from the database itself. Files 0600, directories 0700. On failure
/// nothing is left of a `dest` this call created.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<u64, String> {
    let dest = std::path::absolute(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    if dest.join("db").exists() {
        return Err(format!("{} already holds a copy", dest.display()));
    }
    let created = !dest.exists();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let result = match UnixStream::connect(socket_path(data_dir)) {
        Ok(stream) => receive(stream, &dest),
        Err(_) => copy_offline(data_dir, &dest),
    };
    if result.is_err() && created {
        let _ = fs::remove_dir_all(&dest);
    }
    result
}

/// Receives the server's stream into `dest`.
fn receive(stream: UnixStream, dest: &Path) -> Result<u64, String> {
    let lost = |e: io::Error| format!("the server's stream broke off: {e}");
    stream.set_read_timeout(Some(STALL)).map_err(lost)?;
    (&stream).write_all(b"backup\n").map_err(lost)?;
    let mut copy = Copy::create(dest).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(&stream);
    loop {
        let (tag, parts) = get(&mut r).map_err(lost)?;
        match (tag, parts.as_slice()) {
            (b'R', [tree, k, v]) => copy.insert(tree, k, v).map_err(|e| e.to_string())?,
            (b'F', [name, bytes]) => write_kept(dest, name, bytes)?,
            (b'E', [n]) => {
                copy.finish().map_err(|e| e.to_string())?;
                return Ok(String::from_utf8_lossy(n).parse().unwrap_or(0));
            }
            (_, [why, ..]) => return Err(String::from_utf8_lossy(why).into_owned()),
            _ => return Err("the server sent nothing usable".into()),
        }
    }
}

/// Copies a data directory no server runs on.
fn copy_offline(data_dir: &Path, dest: &Path) -> Result<u64, String> {
    if !data_dir.join("db").exists() {
        return Err(format!("no database in {}", data_dir.display()));
    }
    let storage = Storage::open(data_dir).map_err(|e| e.to_string())?;
    let n = storage.backup_to(dest).map_err(|e| e.to_string())?;
    for name in KEPT_FILES {
        match fs::read(data_dir.join(name)) {
            Ok(bytes) => write_kept(dest, name.as_bytes(), &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {name}: {e}")),
        }
    }
    Ok(n)
}

/// Writes a kept file (mode 0600 from its creation: it may be the secret).
fn write_kept(dest: &Path, name: &[u8], bytes: &[u8]) -> Result<(), String> {
    let name = String::from_utf8_lossy(name);
    if !KEPT_FILES.contains(&name.as_ref()) {
        return Err(format!("unexpected file `{name}` from the server"));
    }
    let path = dest.join(name.as_ref());
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip() {
        let mut buf = Vec::new();
        put(&mut buf, b'R', &[b"messages", b"k", b""]).unwrap();
        put(&mut buf, b'E', &[b"1"]).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(get(&mut r).unwrap(), (b'R', vec![b"messages".to_vec(), b"k".to_vec(), vec![]]));
        assert_eq!(get(&mut r).unwrap(), (b'E', vec![b"1".to_vec()]));
        assert!(get(&mut r).is_err());
    }
}
