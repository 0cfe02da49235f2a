//! Startup and teardown of a node: storage → commit thread → bridge →
//! reactors, and back: reactors drain (1001 to everyone) → bridge stops →
//! commit thread's last flush.
//!
//! Holds handles, never a connection.

use crate::{
    alive::Alive,
    auth::Revocations,
    cluster::{Link, Peers},
    config::Config,
    durable::{Committer, Worker},
    fanout::{self, Cmd, Fanout, Mailbox},
    metrics::Metrics,
    node::{Node, Parts},
    reactor::{Reactor, WAKER},
    rooms::Directory,
    search::Search,
    storage::Storage,
};
use mio::{net::TcpListener, Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use std::{io, net::SocketAddr, sync::Arc, thread};

/// Listen backlog per reactor.
const BACKLOG: i32 = 4096;

/// A listening socket with SO_REUSEPORT, so every reactor can have its own.
fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// The watched threads: the reactors by index, then the commit thread,
/// then (cluster only) the bridge's two.
fn watched(threads: usize, cluster: bool) -> Vec<String> {
    let mut names: Vec<String> = (0..threads).map(|i| format!("loop-{i}")).collect();
    names.push("commit".into());
    if cluster {
        names.extend(["redis-pub".into(), "redis-sub".into()]);
    }
    names
}

/// Opens the search index and starts its thread; without an index (it
/// cannot open, or `CHINWAG_SEARCH=off` for a benchmark's baseline) the
/// node runs and `search` answers `unavailable`.
fn open_search(
    cfg: &Config,
    storage: &Storage,
    fanout: &Fanout,
) -> Result<Option<Arc<Search>>, StartError> {
    if std::env::var("CHINWAG_SEARCH").is_ok_and(|v| v == "off") {
        return Ok(None);
    }
    match Search::open(&cfg.data_dir.join("search")) {
        Ok(s) => {
            s.start(storage.clone(), fanout.dir_arc()).map_err(StartError::Other)?;
            Ok(Some(s))
        }
        Err(e) => {
            log::error!("search is off: cannot open its index: {e}");
            Ok(None)
        }
    }
}

/// Binds one listener per reactor on `addr`, refusing an address that any
/// other process holds.
///
/// SO_REUSEPORT, which gives each reactor its own accept queue, also lets
/// a second process of the same user join the group silently: the kernel
/// would then split new connections between two servers. So first a probe
/// socket without SO_REUSEPORT binds the address: the kernel refuses it
/// while any socket (ours or anyone's, with or without SO_REUSEPORT) is
/// listening there. A lock file would not do: its place differs per data
/// directory and per private /tmp, while the port is one per host. The
/// probe leaves a window until our own sockets are bound, which
/// [`others_listening`] closes: if another process joined in that window,
/// both of us see it and refuse.
fn listeners(addr: SocketAddr, n: usize) -> Result<(Vec<TcpListener>, SocketAddr), StartError> {
    let in_use = |e: io::Error| match e.kind() {
        io::ErrorKind::AddrInUse => StartError::InUse(addr),
        _ => StartError::Listen(addr, e),
    };
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| StartError::Listen(addr, e))?;
        // SO_REUSEADDR: TIME_WAIT leftovers of a stopped server are no owner.
        probe.set_reuse_address(true).map_err(|e| StartError::Listen(addr, e))?;
        probe.bind(&addr.into()).map_err(in_use)?;
    }
    let first = listener(addr).map_err(in_use)?;
    let bound = first.local_addr().map_err(|e| StartError::Listen(addr, e))?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listener(bound).map_err(in_use)?);
    }
    if others_listening(bound, &all) {
        return Err(StartError::InUse(bound));
    }
    Ok((all, bound))
}

