//! The operator surface (sections 1 and 5): bad settings refused with exit status 2 and one
//! stderr line naming the setting; precedence flag > env > config file > default;
//! `chinwag token` (one-line HS256 JWT, `--admin`, `--ttl`, `--link`, the data-dir secret when
//! `CHINWAG_SECRET` is unset); and the fields of `GET /health`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs `chinwag serve ARGS` that must be refused: exit 2, one stderr line naming `setting`
/// (any of `|`-separated alternatives).
fn refused(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.arg("serve");
    if !args.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(dir.path());
    }
    cmd.args(args).env("CHINWAG_SECRET", SECRET);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let f = run_bounded(cmd, Duration::from_secs(15));
    assert!(f.status.is_some(), "{args:?} {env:?}: still running after 15 s instead of refusing");
    assert_eq!(f.code(), 2, "{args:?} {env:?}: exit status; stderr: {}", f.stderr);
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?} {env:?}: exactly one stderr line, got {lines:#?}");
    assert!(
        setting.split('|').any(|name| lines[0].contains(name)),
        "{args:?} {env:?}: the line must name `{setting}`: {lines:?}"
    );
}

#[test]
fn bad_settings_exit_2_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    fs::write(&bad_toml, "listen = [unterminated\n").unwrap();
    let bad_threads = dir.path().join("threads.toml");
    fs::write(&bad_threads, "threads = 0\n").unwrap();
    let bad_type = dir.path().join("type.toml");
    fs::write(&bad_type, "max_frame = \"big\"\n").unwrap();
    let cfg = |p: &Path| p.to_str().unwrap().to_string();
    refused(&["--threads", "0"], &[], "threads");
    refused(&["--listen", "nonsense"], &[], "listen");
    refused(&["--config", "/nonexistent/chinwag.toml"], &[], "config");
    refused(&["--config", &cfg(&bad_toml)], &[], "config");
    refused(&["--config", &cfg(&bad_threads)], &[], "threads");
    // A value of the wrong type: naming the key or the file are both fine.
    refused(&["--config", &cfg(&bad_type)], &[], "max_frame|config");
    refused(&["--max-frame", "lots"], &[], "max");
    refused(&[], &[("CHINWAG_LISTEN", "nonsense")], "listen");
}

#[test]
fn config_precedence_is_flag_then_env_then_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (file_dir, env_dir, flag_dir) =
        (tmp.path().join("file"), tmp.path().join("env"), tmp.path().join("flag"));
    for d in [&file_dir, &env_dir, &flag_dir] {
        fs::create_dir(d).unwrap();
    }
    let cfg = tmp.path().join("chinwag.toml");
    fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = {:?}\nmax_text = 111\nrate = 7\nburst = 9\nopen = true\n",
            file_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let empty = |d: &Path| fs::read_dir(d).unwrap().next().is_none();

    // flag > env > file for data_dir and max_text; env > file for listen; file > default.
    let mut o = Opts::new(&["--config", cfg, "--data-dir", flag_dir.to_str().unwrap()]);
    o.args.extend(["--max-text".into(), "222".into()]);
    o.listen_flag = false;
    o.data_dir_flag = false;
    o.env = vec![
        ("CHINWAG_LISTEN".into(), "127.0.0.1:0".into()),
        ("CHINWAG_DATA_DIR".into(), env_dir.to_str().unwrap().into()),
    ];
    let s = Server::start_with(o);
    assert_ne!(s.addr.port(), 1, "CHINWAG_LISTEN must override the file");
    let mut c = s.client("alice"); // `open = true` from the file
    let l = &c.hello["limits"];
    assert_eq!(l["max_text"], 222, "flag beats file: {l}");
    assert_eq!(l["rate"], 7, "file beats default: {l}");
    assert_eq!(l["burst"], 9, "file beats default: {l}");
    c.join("p");
    c.send_msg("p", "stored somewhere");
    drop(c);
    drop(s);
    assert!(!empty(&flag_dir), "--data-dir must win");
    assert!(empty(&env_dir) && empty(&file_dir), "only the flag's data dir is used");

    // env > file for data_dir; flag > env for listen.
    let mut o = Opts::new(&["--config", cfg, "--listen", "127.0.0.1:0"]);
    o.listen_flag = false;
    o.data_dir_flag = false;
    o.env = vec![
        ("CHINWAG_LISTEN".into(), "127.0.0.1:1".into()),
        ("CHINWAG_DATA_DIR".into(), env_dir.to_str().unwrap().into()),
    ];
    let s = Server::start_with(o);
    assert_ne!(s.addr.port(), 1, "--listen must override CHINWAG_LISTEN");
    let mut c = s.client("bob");
    assert_eq!(c.hello["limits"]["max_text"], 111, "file beats default");
    c.join("p");
    c.send_msg("p", "x");
    drop(c);
    drop(s);
    assert!(!empty(&env_dir), "CHINWAG_DATA_DIR must beat the file");
    assert!(empty(&file_dir), "the file's data dir is not used");
}

