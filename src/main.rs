//! The `chinwag` binary: parses the command line and runs `serve`,
//! `token`, `backup` or `export`. Exit status 2 for a bad setting, 1 for a failure to start.

use chinwag::{
    auth::{Claims, Keys},
    config::{self, CertStore, Cli, Command, ServeFlags},
    control,
    server::Server,
};
use clap::Parser;
use signal_hook::iterator::Signals;
use std::{path::Path, process::ExitCode};

fn main() -> ExitCode {
    chinwag::logs::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(Box::default())) {
        Command::Serve(flags) => serve(*flags),
        Command::Token(flags) => token(flags),
        Command::Backup(flags) => backup(flags),
        Command::Export(flags) => export(flags),
    }
}

fn serve(flags: ServeFlags) -> ExitCode {
    // Everything the server creates (database files, sockets) is its own
    // alone, with or without systemd's UMask=0077.
    // SAFETY: umask(2) only sets this process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
    // The hint names the settings that located the data directory, so
    // the token it makes is signed with this server's secret.
    let dir_flag =
        flags.data_dir.clone().or_else(|| std::env::var_os("CHINWAG_DATA_DIR").map(Into::into));
    let hint_config = flags.config.clone();
    let cfg = match config::resolve(flags) {
        Ok(c) => c,
        Err(bad) => {
            eprintln!("chinwag: {bad}");
            return ExitCode::from(2);
        }
    };
    // Block the signals in every thread; one thread waits for them.
    let signals = match Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chinwag: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let (data_dir, node, threads) = (cfg.data_dir.clone(), cfg.node_id.clone(), cfg.threads);
    let certs = cfg.certs.clone();
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "chinwag {} listening on http://{} (node {node}, {threads} loops, data in {}); \
         get a token with: {}",
        env!("CARGO_PKG_VERSION"),
        server.addr,
        data_dir.display(),
        token_hint(hint_config.as_deref(), dir_flag.as_ref().map(|_| data_dir.as_path())),
    );
    server.notify_systemd();
    wait_for_stop(signals, certs.as_deref());
    if !server.shutdown() {
        log::error!("stopped, but the last flush failed");
        return ExitCode::from(1);
    }
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the TLS certificate and
/// key meanwhile (and never stops the server, whatever it finds).
fn wait_for_stop(mut signals: Signals, certs: Option<&CertStore>) {
    for sig in signals.forever() {
        if sig != libc::SIGHUP {
            log::info!("signal {sig}: closing connections and flushing storage");
            return;
        }
        match certs.map(CertStore::reload) {
            None => log::info!("SIGHUP: no TLS certificate to reload"),
            Some(Ok(())) => log::info!("SIGHUP: TLS certificate and key reloaded"),
            Some(Err(e)) => log::error!("SIGHUP: {e}; the certificate in use stays"),
        }
    }
}

fn backup(flags: config::BackupFlags) -> ExitCode {
    let dest = &flags.dest;
    private_output("backup", flags.server.resolve(), |dir| {
        let n = control::backup(dir, dest)?;
        Ok(format!("backup of {} ({n} records) written to {}", dir.display(), dest.display()))
    })
}

fn export(flags: config::ExportFlags) -> ExitCode {
    let dest = &flags.dest;
    private_output("export", flags.server.resolve(), |dir| {
        let (rooms, events) = chinwag::export::export(dir, dest)?;
        Ok(format!("{events} events of {rooms} rooms written to {}", dest.display()))
    })
}

/// Runs `backup` or `export` on the resolved data directory, writing only
/// private files (a copy holds the secret, an export the team's history),
/// and reports: 2 for a bad setting, 1 for a failure.
fn private_output(
    what: &str,
    dir: Result<std::path::PathBuf, config::BadSetting>,
    run: impl FnOnce(&Path) -> Result<String, String>,
) -> ExitCode {
    let dir = match dir {
        Ok(d) => d,
        Err(bad) => {
            eprintln!("chinwag: {bad}");
            return ExitCode::from(2);
        }
    };
    // Private from the first byte written.
    // SAFETY: umask(2) only sets this process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
    match run(&dir) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chinwag: {what} failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn token(flags: config::TokenFlags) -> ExitCode {
    let t = match config::resolve_token(&flags) {
        Ok(v) => v,
        Err(bad) => {
            eprintln!("chinwag: {bad}");
            return ExitCode::from(2);
        }
    };
    let now = chinwag::wire::now_ms() / 1000;
    let jti = hex::encode(rand::random::<[u8; 8]>());
    let claims = Claims {
        sub: flags.user.clone(),
        exp: now + t.ttl,
        name: t.name,
        admin: flags.admin,
        jti: Some(jti),
        iat: Some(now),
    };
    match Keys::new(&t.secret).sign(&claims) {
        Ok(token) if flags.link => println!("{}/#token={token}", t.origin),
        Ok(token) => println!("{token}"),
        Err(e) => {
            eprintln!("chinwag: cannot sign: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// The `chinwag token` command line that works for the server being
/// started: this very binary (as `chinwag` when that is what PATH finds,
/// else its path, relative to the working directory when under it, as
/// after `cargo run`), with the `--config` and `--data-dir` that found the
/// server's settings.
fn token_hint(config: Option<&Path>, data_dir: Option<&Path>) -> String {
    let exe = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("chinwag")).find(|p| p.is_file())
    });
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    let program = match (&exe, &on_path) {
        (Some(e), Some(p)) if same(e, p) => "chinwag".to_string(),
        (Some(e), _) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            shell_word(e.strip_prefix(&cwd).unwrap_or(e))
        }
        (None, _) => "chinwag".to_string(),
    };
    let mut hint = format!("{program} token USER --link");
    // Under systemd the config may be a credential only the service reads
    // (LoadCredential): the data directory alone then finds the secret.
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    let config = config.filter(|c| credentials.as_ref().is_none_or(|d| !c.starts_with(d)));
    for (flag, path) in [("--config", config), ("--data-dir", data_dir)] {
        if let Some(p) = path {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            hint.push_str(&format!(" {flag} {}", shell_word(&abs)));
        }
    }
    hint
}

/// A path as one shell word: quoted when it holds anything unusual.
fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