/// Whether a listening TCP socket on `addr`'s port that is not one of
/// `ours` exists (from `/proc/self/net/tcp{,6}`; false if unreadable).
fn others_listening(addr: SocketAddr, ours: &[TcpListener]) -> bool {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
    let inodes: Vec<u64> = ours
        .iter()
        .filter_map(|l| std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).ok())
        .map(|m| m.ino())
        .collect();
    let port = format!("{:04X}", addr.port());
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .any(|line| {
            // sl local_address rem_address st ... inode: LISTEN is state 0A.
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            let same_port = f.get(1).and_then(|a| a.rsplit(':').next()) == Some(port.as_str());
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            listening
                && same_port
                && inode.is_some_and(|i| i != 0 && !inodes.contains(&i))
                && same_host(f[1], addr)
        })
}

/// Whether a `/proc/net/tcp` local address (hex) can clash with `addr`:
/// the same address, or either side unspecified.
fn same_host(hex: &str, addr: SocketAddr) -> bool {
    let ip = hex.rsplit_once(':').map_or("", |(ip, _)| ip);
    let unspecified = ip.bytes().all(|b| b == b'0');
    let ours = match addr.ip() {
        std::net::IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        std::net::IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    };
    unspecified || addr.ip().is_unspecified() || ip == ours
}

/// A running node.
#[derive(Debug)]
pub struct Server {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    mailboxes: Vec<Mailbox>,
    reactors: Vec<thread::JoinHandle<()>>,
    commit: Option<thread::JoinHandle<bool>>,
    snapshots: Option<crate::snapshot::Snapshots>,
    node: Option<Arc<Node>>,
}

