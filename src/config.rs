//! Settings: command-line flags, environment and TOML file, resolved in one
//! place into a validated [`Config`] (flag > env > file > default), plus the
//! secret and node id files kept in the data directory.
//!
//! The only reader of `std::env` and of the config file. A bad value becomes
//! a [`BadSetting`] naming the setting; `main` prints it and exits 2.

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::{
    fs,
    io::Write,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Largest `threads`: reactors are tracked as bits of a `u64`.
pub const MAX_THREADS: usize = 64;

/// The command line of PROTOCOL.md section 1.
#[derive(Debug, Parser)]
#[command(name = "chinwag", version, about = "A real-time chat server in one binary")]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeFlags>),
    /// Print a signed token for USER.
    Token(TokenFlags),
    /// Write a consistent copy of the data to DEST (also while the server runs).
    Backup(BackupFlags),
    /// Write every room's events as JSON Lines, one file per room.
    Export(ExportFlags),
}

/// Flags of `chinwag serve`. Values are strings so that every bad value gets
/// the same one-line refusal naming the setting.
#[derive(Debug, Default, Args)]
pub struct ServeFlags {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Data directory [default: ./chinwag-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Redis URL: join a cluster (`redis://[user:password@]host:port/db`,
    /// `rediss://` for TLS).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// PEM file of the CA that signed a `rediss://` server's certificate
    /// [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,
    /// Event loops [default: number of cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<String>,
    /// Node id [default: random, kept in the data directory].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Accept `?user=` without a token (trusted networks only).
    #[arg(long)]
    pub open: bool,
    /// Frames per second per connection [default: 20].
    #[arg(long, value_name = "N")]
    pub rate: Option<String>,
    /// Token bucket size [default: 40].
    #[arg(long, value_name = "N")]
    pub burst: Option<String>,
    /// Longest text, in characters [default: 4000].
    #[arg(long, value_name = "N")]
    pub max_text: Option<String>,
    /// Largest client frame, in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<String>,
    /// Unsent output that closes a slow consumer [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    pub max_output: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Origins (comma-separated) whose pages may open WebSockets besides
    /// the server's own; `*` allows any [default: same origin only].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Proxies (comma-separated addresses) whose requests count as coming
    /// from the last address of their `X-Forwarded-For` [default: none].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Rooms (DM rooms included) one user may be a member of [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_rooms_per_user: Option<String>,
    /// Rooms (comma-separated) every user joins on their first connection
    /// ever [default: none].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub default_rooms: Option<Vec<String>>,
    /// Live WebSockets this node accepts [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Live WebSockets per client address [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: Option<String>,
    /// Live WebSockets per user on this node [default: 20].
    #[arg(long, value_name = "N")]
    pub max_conns_per_user: Option<String>,
    /// Free bytes on the data directory's file system below which writes
    /// are refused; 0 turns the guard off [default: 104857600].
    #[arg(long, value_name = "BYTES")]
    pub min_free: Option<String>,
}

/// Flags of `chinwag token`.
#[derive(Debug, Args)]
pub struct TokenFlags {
    /// The user id.
    pub user: String,
    /// Grant the admin claim.
    #[arg(long)]
    pub admin: bool,
    /// Display name (the `name` claim).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Lifetime: 90s, 15m, 12h, 30d.
    #[arg(long, default_value = "30d")]
    pub ttl: String,
    /// Data directory holding the secret (as for `serve`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (the server's).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a sign-in link for the web page instead.
    #[arg(long)]
    pub link: bool,
}

/// Flags of `chinwag backup`.
#[derive(Debug, Args)]
pub struct BackupFlags {
    /// Where to write the copy (a new directory; relative to the current one).
    pub dest: PathBuf,
    #[command(flatten)]
    pub server: ServerDir,
}

/// Flags of `chinwag export`.
#[derive(Debug, Args)]
pub struct ExportFlags {
    /// Where to write the files (a new or empty directory; relative to the
    /// current one).
    pub dest: PathBuf,
    #[command(flatten)]
    pub server: ServerDir,
}

/// How `backup` and `export` find the server's data directory.
#[derive(Debug, Args)]
pub struct ServerDir {
    /// Data directory (as for `serve`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (the server's).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ServerDir {
    /// The data directory: the same flag, environment, file and default
    /// as `serve`.
    pub fn resolve(&self) -> Result<PathBuf, BadSetting> {
        let file = read_file(self.config.as_deref())?;
        Ok(data_dir(self.data_dir.clone(), file.data_dir))
    }
}

/// A refused setting: `key` is its TOML name.
#[derive(Debug)]
pub struct BadSetting {
    /// The setting's name.
    pub key: &'static str,
    /// Why it was refused.
    pub why: String,
}

impl std::fmt::Display for BadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad setting `{}`: {}", self.key, self.why)
    }
}