fn token_cmd(args: &[&str], secret: Option<&str>) -> Finished {
    let mut cmd = command();
    cmd.arg("token").args(args);
    if let Some(s) = secret {
        cmd.env("CHINWAG_SECRET", s);
    }
    run_bounded(cmd, Duration::from_secs(15))
}

fn one_line(f: &Finished) -> String {
    assert_eq!(f.code(), 0, "token command failed: {}", f.stderr);
    let lines: Vec<&str> = f.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be exactly one line: {:?}", f.stdout);
    lines[0].trim().to_string()
}

#[test]
fn token_command_prints_a_one_line_jwt_the_server_accepts() {
    let s = Server::start(&[]);
    let dir = s.dir.to_str().unwrap().to_string();
    let before = now_s();
    let t = one_line(&token_cmd(&["alice", "--data-dir", &dir], Some(SECRET)));
    let after = now_s();
    assert_eq!(t.split('.').count(), 3, "a JWT: {t}");
    let claims = verify(&t, SECRET);
    assert_eq!(claims["sub"], "alice");
    let exp = claims["exp"].as_u64().expect("exp");
    let d30 = 30 * 86_400;
    assert!(exp >= before + d30 - 5 && exp <= after + d30 + 5, "default ttl 30d: exp {exp}");
    assert!(claims.get("admin").is_none() || claims["admin"] == false, "{claims}");
    let c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
    assert_eq!(c.hello["user"], "alice");
    let c = Client::connect(s.addr, Auth::Query(&t), Enc::MsgPack);
    assert_eq!(c.hello["user"], "alice");

    for (ttl, secs) in [("90s", 90), ("15m", 900), ("12h", 43_200), ("30d", d30)] {
        let before = now_s();
        let t = one_line(&token_cmd(
            &["bob", "--admin", "--ttl", ttl, "--data-dir", &dir],
            Some(SECRET),
        ));
        let after = now_s();
        let claims = verify(&t, SECRET);
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["admin"], true, "--admin: {claims}");
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp >= before + secs - 5 && exp <= after + secs + 5, "--ttl {ttl}: exp {exp}");
        let c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
        assert_eq!(c.hello["user"], "bob");
    }
    let link = one_line(&token_cmd(&["carol", "--link", "--data-dir", &dir], Some(SECRET)));
    assert!(link.starts_with("http://"), "--link prints a URL: {link}");
    let (_, tok) = link.split_once("/#token=").unwrap_or_else(|| panic!("no /#token= in {link}"));
    assert_eq!(verify(tok, SECRET)["sub"], "carol");
    let bad = token_cmd(&["dave", "--ttl", "soon", "--data-dir", &dir], Some(SECRET));
    assert_ne!(bad.code(), 0, "--ttl soon must be refused");
    assert!(bad.stdout.trim().is_empty(), "no token for a bad ttl: {:?}", bad.stdout);
}

#[test]
fn without_chinwag_secret_the_data_dir_secret_is_used() {
    let mut o = Opts::new(&[]);
    o.secret = false;
    let mut s = Server::start_with(o);
    let secret = s.dir.join("secret");
    let meta = fs::metadata(&secret).expect("DATA_DIR/secret is created on first start");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "secret file mode");
    let dir = s.dir.to_str().unwrap().to_string();
    let t = one_line(&token_cmd(&["alice", "--data-dir", &dir], None));
    let c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
    assert_eq!(c.hello["user"], "alice");
    drop(c);
    // A token signed with some other secret is refused.
    match Client::try_connect(s.addr, Auth::Bearer(&token("alice")), &[]) {
        Err(ConnectError::Http(401, _)) => {}
        other => panic!("token with a foreign secret: {other:?}"),
    }
    // The secret is kept across restarts.
    let before = fs::read(&secret).unwrap();
    s.restart();
    assert_eq!(fs::read(&secret).unwrap(), before, "secret must not change on restart");
    let c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
    assert_eq!(c.hello["user"], "alice");
}

