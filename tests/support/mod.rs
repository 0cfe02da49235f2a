//! Test harness: starts the real `chinwag` binary as a child process and talks to it.
//!
//! * [`Server`] runs `chinwag serve` on `127.0.0.1:0` with its own temporary data dir, waits for
//!   the `listening on http://ADDR` line on stderr, keeps draining stderr into [`Server::logs`],
//!   and kills the child on `Drop`. It can `restart`, `kill9` and `sigterm` the process.
//! * [`Client`] is a blocking tungstenite client over a std `TcpStream` with a read timeout, for
//!   both encodings (JSON text frames, MessagePack binary frames).
//! * [`http_get`] / [`http_request`] speak raw HTTP/1.1 to the server.
//! * [`watchdog`] turns a hung test into a failure: after its limit it ends the test process.
//!
//! Every blocking call is bounded (socket read timeouts, process wait deadlines), so a broken
//! server makes a test fail instead of hanging. Nothing here asserts on elapsed time.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Error as WsError, Message, WebSocket};

/// The secret every test server is started with (`CHINWAG_SECRET`).
pub const SECRET: &str = "chinwag-integration-test-secret-5f0c2a91";
/// How long a single socket read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-server watchdog.
const WATCHDOG: Duration = Duration::from_secs(150);
/// The subprotocol names of section 2.
pub const PROTO_JSON: &str = "chinwag.v1.json";
pub const PROTO_MSGPACK: &str = "chinwag.v1.msgpack";

/// The binary under test: `$CHINWAG_BIN`, else the one cargo built for this package.
pub fn bin() -> PathBuf {
    match std::env::var_os("CHINWAG_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_chinwag")),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

// ---------------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------------

/// Ends the whole test process if it is not dropped within its limit (a hang is a failure).
#[derive(Debug)]
pub struct Watchdog {
    _cancel: mpsc::Sender<()>,
}

/// Starts a watchdog for the current test.
pub fn watchdog(limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = thread::current().name().unwrap_or("<unnamed>").to_string();
    thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("WATCHDOG: test `{name}` still running after {limit:?}; aborting the suite");
            std::process::exit(101);
        }
    });
    Watchdog { _cancel: tx }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `Command` for the binary under test with a clean chinwag environment: no inherited
/// `CHINWAG_*` settings, `RUST_LOG=info`, and the child killed if the test process dies.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CHINWAG_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Output of a short-lived command, bounded by `limit` (the child is killed after it).
#[derive(Debug)]
pub struct Finished {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code, panicking if the process did not exit on its own in time.
    pub fn code(&self) -> i32 {
        let st = self.status.unwrap_or_else(|| panic!("process did not exit in time: {self:?}"));
        st.code().unwrap_or_else(|| panic!("process killed by a signal: {self:?}"))
    }
}

/// Runs `cmd` to completion, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Finished {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chinwag");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Finished { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// Polls `child` until it exits or `limit` passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How a [`Server`] is started.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Extra arguments after `serve` (and after `--listen`/`--data-dir` when those are on).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Set `CHINWAG_SECRET` to [`SECRET`].
    pub secret: bool,
    /// Pass `--listen 127.0.0.1:0`.
    pub listen_flag: bool,
    /// Pass `--data-dir DIR`.
    pub data_dir_flag: bool,
    /// Use this data dir instead of a fresh temporary one.
    pub dir: Option<PathBuf>,
}

impl Opts {
    pub fn new(args: &[&str]) -> Opts {
        Opts {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            secret: true,
            listen_flag: true,
            data_dir_flag: true,
            dir: None,
        }
    }
}

/// A running `chinwag serve` child process.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data dir (kept across restarts).
    pub dir: PathBuf,
    /// Every stderr/stdout line it printed, across restarts.
    pub logs: Arc<Mutex<Vec<String>>>,
    opts: Opts,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    _watchdog: Watchdog,
}