fn bad(key: &'static str, why: impl Into<String>) -> BadSetting {
    BadSetting { key, why: why.into() }
}

/// The config file's keys. Unknown keys are refused (they are typos).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    redis: Option<String>,
    redis_ca: Option<PathBuf>,
    threads: Option<i64>,
    node_id: Option<String>,
    secret: Option<String>,
    open: Option<bool>,
    rate: Option<i64>,
    burst: Option<i64>,
    max_text: Option<i64>,
    max_frame: Option<i64>,
    max_output: Option<i64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    min_free: Option<i64>,
    allowed_origins: Option<Vec<String>>,
    max_rooms_per_user: Option<i64>,
    trusted_proxies: Option<Vec<String>>,
    default_rooms: Option<Vec<String>>,
    max_connections: Option<i64>,
    max_conns_per_ip: Option<i64>,
    max_conns_per_user: Option<i64>,
}

/// The resolved, validated settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Redis URL (cluster mode).
    pub redis: Option<String>,
    /// The CA (PEM) for a `rediss://` server, when not the system's roots.
    pub redis_ca: Option<Vec<u8>>,
    /// Number of event loops.
    pub threads: usize,
    /// This node's id.
    pub node_id: String,
    /// JWT signing secret.
    pub secret: Vec<u8>,
    /// Accept `?user=` without a token.
    pub open: bool,
    /// Frames per second per connection.
    pub rate: u32,
    /// Token bucket size.
    pub burst: u32,
    /// Longest text, in characters.
    pub max_text: usize,
    /// Largest client frame, in bytes.
    pub max_frame: usize,
    /// Unsent output that closes a slow consumer, in bytes.
    pub max_output: usize,
    /// TLS server settings when `tls_cert` and `tls_key` are set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Their certificate, reloaded on SIGHUP.
    pub certs: Option<Arc<CertStore>>,
    /// Free bytes below which writes are refused (0: no guard).
    pub min_free: u64,
    /// Connection caps.
    pub caps: Caps,
    /// Origins allowed besides the server's own (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Rooms one user may be a member of.
    pub max_rooms_per_user: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Rooms every user joins on their first connection ever.
    pub default_rooms: Vec<String>,
}

/// How many live WebSockets a node takes: in all, per client address, per user.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// In all.
    pub connections: u32,
    /// Per client address.
    pub per_ip: u32,
    /// Per user (on this node).
    pub per_user: u32,
}