/// Polls `/health` until `connections` equals `n` (bounded).
fn wait_connections(s: &Server, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, h) = s.health();
        assert_eq!(status, 200, "{h}");
        if h["connections"] == n || Instant::now() > deadline {
            return h;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_reports_status_node_storage_connections_uptime() {
    let s = Server::open(&[]);
    let (status, body) = http_get(s.addr, "/health", &[]);
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["redis"], "off", "single node: {h}");
    assert_eq!(h["storage"], "ok", "{h}");
    assert!(h["node"].as_str().is_some_and(|n| !n.is_empty()), "{h}");
    assert!(h["uptime_s"].is_u64(), "uptime_s is an integer: {h}");
    assert_eq!(h["connections"], 0, "{h}");
    let a = s.client("alice");
    let b = Client::connect(s.addr, Auth::Open("bob"), Enc::MsgPack);
    let h = wait_connections(&s, 2);
    assert_eq!(h["connections"], 2, "two live WebSockets: {h}");
    assert_eq!(h["node"], a.hello["node"]);
    a.close();
    let h = wait_connections(&s, 1);
    assert_eq!(h["connections"], 1, "{h}");
    drop(b);
    let h = wait_connections(&s, 0);
    assert_eq!(h["connections"], 0, "a dropped socket is no longer counted: {h}");
    assert_eq!(h["status"], "ok");
}

#[test]
fn weak_secrets_are_refused_and_the_data_dir_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    fs::write(&empty, "secret = \"\"\n").unwrap();
    // An empty CHINWAG_SECRET counts as unset: the file's secret is used.
    refused(&["--config", empty.to_str().unwrap()], &[("CHINWAG_SECRET", "")], "secret");
    refused(&[], &[("CHINWAG_SECRET", "31-bytes-is-one-byte-too-short!")], "secret");
    let mut o = Opts::new(&[]);
    o.secret = false;
    o.dir = Some(dir.path().join("fresh").join("data"));
    let s = Server::start_with(o);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.dir), 0o700, "the data directory");
    assert_eq!(mode(&s.dir.join("secret")), 0o600, "the secret file");
    assert!(fs::read_to_string(s.dir.join("secret")).unwrap().len() >= 32);
    // The database's files are the server's alone (umask 077).
    for entry in fs::read_dir(s.dir.join("db")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path) & 0o077, 0, "{} is readable by others", path.display());
    }
}

#[test]
fn token_reads_the_servers_config_and_links_to_its_page() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    fs::write(&cert, ck.cert.pem()).unwrap();
    fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let cfg = tmp.path().join("chinwag.toml");
    fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:0\"\ndata_dir = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            data.to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    // The server makes its secret in the config's data dir on first start.
    let mut o = Opts::new(&["--config", cfg.to_str().unwrap(), "--open"]);
    (o.secret, o.listen_flag, o.data_dir_flag) = (false, false, false);
    let s = Server::start_with(o);
    let secret = fs::read_to_string(data.join("secret")).expect("the server's secret");
    let cfg = cfg.to_str().unwrap();
    let link = one_line(&token_cmd(&["alice", "--config", cfg, "--link"], None));
    let tok = link
        .strip_prefix("https://127.0.0.1:0/#token=")
        .unwrap_or_else(|| panic!("https, 127.0.0.1 for 0.0.0.0, the port: {link}"));
    assert_eq!(verify(tok, secret.trim())["sub"], "alice");
    let t = one_line(&token_cmd(&["bob", "--config", cfg, "--name", "Bob B."], None));
    let claims = verify(&t, secret.trim());
    assert_eq!((claims["sub"].as_str(), claims["name"].as_str()), (Some("bob"), Some("Bob B.")));
    drop(s);
    // CHINWAG_LISTEN counts for the link as it does for `serve`.
    let mut cmd = command();
    cmd.args(["token", "carol", "--config", cfg, "--link"]).env("CHINWAG_LISTEN", "[::]:9");
    let link = one_line(&run_bounded(cmd, Duration::from_secs(15)));
    assert!(link.starts_with("https://127.0.0.1:9/#token="), "{link}");
}