impl Server {
    /// `chinwag serve --listen 127.0.0.1:0 --data-dir TMP ARGS` with `CHINWAG_SECRET` set.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(Opts::new(args))
    }

    /// Like [`Server::start`] with `--open` added.
    pub fn open(args: &[&str]) -> Server {
        let mut o = Opts::new(args);
        o.args.push("--open".into());
        Server::start_with(o)
    }

    /// Starts a server as described by `opts`.
    pub fn start_with(opts: Opts) -> Server {
        Server::try_start_with(opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server, or says why it did not come up.
    pub fn try_start_with(mut opts: Opts) -> Result<Server, String> {
        let watchdog = watchdog(WATCHDOG);
        let (tmp, dir) = match opts.dir.take() {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new().prefix("chinwag-test-").tempdir().unwrap();
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = spawn_server(&opts, &dir, &logs)?;
        Ok(Server { addr, dir, logs, opts, child: Some(child), _tmp: tmp, _watchdog: watchdog })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// `ws://ADDR` prefix.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (at most 15 s) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(15))
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm_nowait(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `sig` to the server process.
    pub fn signal(&mut self, sig: i32) {
        let c = self.child.as_ref().expect("server not running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    /// Waits (at most `limit`) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("server not running");
        match wait_timeout(&mut c, limit) {
            Some(st) => st,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!("server did not exit within {limit:?}; logs:\n{}", self.log_text());
            }
        }
    }

    /// Stops the server if it still runs (SIGTERM) and starts it again on the same data dir
    /// (on a new port).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let _ = self.sigterm();
        }
        let (child, addr) =
            spawn_server(&self.opts, &self.dir, &self.logs).unwrap_or_else(|e| panic!("{e}"));
        self.child = Some(child);
        self.addr = addr;
    }

    /// Whether the process has exited (without reaping information being lost).
    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Connects a client in open mode (`?user=`), JSON encoding.
    pub fn client(&self, user: &str) -> Client {
        Client::connect(self.addr, Auth::Open(user), Enc::Json)
    }

    /// Connects a client with a freshly signed bearer token, JSON encoding.
    pub fn client_token(&self, user: &str) -> Client {
        Client::connect(self.addr, Auth::Bearer(&token(user)), Enc::Json)
    }

    /// `GET /health` parsed.
    pub fn health(&self) -> (u16, Value) {
        let (status, body) = http_get(self.addr, "/health", &[]);
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/health body is not JSON ({e}): {body:?}"));
        (status, v)
    }

    /// Asserts the server still serves: `/health` is 200 and a fresh client can join, send and
    /// receive its own message.
    pub fn assert_healthy(&self, open: bool) {
        let (status, body) = self.health();
        assert_eq!(status, 200, "health after abuse: {body}");
        let user = format!("probe{}", now_ms() % 1_000_000);
        let mut c = if open { self.client(&user) } else { self.client_token(&user) };
        c.join("probe-room");
        let ack = c.send_msg("probe-room", "alive");
        let seq = ack["seq"].as_u64().expect("ack seq");
        let m = c.recv_where(|v| ty(v) == "message" && v["seq"].as_u64() == Some(seq));
        assert_eq!(m["text"], "alive");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!("---- server logs ({}) ----\n{}", self.addr, self.log_text());
        }
    }
}

fn spawn_server(
    opts: &Opts,
    dir: &Path,
    logs: &Arc<Mutex<Vec<String>>>,
) -> Result<(Child, SocketAddr), String> {
    let mut cmd = command();
    cmd.arg("serve");
    if opts.listen_flag {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if opts.data_dir_flag {
        cmd.arg("--data-dir").arg(dir);
    }
    cmd.args(&opts.args);
    if opts.secret {
        cmd.env("CHINWAG_SECRET", SECRET);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot spawn {:?}: {e}", bin()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let err = child.stderr.take().unwrap();
    let out = child.stdout.take().unwrap();
    for (pipe, tx) in [(Box::new(err) as Box<dyn Read + Send>, tx.clone()), (Box::new(out), tx)] {
        let logs = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                logs.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on http://".len()..];
                    let a = rest.split_whitespace().next().unwrap_or("");
                    let a = a.trim_end_matches(['/', ',', ';', ')']);
                    let addr: SocketAddr =
                        a.parse().map_err(|e| format!("bad address {a:?} in {line:?}: {e}"))?;
                    return Ok((child, addr));
                }
            }
            Err(e) => {
                let _ = child.kill();
                let st = child.wait().ok();
                let why = match e {
                    RecvTimeoutError::Timeout => "no `listening on` line within 30 s",
                    RecvTimeoutError::Disconnected => "server exited before listening",
                };
                thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "{why} (status {st:?}); logs:\n{}",
                    logs.lock().unwrap().join("\n")
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Signs `claims` with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign jwt")
}

/// A valid one-hour token for `user`, signed with [`SECRET`].
pub fn token(user: &str) -> String {
    sign(
        &json!({"sub": user, "exp": now_s() + 3600, "jti": format!("t-{user}-{}", now_ms())}),
        SECRET,
    )
}

/// Verifies an HS256 token with `secret` and returns its claims.
pub fn verify(token: &str, secret: &str) -> Value {
    let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .unwrap_or_else(|e| panic!("token {token:?} does not verify: {e}"))
    .claims
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// Which encoding a [`Client`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    Json,
    MsgPack,
}

/// How a [`Client`] authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `?user=ID` (open mode).
    Open(&'a str),
    /// `Authorization: Bearer JWT`.
    Bearer(&'a str),
    /// `?token=JWT`.
    Query(&'a str),
    /// Nothing.
    None,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with this HTTP status (and body).
    Http(u16, String),
    /// Anything else.
    Other(String),
}

/// A blocking WebSocket client with a read timeout.
#[derive(Debug)]
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// The `hello` frame (first frame from the server).
    pub hello: Value,
    /// The `Sec-WebSocket-Protocol` the server chose, if any.
    pub protocol: Option<String>,
    /// Whether the last decoded frame was a binary frame.
    pub last_binary: bool,
    /// Frames read but set aside by [`Client::recv_where`].
    stash: VecDeque<Value>,
    next_id: u64,
    enc: Enc,
}

fn path_for(auth: Auth<'_>) -> String {
    match auth {
        Auth::Open(u) => format!("/ws?user={u}"),
        Auth::Query(t) => format!("/ws?token={t}"),
        Auth::Bearer(_) | Auth::None => "/ws".to_string(),
    }
}

/// Sends `text` to `room` until it is acked; every refusal meanwhile must
/// be `unavailable` (a fault being healed). Panics after `limit` (a bound,
/// not a timing assertion).
pub fn send_until_acked(c: &mut Client, room: &str, text: &str, limit: Duration) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = c.call(json!({"type": "send", "room": room, "text": text}));
        if ty(&r) == "ack" {
            return r;
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(start.elapsed() < limit, "no ack for {text:?} within {limit:?}: {r}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Connects a TCP stream with the suite's read timeout.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, READ_TIMEOUT).expect("tcp connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

impl Client {
    /// Connects and reads `hello`, panicking on failure.
    pub fn connect(addr: SocketAddr, auth: Auth<'_>, enc: Enc) -> Client {
        let offer: &[&str] = match enc {
            Enc::Json => &[PROTO_JSON],
            Enc::MsgPack => &[PROTO_MSGPACK],
        };
        Client::try_connect(addr, auth, offer).unwrap_or_else(|e| panic!("connect failed: {e:?}"))
    }

    /// Connects over an already connected stream (e.g. one with a small receive buffer).
    pub fn connect_stream(stream: TcpStream, addr: SocketAddr, auth: Auth<'_>, enc: Enc) -> Client {
        let offer: &[&str] = match enc {
            Enc::Json => &[PROTO_JSON],
            Enc::MsgPack => &[PROTO_MSGPACK],
        };
        Client::handshake(stream, addr, auth, offer).unwrap_or_else(|e| panic!("connect: {e:?}"))
    }

    /// Connects offering the given subprotocols (none: no header) and reads `hello`.
    pub fn try_connect(
        addr: SocketAddr,
        auth: Auth<'_>,
        offer: &[&str],
    ) -> Result<Client, ConnectError> {
        Client::handshake(tcp(addr), addr, auth, offer)
    }

    fn handshake(
        stream: TcpStream,
        addr: SocketAddr,
        auth: Auth<'_>,
        offer: &[&str],
    ) -> Result<Client, ConnectError> {
        let url = format!("ws://{addr}{}", path_for(auth));
        let mut req = url.into_client_request().map_err(|e| ConnectError::Other(e.to_string()))?;
        if !offer.is_empty() {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&offer.join(", ")).unwrap(),
            );
        }
        if let Auth::Bearer(t) = auth {
            req.headers_mut()
                .insert("Authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        }
        let (ws, resp) = match tungstenite::client::client_with_config(req, stream, None) {
            Ok(x) => x,
            Err(HandshakeError::Failure(WsError::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(ConnectError::Http(resp.status().as_u16(), body));
            }
            Err(e) => return Err(ConnectError::Other(format!("{e:?}"))),
        };
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let enc = if protocol.as_deref() == Some(PROTO_MSGPACK) { Enc::MsgPack } else { Enc::Json };
        let mut c = Client {
            ws,
            hello: Value::Null,
            protocol,
            last_binary: false,
            stash: VecDeque::new(),
            next_id: 0,
            enc,
        };
        let hello = c.recv();
        assert_eq!(ty(&hello), "hello", "first frame must be hello: {hello}");
        c.hello = hello;
        Ok(c)
    }

    /// The encoding frames are sent in.
    pub fn enc(&self) -> Enc {
        self.enc
    }

    /// The user id from `hello`.
    pub fn user(&self) -> String {
        self.hello["user"].as_str().unwrap_or_default().to_string()
    }

    /// Sends a frame in this connection's encoding; errors are returned.
    pub fn try_send_json(&mut self, v: &Value) -> Result<(), WsError> {
        let msg = match self.enc {
            Enc::Json => Message::text(v.to_string()),
            Enc::MsgPack => Message::binary(rmp_serde::to_vec_named(v).expect("msgpack encode")),
        };
        self.ws.send(msg)
    }

    /// Sends a frame in this connection's encoding.
    pub fn send_json(&mut self, v: Value) {
        self.try_send_json(&v).unwrap_or_else(|e| panic!("send {v}: {e}"));
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_string())).expect("send text");
    }

    /// Sends a raw binary frame.
    pub fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).expect("send binary");
    }

    /// Sends a text frame whose payload is arbitrary bytes (possibly invalid UTF-8).
    pub fn send_raw_text_bytes(&mut self, b: Vec<u8>) {
        let f = Frame::message(b, OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(f)).expect("send raw frame");
    }

    /// Reads the next frame from the wire (not the stash), decoding either encoding; skips
    /// ping/pong. Panics on close, error or timeout.
    fn read_wire(&mut self) -> Value {
        self.read_wire_or_timeout()
            .unwrap_or_else(|| panic!("no frame from the server within {READ_TIMEOUT:?}"))
    }

    /// [`Client::read_wire`], with `None` when the socket's read timeout
    /// passes first (tungstenite keeps a partial frame for the next read).
    fn read_wire_or_timeout(&mut self) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    self.last_binary = false;
                    return Some(
                        serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}")),
                    );
                }
                Ok(Message::Binary(b)) => {
                    self.last_binary = true;
                    return Some(
                        rmp_serde::from_slice(&b)
                            .unwrap_or_else(|e| panic!("server sent invalid msgpack ({e}): {b:?}")),
                    );
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(f)) => panic!("unexpected close from server: {f:?}"),
                Err(WsError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame if one comes within `d` (set-aside frames first).
    pub fn recv_within(&mut self, d: Duration) -> Option<Value> {
        if let Some(v) = self.stash.pop_front() {
            return Some(v);
        }
        self.ws.get_ref().set_read_timeout(Some(d)).unwrap();
        let got = self.read_wire_or_timeout();
        self.ws.get_ref().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        got
    }

    /// The next frame (set-aside frames first).
    pub fn recv(&mut self) -> Value {
        if let Some(v) = self.stash.pop_front() {
            return v;
        }
        self.read_wire()
    }

    /// The first frame matching `pred`; frames before it are kept, in order, for later `recv`.
    pub fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).unwrap();
        }
        loop {
            let v = self.read_wire();
            if pred(&v) {
                return v;
            }
            self.stash.push_back(v);
        }
    }

    /// The first frame of type `t` (others are kept for later `recv`).
    pub fn recv_type(&mut self, t: &str) -> Value {
        self.recv_where(|v| ty(v) == t)
    }

    /// Frames up to and including the first that matches `pred`, consuming them all.
    pub fn collect_until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.recv();
            let done = pred(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }

    /// Discards every set-aside frame.
    pub fn clear_stash(&mut self) -> Vec<Value> {
        self.stash.drain(..).collect()
    }

    /// Sends `v` with a fresh string id (unless it has one) and returns the reply carrying that
    /// id; other frames are kept for later.
    pub fn call(&mut self, mut v: Value) -> Value {
        if v.get("id").is_none() {
            self.next_id += 1;
            v["id"] = json!(format!("c{}", self.next_id));
        }
        let id = v["id"].clone();
        self.send_json(v);
        self.recv_where(|r| r.get("id") == Some(&id))
    }

    /// `call` that must answer with an error of `code`.
    pub fn call_err(&mut self, v: Value, code: &str) -> Value {
        let what = v.to_string();
        let r = self.call(v);
        assert_eq!(ty(&r), "error", "expected error {code} for {what}, got {r}");
        assert_eq!(r["code"], code, "wrong error code for {what}: {r}");
        assert!(r["message"].is_string(), "error without message: {r}");
        r
    }

    /// Joins `room` and returns `joined`.
    pub fn join(&mut self, room: &str) -> Value {
        let r = self.call(json!({"type": "join", "room": room}));
        assert_eq!(ty(&r), "joined", "join {room}: {r}");
        r
    }

    /// Sends `text` to `room` and returns the `ack`.
    pub fn send_msg(&mut self, room: &str, text: &str) -> Value {
        let r = self.call(json!({"type": "send", "room": room, "text": text}));
        assert_eq!(ty(&r), "ack", "send to {room}: {r}");
        r
    }

    /// A ping/pong round trip: every frame that arrives before the pong, in order.
    pub fn ping_barrier(&mut self) -> Vec<Value> {
        self.next_id += 1;
        let id = json!(format!("barrier{}", self.next_id));
        self.send_json(json!({"type": "ping", "id": id}));
        let mut got = self.collect_until(|v| ty(v) == "pong" && v["id"] == id);
        got.pop();
        got
    }

    /// Reads until a close frame and returns its code; panics on EOF/reset/timeout first.
    pub fn expect_close(&mut self) -> u16 {
        match self.close_code() {
            Some(c) => c,
            None => panic!("connection ended without a close frame"),
        }
    }

    /// Reads (skipping data frames) until a close frame (its code) or the end of the stream
    /// (`None`). Panics on timeout and on a corrupt stream.
    pub fn close_code(&mut self) -> Option<u16> {
        match self.read_until_close().1 {
            End::Close(c) => Some(c),
            End::Eof(_) => None,
            End::Corrupt(e) => panic!("corrupt WebSocket stream before the close: {e}"),
        }
    }

    /// Reads everything until the connection ends: the data frames (decoded) and how it ended.
    /// Panics on timeout.
    pub fn read_until_close(&mut self) -> (Vec<Value>, End) {
        let mut frames: Vec<Value> = self.stash.drain(..).collect();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => frames.push(
                    serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("bad JSON {e}")),
                ),
                Ok(Message::Binary(b)) => frames
                    .push(rmp_serde::from_slice(&b).unwrap_or_else(|e| panic!("bad msgpack {e}"))),
                Ok(Message::Close(f)) => {
                    return (frames, End::Close(f.map(|f| u16::from(f.code)).unwrap_or(1005)))
                }
                Ok(_) => {}
                Err(WsError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection neither closed nor sent anything for {READ_TIMEOUT:?}")
                }
                Err(e) => return (frames, End::from_error(e)),
            }
        }
    }

    /// Closes cleanly (sends close, waits for the server's close reply).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(WsError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("server did not answer our close within {READ_TIMEOUT:?}")
                }
                Err(_) => return,
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code.
    Close(u16),
    /// EOF or reset without a close frame.
    Eof(String),
    /// Bytes that are not a valid WebSocket stream (e.g. a truncated frame followed by more).
    Corrupt(String),
}

