//! The local control socket (`DATA_DIR/control.sock`, mode 0600) through
//! which `chinwag backup` asks a running server for a consistent copy of
//! its data (sled allows one process per database), and the backup itself.
//!
//! One blocking thread; it never touches connections or reactors.

use crate::storage::Storage;
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixListener, net::UnixStream},
    path::{Path, PathBuf},
    thread,
};

/// The control socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Files of the data directory besides the database that a backup carries.
const KEPT_FILES: [&str; 2] = ["secret", "node_id"];

/// Backs `storage` (living in `data_dir`) up into `dest`.
pub fn backup(storage: &Storage, data_dir: &Path, dest: &Path) -> Result<u64, String> {
    fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let n = storage.backup_to(dest).map_err(|e| e.to_string())?;
    for name in KEPT_FILES {
        let from = data_dir.join(name);
        if from.exists() {
            fs::copy(&from, dest.join(name)).map_err(|e| format!("cannot copy {name}: {e}"))?;
        }
    }
    Ok(n)
}

/// Serves the control socket until the process exits.
pub fn serve(storage: Storage, data_dir: PathBuf) -> std::io::Result<()> {
    let path = socket_path(&data_dir);
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    thread::Builder::new().name("chinwag-control".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let reply = handle(&stream, &storage, &data_dir);
            let _ = (&stream).write_all(reply.as_bytes());
        }
    })?;
    Ok(())
}

fn handle(stream: &UnixStream, storage: &Storage, data_dir: &Path) -> String {
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line).is_err() {
        return "error: unreadable request\n".into();
    }
    match line.trim_end().split_once(' ') {
        Some(("backup", dest)) => match backup(storage, data_dir, Path::new(dest)) {
            Ok(n) => {
                log::info!("backup of {n} records written to {dest}");
                format!("ok {n}\n")
            }
            Err(e) => format!("error: {e}\n"),
        },
        _ => "error: unknown request\n".into(),
    }
}

/// Asks the server running on `data_dir` for a backup into `dest`.
/// `Ok(None)`: no server answers there.
pub fn request_backup(data_dir: &Path, dest: &Path) -> Result<Option<u64>, String> {
    let Ok(mut stream) = UnixStream::connect(socket_path(data_dir)) else { return Ok(None) };
    let dest = dest.canonicalize().unwrap_or_else(|_| dest.to_path_buf());
    writeln!(stream, "backup {}", dest.display()).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(|e| e.to_string())?;
    match reply.trim_end().strip_prefix("ok ") {
        Some(n) => Ok(Some(n.parse().unwrap_or(0))),
        None => Err(reply.trim_end().trim_start_matches("error: ").to_string()),
    }
}
