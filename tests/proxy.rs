//! chinwag behind the reverse proxies of `docs/` (`nginx.conf`, `Caddyfile`), each run as the
//! file is written with only the server name, ports and certificate replaced: TLS ends at the
//! proxy, the web page and a WebSocket conversation pass through it, `X-Forwarded-For` counts
//! for `max_conns_per_ip` because `trusted_proxies` names the proxy (and a client cannot forge
//! it), and `/metrics` stays internal.
//!
//! nginx must be installed (tests/run.sh installs it); Caddy is tested where it is installed
//! (tests/run.sh installs it where the distribution has it).

use crate::support::*;
use serde_json::{json, Value};
use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};
use tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A free loopback port (bound, then released for the proxy to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A program on PATH or in the sbin directories.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

/// A proxy process, killed on drop.
struct Proxy {
    child: Child,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers, which
        // would otherwise outlive it.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- proxy log ----\n{log}");
        }
    }
}

/// Waits (at most 30 s) until `port` accepts connections.
fn wait_port(port: u16, proxy: &mut Proxy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = proxy.child.try_wait() {
            panic!(
                "the proxy exited ({st}): {}",
                fs::read_to_string(&proxy.log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the proxy did not listen on {port} within 30 s");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP connection to the proxy from the loopback address `from` (each client its own).
fn tcp_from(from: IpAddr, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from, 0).into()).unwrap();
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s
}

/// TLS to the proxy as `localhost`, trusting exactly `ca` (DER).
fn tls_from(from: IpAddr, port: u16, ca: &[u8]) -> Tls {
    let conn = crate::support::tls_client(ca);
    rustls::StreamOwned::new(conn, tcp_from(from, port))
}

/// `GET path` over TLS: status and the whole response.
fn https_get(port: u16, ca: &[u8], path: &str) -> (u16, String) {
    let mut t = tls_from([127, 0, 0, 1].into(), port, ca);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    t.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = t.read_to_string(&mut resp);
    let status = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, resp)
}

/// A WebSocket through the proxy: `wss://localhost:PORT/ws` from `from`, as a browser page of
/// the proxy's origin would open it; `Err(status)` if the upgrade was refused.
fn wss(
    from: IpAddr,
    port: u16,
    ca: &[u8],
    user: &str,
    extra: &[(&'static str, &str)],
) -> Result<tungstenite::WebSocket<Tls>, u16> {
    let url = format!("wss://localhost:{port}/ws?token={}", token(user));
    let mut req = url.into_client_request().unwrap();
    let origin = format!("https://localhost:{port}");
    req.headers_mut().insert("Origin", HeaderValue::from_str(&origin).unwrap());
    for (k, v) in extra {
        req.headers_mut().insert(*k, HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client(req, tls_from(from, port, ca)) {
        Ok((mut ws, _)) => {
            assert_eq!(ty(&next(&mut ws)), "hello");
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("wss through the proxy: {e:?}"),
    }
}

/// The next JSON frame.
fn next(ws: &mut tungstenite::WebSocket<Tls>) -> Value {
    loop {
        match ws.read().expect("read through the proxy") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed through the proxy: {c:?}"),
            _ => {}
        }
    }
}

/// The next frame of type `t` (others skipped).
fn next_of(ws: &mut tungstenite::WebSocket<Tls>, t: &str) -> Value {
    loop {
        let v = next(ws);
        if ty(&v) == t {
            return v;
        }
    }
}

fn send(ws: &mut tungstenite::WebSocket<Tls>, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// What both proxies must do, on the proxy's TLS port `port`.
fn conversation_page_and_addresses(port: u16, ca: &[u8]) {
    let (status, page) = https_get(port, ca, "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<html") && page.contains("/app.js"), "the web page: {page}");
    let (status, _) = https_get(port, ca, "/metrics");
    assert_eq!(status, 404, "/metrics stays internal");

    // A conversation, each user from their own address.
    let (a_ip, b_ip) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
    let mut alice = wss(a_ip, port, ca, "alice", &[]).expect("alice through the proxy");
    let mut bob = wss(b_ip, port, ca, "bob", &[]).expect("bob, from another address");
    for ws in [&mut alice, &mut bob] {
        send(ws, json!({"type": "join", "room": "lobby"}));
        next_of(ws, "joined");
    }
    send(&mut alice, json!({"type": "send", "room": "lobby", "text": "through the proxy"}));
    assert_eq!(next_of(&mut bob, "message")["text"], "through the proxy");
    assert_eq!(next_of(&mut alice, "ack")["seq"], 1);

    // max_conns_per_ip = 1 counts alice's address, not the proxy's...
    assert_eq!(wss(a_ip, port, ca, "carol", &[]).err(), Some(429), "a second socket from .2");
    // ...and a client cannot pass itself off as another address.
    let forged = [("X-Forwarded-For", "127.0.0.9")];
    let mut dave = wss([127, 0, 0, 4].into(), port, ca, "dave", &forged).expect("dave from .4");
    send(&mut dave, json!({"type": "join", "room": "lobby"}));
    next_of(&mut dave, "joined");
    let forged = [("X-Forwarded-For", "127.0.0.4")];
    assert!(wss([127, 0, 0, 5].into(), port, ca, "erin", &forged).is_ok(), "forged as .4");
}

/// A self-signed certificate for localhost in `dir`: (cert path, key path, DER).
fn cert(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    fs::write(&c, ck.cert.pem()).unwrap();
    fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
    (c, k, ck.cert.der().to_vec())
}

/// chinwag as the proxies' docs configure it: trusting the proxy on loopback.
fn chinwag() -> Server {
    Server::start(&["--trusted-proxies", "127.0.0.1", "--max-conns-per-ip", "1"])
}

fn doc(name: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name)).unwrap()
}

#[test]
fn nginx_config_passes_the_page_and_websockets_with_tls_at_the_proxy() {
    let nginx = find("nginx").expect("nginx must be installed (tests/run.sh installs it)");
    let s = chinwag();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (crt, key, der) = cert(d);
    let (https, http) = (free_port(), free_port());
    let site = doc("nginx.conf")
        .replace("/etc/letsencrypt/live/chat.example.org/fullchain.pem", crt.to_str().unwrap())
        .replace("/etc/letsencrypt/live/chat.example.org/privkey.pem", key.to_str().unwrap())
        .replace("chat.example.org", "localhost")
        .replace("server 127.0.0.1:8080;", &format!("server {};", s.addr))
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{https} ssl;"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{http};"))
        .replace("listen [::]:443 ssl;", "")
        .replace("listen [::]:80;", "");
    fs::write(d.join("chinwag.conf"), site).unwrap();
    // The rest of an nginx.conf, as a distribution's would wrap a site.
    // SAFETY: geteuid(2) has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
    let p = d.display();
    let main = format!(
        "{user}\nworker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {p}/access.log;\n  client_body_temp_path {p}/body;\n  \
         proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  \
         scgi_temp_path {p}/scgi;\n  include {p}/chinwag.conf;\n}}\n"
    );
    fs::write(d.join("nginx.conf"), main).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(d).arg("-c").arg(d.join("nginx.conf")).arg("-e").arg(d.join("error.log"));
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut proxy = Proxy { child, log: d.join("error.log") };
    wait_port(https, &mut proxy);

    conversation_page_and_addresses(https, &der);
    // Plain HTTP only redirects to https.
    let mut t = TcpStream::connect(("127.0.0.1", http)).unwrap();
    t.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = t.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 301") && resp.contains("Location: https://localhost/x"));
}

#[test]
fn caddyfile_passes_the_page_and_websockets_with_tls_at_the_proxy() {
    let Some(caddy) = find("caddy") else {
        eprintln!("skipped: caddy is not installed (tests/run.sh installs it where apt has it)");
        return;
    };
    let s = chinwag();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (crt, key, der) = cert(d);
    let (https, http) = (free_port(), free_port());
    // Global options for a test: no admin endpoint, our ports, no ACME.
    let global = format!(
        "{{\n\tadmin off\n\thttp_port {http}\n\thttps_port {https}\n\tauto_https disable_redirects\n}}\n"
    );
    let site = doc("Caddyfile")
        .replace(
            "chat.example.org {",
            &format!("localhost:{https} {{\n\ttls {} {}", crt.display(), key.display()),
        )
        .replace("reverse_proxy 127.0.0.1:8080", &format!("reverse_proxy {}", s.addr));
    fs::write(d.join("Caddyfile"), global + &site).unwrap();
    let log = d.join("caddy.log");
    let mut cmd = Command::new(caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"]).arg(d.join("Caddyfile"));
    cmd.env("HOME", d).env("XDG_DATA_HOME", d).env("XDG_CONFIG_HOME", d);
    let child = cmd.stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap()).spawn().unwrap();
    let mut proxy = Proxy { child, log };
    wait_port(https, &mut proxy);
    conversation_page_and_addresses(https, &der);
}