/// The TLS certificate and key in use, read from their files at start and
/// again on SIGHUP. rustls asks it for the certificate on every handshake,
/// so a reload takes effect for the next connection without touching the
/// server config that every reactor holds.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: parking_lot::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertStore {
    /// Loads both files once more; on any failure the old pair stays.
    pub fn reload(&self) -> Result<(), BadSetting> {
        let fresh = load_pair(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Reads a certificate chain and its key, checking that they match.
fn load_pair(cert: &Path, key: &Path) -> Result<rustls::sign::CertifiedKey, BadSetting> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("tls_cert", format!("cannot read {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(bad("tls_cert", format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("tls_key", format!("cannot read {}: {e}", key.display())))?;
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| bad("tls_key", format!("does not match the certificate: {e}")))
}

/// Loads the certificate chain and key into a rustls server config whose
/// certificate [`CertStore::reload`] can replace.
fn load_tls(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertStore>), BadSetting> {
    let store = Arc::new(CertStore {
        current: parking_lot::RwLock::new(Arc::new(load_pair(cert, key)?)),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), store))
}

fn read_file(path: Option<&Path>) -> Result<FileLayer, BadSetting> {
    let Some(path) = path else { return Ok(FileLayer::default()) };
    let text = fs::read_to_string(path)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // Name the line (and so the key) and the reason, on one line.
        let why = e.message().lines().next().unwrap_or_default().to_string();
        let at = e.span().and_then(|s| {
            let line = text[..s.start.min(text.len())].matches('\n').count();
            text.lines().nth(line).map(|l| format!(" line {} (`{}`)", line + 1, l.trim()))
        });
        bad(
            "config",
            format!("{} does not parse:{}: {why}", path.display(), at.unwrap_or_default()),
        )
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parses a positive integer setting from a flag or file value.
fn positive(
    key: &'static str,
    flag: Option<&str>,
    file: Option<i64>,
    default: u64,
) -> Result<u64, BadSetting> {
    let v = match (flag, file) {
        (Some(s), _) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| bad(key, format!("`{s}` is not a positive integer")))?,
        (None, Some(n)) => {
            u64::try_from(n).map_err(|_| bad(key, format!("{n} is not a positive integer")))?
        }
        (None, None) => default,
    };
    if v == 0 {
        return Err(bad(key, "must be at least 1"));
    }
    Ok(v)
}

fn parse_listen(s: &str) -> Result<SocketAddr, BadSetting> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| bad("listen", format!("`{s}` is not an address like 127.0.0.1:8080")))
}

/// The data directory from flag, env, file or default (no I/O).
fn data_dir(flag: Option<PathBuf>, file: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| env("CHINWAG_DATA_DIR").map(PathBuf::from))
        .or(file)
        .unwrap_or_else(|| PathBuf::from("./chinwag-data"))
}