/// Why the node could not start.
#[derive(Debug)]
pub enum StartError {
    /// Another process listens on this address.
    InUse(SocketAddr),
    /// The listen address could not be bound.
    Listen(SocketAddr, io::Error),
    /// The data directory could not be opened.
    Storage(String),
    /// The Redis URL is unusable.
    Redis(String),
    /// Anything else (threads, poll).
    Other(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::InUse(a) => write!(f, "{a} is already in use by another process"),
            StartError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Storage(e) => write!(f, "cannot open storage: {e}"),
            StartError::Redis(e) => write!(f, "bad redis URL: {e}"),
            StartError::Other(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl Server {
    /// Opens storage, binds the listeners and starts every thread.
    pub fn start(cfg: Config) -> Result<Server, StartError> {
        // Connections' timers count from here.
        crate::conn::tick::ms(std::time::Instant::now());
        // The address first: a second server on it is refused before it
        // touches the data directory (and its control socket).
        let (listeners, addr) = listeners(cfg.listen, cfg.threads)?;
        let storage = Storage::open(&cfg.data_dir).map_err(|e| StartError::Storage(e.0))?;
        let revoked =
            Revocations::new(storage.revocations().map_err(|e| StartError::Storage(e.0))?);
        crate::control::serve(storage.clone(), cfg.data_dir.clone()).map_err(StartError::Other)?;
        let mut polls = Vec::new();
        let mut mailboxes = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..cfg.threads {
            let poll = Poll::new().map_err(StartError::Other)?;
            let waker = Waker::new(poll.registry(), WAKER).map_err(StartError::Other)?;
            let (mb, inbox) = fanout::mailbox(waker);
            polls.push(poll);
            mailboxes.push(mb);
            inboxes.push(inbox);
        }
        let metrics = Arc::new(Metrics::new());
        let link = match &cfg.redis {
            Some(url) => {
                let client = crate::config::redis_client(url, cfg.redis_ca.as_deref())
                    .map_err(StartError::Redis)?;
                Some(Link::new(client, &cfg.node_id, &cfg.secret).map_err(StartError::Redis)?)
            }
            None => None,
        };
        let alive = Alive::new(watched(cfg.threads, link.is_some()));
        let fanout = Fanout::new(Arc::new(Directory::new()), mailboxes.clone());
        let commit_slot = cfg.threads;
        let (committer, commit) = Committer::start(Worker {
            storage: storage.clone(),
            min_free: cfg.min_free,
            fanout: fanout.clone(),
            metrics: metrics.clone(),
            alive: alive.clone(),
            slot: commit_slot,
            link: link.as_ref().map(|(l, _)| l.clone()),
        })
        .map_err(StartError::Other)?;
        let peers = Peers::new(link.as_ref().map(|(l, _)| l.clone()));
        let search = open_search(&cfg, &storage, &fanout)?;
        let parts =
            Parts { cfg, storage, committer, fanout, revoked, metrics, peers, alive, search };
        let node = Arc::new(Node::new(parts));
        if let Some((link, rx)) = link {
            crate::bridge::start(link, rx, node.clone()).map_err(StartError::Other)?;
        }
        let mut reactors = Vec::new();
        for (i, ((poll, inbox), l)) in polls.into_iter().zip(inboxes).zip(listeners).enumerate() {
            let reactor =
                Reactor::new(i as u16, poll, l, inbox, node.clone()).map_err(StartError::Other)?;
            let handle = thread::Builder::new()
                .name(format!("chinwag-loop-{i}"))
                .stack_size(8 << 20)
                .spawn(move || {
                    crate::priority::short_slice();
                    reactor.run()
                })
                .map_err(StartError::Other)?;
            reactors.push(handle);
        }
        // Unread counts from memory: every room's tally, read behind the
        // reactors, which count from sled until it is done. Nice 19, not
        // the idle class: it takes a room's lock for a moment, and a thread
        // the idle class starves could hold it while a reactor waits.
        // Each room's directory entry (its seq) is made here too: a user's
        // first `hello` after a start otherwise read the tail of each of
        // their rooms from sled's file, under the directory's shard lock.
        let warm = node.clone();
        thread::Builder::new()
            .name("chinwag-tally".into())
            .spawn(move || {
                crate::priority::low_priority();
                let t = std::time::Instant::now();
                let storage = warm.storage();
                match storage.preload_tallies_then(|room| warm.preload_room(room)) {
                    Ok(n) => log::info!("unread tallies of {n} rooms read in {:?}", t.elapsed()),
                    Err(e) => {
                        log::warn!("unread tallies not all read ({e}): the rest on first use")
                    }
                }
            })
            .map_err(StartError::Other)?;
        let snapshots =
            crate::snapshot::start(node.storage().clone()).map_err(StartError::Other)?;
        Ok(Server {
            addr,
            mailboxes,
            reactors,
            commit: Some(commit),
            snapshots: Some(snapshots),
            node: Some(node),
        })
    }

    /// Tells systemd the node is ready and, if the unit has a watchdog,
    /// pings it for as long as every watched thread keeps turning.
    pub fn notify_systemd(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut usec = 0;
        if !sd_notify::watchdog_enabled(false, &mut usec) {
            return;
        }
        let Some(node) = self.node.clone() else { return };
        let every = std::time::Duration::from_micros(usec / 2);
        let spawned = thread::Builder::new().name("chinwag-watchdog".into()).spawn(move || loop {
            thread::sleep(every);
            // A loop turns at least every 250 ms, the other threads every
            // few seconds: 10 s of silence (or an exit) is a fault.
            if let Some(t) = node.alive().failed() {
                log::error!("thread {t} stopped turning; withholding the watchdog ping");
            } else {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the watchdog thread: {e}");
        }
    }

    /// Closes every connection with 1001, waits for the reactors (at most a
    /// few seconds), stops the bridge, then lets the commit thread do its
    /// last flush. False if that flush failed (or the thread had died).
    pub fn shutdown(mut self) -> bool {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if let Some(node) = &self.node {
            node.alive().stopping();
        }
        for mb in &self.mailboxes {
            mb.send(Cmd::Shutdown);
        }
        for r in self.reactors.drain(..) {
            let _ = r.join();
        }
        if let Some(node) = self.node.take() {
            node.peers().stop();
            // Its last flush makes everything written so far durable.
            node.stop_committer();
            // A stale socket would only make `chinwag backup` try it first.
            let _ = std::fs::remove_file(crate::control::socket_path(&node.cfg().data_dir));
        }
        self.mailboxes.clear();
        let flushed = self.commit.take().is_some_and(|c| c.join().unwrap_or(false));
        // After a failed last flush storage is unhealthy: no snapshot.
        if let Some(s) = self.snapshots.take() {
            s.stop();
        }
        flushed
    }
}