impl End {
    fn from_error(e: WsError) -> End {
        use tungstenite::error::ProtocolError;
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => End::Eof(e.to_string()),
            WsError::Io(ref io) => End::Eof(io.to_string()),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                End::Eof(e.to_string())
            }
            other => End::Corrupt(format!("{other:?}")),
        }
    }
}

/// The `type` field of a frame ("" if none).
pub fn ty(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The `seq` values of the `message` frames in `frames`.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter(|v| ty(v) == "message").map(|v| v["seq"].as_u64().unwrap()).collect()
}

/// The hello's entry for `room`.
pub fn hello_room<'a>(hello: &'a Value, room: &str) -> Option<&'a Value> {
    hello["rooms"].as_array()?.iter().find(|r| r["room"] == room)
}

/// A JSON array of strings as a sorted Vec.
pub fn sorted_strs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_str().expect("string").to_string())
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `GET path` with extra headers: `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = http_request(addr, "GET", path, headers, "");
    (r.status, r.body)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut s = tcp(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection")) {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write http request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("http read {path}: {e}"));
        assert!(n > 0, "connection closed before a full HTTP head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if status != 101 {
        match len {
            Some(n) => {
                while body.len() < n {
                    let k = s.read(&mut chunk).unwrap_or_else(|e| panic!("http body: {e}"));
                    if k == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..k]);
                }
                body.truncate(n);
            }
            None => {
                let _ = s.read_to_end(&mut body);
            }
        }
    }
    HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Does a WebSocket upgrade by hand on `s` (reading the response head byte by byte, so nothing
/// after it is consumed) and returns the response head. Used where the test must see the raw
/// byte stream afterwards.
pub fn raw_upgrade(s: &mut TcpStream, addr: SocketAddr, path: &str) -> String {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {PROTO_JSON}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("write upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).expect("read upgrade response");
        assert_eq!(n, 1, "EOF during the upgrade response: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    head
}

/// Writes one masked client text frame.
pub fn raw_send_text(s: &mut TcpStream, text: &str) {
    let p = text.as_bytes();
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81u8];
    if p.len() < 126 {
        f.push(0x80 | p.len() as u8);
    } else {
        assert!(p.len() <= 0xffff);
        f.push(0x80 | 126);
        f.extend_from_slice(&(p.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).expect("write frame");
}

/// Server frames parsed from a raw byte stream.
#[derive(Debug, Default)]
pub struct RawFrames {
    /// (opcode, payload) of every complete frame, in order.
    pub frames: Vec<(u8, Vec<u8>)>,
    /// If the stream ended inside a frame: (its header, payload bytes present, payload length).
    pub truncated: Option<(Vec<u8>, usize, usize)>,
}

/// Splits an unmasked server byte stream into frames.
pub fn parse_frames(bytes: &[u8]) -> RawFrames {
    let mut out = RawFrames::default();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes.len() - i < 2 {
            out.truncated = Some((bytes[i..].to_vec(), 0, 0));
            return out;
        }
        let op = bytes[i] & 0x0f;
        let masked = bytes[i + 1] & 0x80 != 0;
        let mut len = (bytes[i + 1] & 0x7f) as usize;
        i += 2;
        let ext = match len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if bytes.len() - i < ext + if masked { 4 } else { 0 } {
            out.truncated = Some((bytes[start..].to_vec(), 0, 0));
            return out;
        }
        if ext > 0 {
            len = bytes[i..i + ext].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
            i += ext;
        }
        if masked {
            i += 4;
        }
        if bytes.len() - i < len {
            let present = bytes.len() - i;
            out.truncated = Some((bytes[start..i].to_vec(), present, len));
            return out;
        }
        out.frames.push((op, bytes[i..i + len].to_vec()));
        i += len;
    }
    out
}

/// Headers of a well-formed WebSocket upgrade request.
pub const UPGRADE_HEADERS: &[(&str, &str)] = &[
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// Polls `cond` every 50 ms until it holds; fails naming `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS client connection to `localhost` trusting exactly `cert_der`.
pub fn tls_client(cert_der: &[u8]) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert_der.to_vec())).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap()
}