/// Resolves `chinwag serve` settings, creating the data directory and its
/// secret and node id files if needed.
pub fn resolve(flags: ServeFlags) -> Result<Config, BadSetting> {
    let file = read_file(flags.config.as_deref())?;
    let guards = guards(&flags, &file)?;
    let (rate, burst, max_text, max_frame, max_output) = frame_limits(&flags, &file)?;
    let listen = flags.listen.or_else(|| env("CHINWAG_LISTEN")).or(file.listen);
    let listen = parse_listen(listen.as_deref().unwrap_or("127.0.0.1:8080"))?;
    let redis = flags.redis.or_else(|| env("CHINWAG_REDIS_URL")).or(file.redis);
    let redis_ca = redis_ca(redis.as_deref(), flags.redis_ca.or(file.redis_ca))?;
    let tls = match (flags.tls_cert.or(file.tls_cert), flags.tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => Some(load_tls(&cert, &key)?),
        (None, None) => None,
        (Some(_), None) => return Err(bad("tls_key", "set both tls_cert and tls_key, or neither")),
        (None, Some(_)) => {
            return Err(bad("tls_cert", "set both tls_cert and tls_key, or neither"))
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let threads =
        positive("threads", flags.threads.as_deref(), file.threads, cores.min(MAX_THREADS as u64))?;
    if threads > MAX_THREADS as u64 {
        return Err(bad("threads", format!("at most {MAX_THREADS}")));
    }
    let min_free = bytes("min_free", flags.min_free.as_deref(), file.min_free, 100 << 20)?;
    let data_dir = data_dir(flags.data_dir, file.data_dir);
    prepare_dir(&data_dir)?;
    let node_id = match flags.node_id.or(file.node_id) {
        Some(id) if crate::wire::valid_user(&id) => id,
        Some(id) => {
            return Err(bad("node_id", format!("`{id}` must match [A-Za-z0-9_.-]{{1,64}}")))
        }
        None => kept_value(&data_dir, "node_id", "node_id", || {
            format!("n{}", hex::encode(rand::random::<[u8; 4]>()))
        })?,
    };
    let secret = secret(&data_dir, file.secret)?;
    Ok(Config {
        listen,
        data_dir,
        redis,
        redis_ca,
        threads: threads as usize,
        node_id,
        secret,
        open: flags.open || file.open.unwrap_or(false),
        rate: rate as u32,
        burst: burst as u32,
        max_text: max_text as usize,
        max_frame: max_frame as usize,
        max_output: max_output as usize,
        certs: tls.as_ref().map(|(_, store)| store.clone()),
        tls: tls.map(|(cfg, _)| cfg),
        min_free,
        caps: guards.caps,
        allowed_origins: guards.allowed_origins,
        max_rooms_per_user: guards.max_rooms_per_user,
        trusted_proxies: guards.trusted_proxies,
        default_rooms: guards.default_rooms,
    })
}

/// `rate`, `burst`, `max_text`, `max_frame`, `max_output`, checked together.
fn frame_limits(
    flags: &ServeFlags,
    file: &FileLayer,
) -> Result<(u64, u64, u64, u64, u64), BadSetting> {
    let rate = positive("rate", flags.rate.as_deref(), file.rate, 20)?;
    let burst = positive("burst", flags.burst.as_deref(), file.burst, 40)?;
    let max_text = positive("max_text", flags.max_text.as_deref(), file.max_text, 4000)?;
    let max_frame = positive("max_frame", flags.max_frame.as_deref(), file.max_frame, 65536)?;
    let max_output = positive("max_output", flags.max_output.as_deref(), file.max_output, 4 << 20)?;
    if rate > u32::MAX as u64 || burst > u32::MAX as u64 {
        return Err(bad(if rate > u32::MAX as u64 { "rate" } else { "burst" }, "too large"));
    }
    if !(128..=(16 << 20)).contains(&max_frame) {
        return Err(bad("max_frame", "must be between 128 and 16777216 bytes"));
    }
    if max_output < max_frame {
        return Err(bad("max_output", "must be at least max_frame"));
    }
    if max_text > 1 << 20 {
        return Err(bad("max_text", "must be at most 1048576"));
    }
    Ok((rate, burst, max_text, max_frame, max_output))
}

/// The settings that guard the node against one bad actor.
struct Guards {
    caps: Caps,
    max_rooms_per_user: usize,
    allowed_origins: Vec<String>,
    trusted_proxies: Vec<std::net::IpAddr>,
    default_rooms: Vec<String>,
}

fn guards(flags: &ServeFlags, file: &FileLayer) -> Result<Guards, BadSetting> {
    let cap = |key, flag: &Option<String>, file, default| -> Result<u32, BadSetting> {
        let v = positive(key, flag.as_deref(), file, default)?;
        u32::try_from(v).map_err(|_| bad(key, "too large"))
    };
    let trusted_proxies = flags
        .trusted_proxies
        .clone()
        .or_else(|| file.trusted_proxies.clone())
        .unwrap_or_default()
        .iter()
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| bad("trusted_proxies", format!("`{a}` is not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let default_rooms: Vec<String> = flags
        .default_rooms
        .clone()
        .or_else(|| file.default_rooms.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    if let Some(r) = default_rooms.iter().find(|r| !crate::wire::valid_room(r)) {
        return Err(bad("default_rooms", format!("`{r}` is not a valid room name")));
    }
    let (f, l) = (flags, file);
    Ok(Guards {
        caps: Caps {
            connections: cap("max_connections", &f.max_connections, l.max_connections, 100_000)?,
            per_ip: cap("max_conns_per_ip", &f.max_conns_per_ip, l.max_conns_per_ip, 1000)?,
            per_user: cap("max_conns_per_user", &f.max_conns_per_user, l.max_conns_per_user, 20)?,
        },
        max_rooms_per_user: cap(
            "max_rooms_per_user",
            &f.max_rooms_per_user,
            l.max_rooms_per_user,
            1000,
        )? as usize,
        allowed_origins: f
            .allowed_origins
            .clone()
            .or_else(|| l.allowed_origins.clone())
            .unwrap_or_default(),
        trusted_proxies,
        default_rooms,
    })
}

/// Reads the `redis_ca` file and checks that the Redis URL (if any) makes
/// a client with it.
fn redis_ca(url: Option<&str>, path: Option<PathBuf>) -> Result<Option<Vec<u8>>, BadSetting> {
    let ca = match path {
        Some(path) => Some(
            fs::read(&path)
                .map_err(|e| bad("redis_ca", format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    if let Some(url) = url {
        redis_client(url, ca.as_deref()).map_err(|e| bad("redis", format!("`{url}`: {e}")))?;
    }
    Ok(ca)
}

/// A byte count (0 allowed) from a flag or file value.
fn bytes(
    key: &'static str,
    flag: Option<&str>,
    file: Option<i64>,
    default: u64,
) -> Result<u64, BadSetting> {
    match (flag, file) {
        (Some(s), _) => {
            s.trim().parse::<u64>().map_err(|_| bad(key, format!("`{s}` is not a number of bytes")))
        }
        (None, Some(n)) => {
            u64::try_from(n).map_err(|_| bad(key, format!("{n} is not a number of bytes")))
        }
        (None, None) => Ok(default),
    }
}

/// The Redis client for `url`, trusting `ca` (PEM) for `rediss://` when given.
pub fn redis_client(url: &str, ca: Option<&[u8]>) -> Result<redis::Client, String> {
    match ca {
        None => redis::Client::open(url),
        Some(pem) => {
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.to_vec()) };
            redis::Client::build_with_tls(url, certs)
        }
    }
    .map_err(|e| e.to_string())
}

/// Creates the data directory (mode 0700: its files are nobody else's).
fn prepare_dir(dir: &Path) -> Result<(), BadSetting> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad("data_dir", format!("cannot create {}: {e}", dir.display())))
}

/// The secret: `CHINWAG_SECRET`, else the file's `secret`, else
/// `DATA_DIR/secret` (generated on first use, mode 0600).
/// Shortest secret accepted: anyone who guesses it signs admin tokens.
const MIN_SECRET: usize = 32;

fn secret(dir: &Path, file: Option<String>) -> Result<Vec<u8>, BadSetting> {
    let s = match env("CHINWAG_SECRET").or(file) {
        Some(s) => s,
        None => kept_value(dir, "secret", "secret", || hex::encode(rand::random::<[u8; 32]>()))?,
    };
    strong(s)
}

/// Refuses a secret shorter than [`MIN_SECRET`] bytes.
fn strong(s: String) -> Result<Vec<u8>, BadSetting> {
    if s.len() < MIN_SECRET {
        return Err(bad("secret", format!("must be at least {MIN_SECRET} bytes")));
    }
    Ok(s.into_bytes())
}

/// Reads `dir/name`, or writes a fresh value there (mode 0600) and returns it.
fn kept_value(
    dir: &Path,
    name: &str,
    key: &'static str,
    fresh: impl FnOnce() -> String,
) -> Result<String, BadSetting> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(v) if !v.trim().is_empty() => return Ok(v.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(key, format!("cannot read {}: {e}", path.display()))),
    }
    let value = fresh();
    // Created in one step with mode 0600 (O_EXCL): never readable by others,
    // not even for a moment. An empty file left behind is replaced.
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = || fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        let mut f = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                fs::remove_file(&path)?;
                open()?
            }
            other => other?,
        };
        f.write_all(value.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| bad(key, format!("cannot write {}: {e}", path.display())))?;
    Ok(value)
}

/// What `chinwag token` needs, resolved from the same `--config`,
/// environment and defaults as `serve`.
#[derive(Debug)]
pub struct TokenSettings {
    /// The server's secret.
    pub secret: Vec<u8>,
    /// `SCHEME://HOST:PORT` of the server's web page, for `--link`.
    pub origin: String,
    /// Lifetime, in seconds.
    pub ttl: u64,
    /// The `name` claim.
    pub name: Option<String>,
}

/// Resolves `chinwag token`. It never makes up a secret that no server
/// uses: a data directory that exists without one is refused, because the
/// server there either keeps its secret elsewhere (`CHINWAG_SECRET`, the
/// config file) or has not created it yet, and a fresh one would sign
/// tokens that server refuses.
pub fn resolve_token(flags: &TokenFlags) -> Result<TokenSettings, BadSetting> {
    let file = read_file(flags.config.as_deref())?;
    let ttl = crate::auth::parse_ttl(&flags.ttl)
        .ok_or_else(|| bad("ttl", format!("`{}` is not like 90s, 15m, 12h or 30d", flags.ttl)))?;
    if !crate::wire::valid_user(&flags.user) {
        return Err(bad("user", format!("`{}` must match [A-Za-z0-9_.-]{{1,64}}", flags.user)));
    }
    if let Some(n) = &flags.name {
        if n.chars().count() == 0 || n.chars().count() > 64 || n.chars().any(char::is_control) {
            return Err(bad("name", "must be 1 to 64 characters, none of them control"));
        }
    }
    let listen = env("CHINWAG_LISTEN").or(file.listen.clone());
    let tls = file.tls_cert.is_some() && file.tls_key.is_some();
    let origin = link_origin(listen.as_deref().unwrap_or("127.0.0.1:8080"), tls)?;
    let dir = data_dir(flags.data_dir.clone(), file.data_dir);
    let secret = match env("CHINWAG_SECRET").or(file.secret) {
        Some(s) => strong(s)?,
        None if dir.exists() => match fs::read_to_string(dir.join("secret")) {
            Ok(s) if !s.trim().is_empty() => strong(s.trim().to_string())?,
            _ => {
                return Err(bad(
                    "secret",
                    format!(
                        "{} exists but holds no secret file; start the server once, \
                         or give the server's --config / CHINWAG_SECRET",
                        dir.display()
                    ),
                ))
            }
        },
        None => {
            prepare_dir(&dir)?;
            secret(&dir, None)?
        }
    };
    Ok(TokenSettings { secret, origin, ttl, name: flags.name.clone() })
}

/// `SCHEME://HOST:PORT` for a listen address: an unspecified address
/// (`0.0.0.0`, `[::]`) is reachable from this host as 127.0.0.1.
fn link_origin(listen: &str, tls: bool) -> Result<String, BadSetting> {
    let scheme = if tls { "https" } else { "http" };
    let host = match listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(a) => a.to_string(),
        // A host name: keep it as written, once it resolves.
        Err(_) => parse_listen(listen).map(|_| listen.to_string())?,
    };
    Ok(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_parsing() {
        assert_eq!(positive("rate", Some("5"), Some(7), 20).unwrap(), 5);
        assert_eq!(positive("rate", None, Some(7), 20).unwrap(), 7);
        assert_eq!(positive("rate", None, None, 20).unwrap(), 20);
        assert_eq!(positive("rate", Some("0"), None, 20).unwrap_err().key, "rate");
        assert!(positive("rate", Some("-1"), None, 20).is_err());
        assert!(positive("rate", None, Some(-3), 20).is_err());
    }

    #[test]
    fn link_origins() {
        assert_eq!(link_origin("0.0.0.0:80", false).unwrap(), "http://127.0.0.1:80");
        assert_eq!(link_origin("[::]:443", true).unwrap(), "https://127.0.0.1:443");
        assert_eq!(link_origin("[::1]:8080", false).unwrap(), "http://[::1]:8080");
        assert_eq!(link_origin("127.0.0.2:8080", true).unwrap(), "https://127.0.0.2:8080");
    }

    #[test]
    fn listen_parsing() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn kept_values_persist_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = kept_value(dir.path(), "secret", "secret", || "one".into()).unwrap();
        let b = kept_value(dir.path(), "secret", "secret", || "two".into()).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("one", "one"));
        let mode = fs::metadata(dir.path().join("secret")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