#[test]
fn token_never_invents_a_secret_for_an_existing_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    // An existing data dir without a secret: refused, nothing written.
    let dir = tmp.path().to_str().unwrap();
    let f = token_cmd(&["alice", "--data-dir", dir], None);
    assert_eq!(f.code(), 2, "{f:?}");
    assert!(f.stdout.trim().is_empty(), "no token: {f:?}");
    assert_eq!(f.stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{f:?}");
    assert!(f.stderr.contains("secret"), "{f:?}");
    assert!(!tmp.path().join("secret").exists(), "no secret made up");
    // A data dir that does not exist yet: created (0700) with its secret (0600),
    // which the server then uses.
    let fresh = tmp.path().join("new");
    let t = one_line(&token_cmd(&["alice", "--data-dir", fresh.to_str().unwrap()], None));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&fresh), mode(&fresh.join("secret"))), (0o700, 0o600));
    let mut o = Opts::new(&[]);
    (o.secret, o.dir) = (false, Some(fresh));
    let s = Server::start_with(o);
    let c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
    assert_eq!(c.hello["user"], "alice");
}

#[test]
fn the_startup_hint_is_a_token_command_that_works() {
    let mut o = Opts::new(&[]);
    o.secret = false;
    let s = Server::start_with(o);
    let logs = s.log_text();
    let hint = logs
        .lines()
        .find_map(|l| l.split_once("get a token with: ").map(|(_, h)| h.trim().to_string()))
        .unwrap_or_else(|| panic!("no hint in {logs}"));
    let words: Vec<String> =
        hint.replace("USER", "alice").split_whitespace().map(String::from).collect();
    assert!(words.iter().any(|w| w == "--link"), "{hint}");
    // Run from the server's working directory (the test's), as an operator would.
    let mut cmd = std::process::Command::new(&words[0]);
    cmd.args(&words[1..]).env_remove("CHINWAG_SECRET").env_remove("CHINWAG_DATA_DIR");
    let link = one_line(&run_bounded(cmd, Duration::from_secs(15)));
    let (_, t) = link.split_once("/#token=").unwrap_or_else(|| panic!("{link}"));
    let c = Client::connect(s.addr, Auth::Bearer(t), Enc::Json);
    assert_eq!(c.hello["user"], "alice");
}

#[test]
fn version_flag_prints_the_version() {
    let mut cmd = command();
    cmd.arg("--version");
    let f = run_bounded(cmd, Duration::from_secs(15));
    assert_eq!(f.code(), 0, "{f:?}");
    assert_eq!(f.stdout.trim(), format!("chinwag {}", env!("CARGO_PKG_VERSION")));
}

/// `chinwag serve --listen ADDR` that must be refused because ADDR is taken: exit 1 and one
/// stderr line naming ADDR.
fn refused_in_use(addr: std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"]).arg(dir.path());
    cmd.env("CHINWAG_SECRET", SECRET);
    let f = run_bounded(cmd, Duration::from_secs(15));
    assert!(f.status.is_some(), "a second server on {addr} kept running");
    assert_eq!(f.code(), 1, "{f:?}");
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one stderr line: {lines:#?}");
    assert!(lines[0].contains(&addr.to_string()), "the line names {addr}: {lines:?}");
}

#[test]
fn a_second_server_on_a_used_address_refuses_to_start() {
    let mut s = Server::open(&[]);
    refused_in_use(s.addr);
    // The first server still has every connection.
    s.assert_healthy(true);
    // Any other process holding the address counts too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    refused_in_use(other.local_addr().unwrap());
    // A stopped server's address (with connections just closed) is free again.
    let addr = s.addr;
    let c = s.client("a");
    assert!(s.sigterm().success());
    drop(c);
    let mut o = Opts::new(&["--listen", &addr.to_string()]);
    o.listen_flag = false;
    let again = Server::start_with(o);
    assert_eq!(again.addr, addr);
}
