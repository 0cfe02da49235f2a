//! The `chinwag` binary: parses the command line and runs `serve` or
//! `token`. Exit status 2 for a bad setting, 1 for a failure to start.

use chinwag::{
    auth::{Claims, Keys},
    config::{self, Cli, Command, ServeFlags},
    control,
    server::Server,
    storage::Storage,
};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(Box::default())) {
        Command::Serve(flags) => serve(*flags),
        Command::Token(flags) => token(flags),
        Command::Backup(flags) => backup(flags),
    }
}

fn serve(flags: ServeFlags) -> ExitCode {
    // Everything the server creates (database files, sockets) is its own
    // alone, with or without systemd's UMask=0077.
    // SAFETY: umask(2) only sets this process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
    let cfg = match config::resolve(flags) {
        Ok(c) => c,
        Err(bad) => {
            eprintln!("chinwag: {bad}");
            return ExitCode::from(2);
        }
    };
    // Block the signals in every thread; one thread waits for them.
    let mut signals = match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chinwag: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let (listen, data_dir, node, threads) =
        (cfg.listen, cfg.data_dir.clone(), cfg.node_id.clone(), cfg.threads);
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e} ({listen})");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "chinwag {} listening on http://{} (node {node}, {threads} loops, data in {}); \
         get a token with: chinwag token USER --link",
        env!("CARGO_PKG_VERSION"),
        server.addr,
        data_dir.display()
    );
    server.notify_systemd();
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: closing connections and flushing storage");
    }
    if !server.shutdown() {
        log::error!("stopped, but the last flush failed");
        return ExitCode::from(1);
    }
    log::info!("stopped");
    ExitCode::SUCCESS
}

fn backup(flags: config::BackupFlags) -> ExitCode {
    let dir = match config::resolve_backup(&flags) {
        Ok(d) => d,
        Err(bad) => {
            eprintln!("chinwag: {bad}");
            return ExitCode::from(2);
        }
    };
    // A running server holds the database: ask it. Otherwise open it here.
    let result = match control::request_backup(&dir, &flags.dest) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Storage::open(&dir)
            .map_err(|e| e.to_string())
            .and_then(|s| control::backup(&s, &dir, &flags.dest)),
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => {
            println!(
                "backup of {} ({n} records) written to {}",
                dir.display(),
                flags.dest.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chinwag: backup failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn token(flags: config::TokenFlags) -> ExitCode {
    let (secret, listen, ttl) = match config::resolve_token(&flags) {
        Ok(v) => v,
        Err(bad) => {
            eprintln!("chinwag: {bad}");
            return ExitCode::from(2);
        }
    };
    let now = chinwag::wire::now_ms() / 1000;
    let exp = now + ttl;
    let jti = hex::encode(rand::random::<[u8; 8]>());
    let claims = Claims {
        sub: flags.user.clone(),
        exp,
        name: None,
        admin: flags.admin,
        jti: Some(jti),
        iat: Some(now),
    };
    match Keys::new(&secret).sign(&claims) {
        Ok(t) if flags.link => println!("http://{listen}/#token={t}"),
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("chinwag: cannot sign: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
