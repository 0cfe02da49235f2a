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

/// A running node.
#[derive(Debug)]
pub struct Server {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    mailboxes: Vec<Mailbox>,
    reactors: Vec<thread::JoinHandle<()>>,
    commit: Option<thread::JoinHandle<bool>>,
    node: Option<Arc<Node>>,
}

/// Why the node could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listen address could not be bound.
    Listen(io::Error),
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
            StartError::Listen(e) => write!(f, "cannot listen: {e}"),
            StartError::Storage(e) => write!(f, "cannot open storage: {e}"),
            StartError::Redis(e) => write!(f, "bad redis URL: {e}"),
            StartError::Other(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl Server {
    /// Opens storage, binds the listeners and starts every thread.
    pub fn start(cfg: Config) -> Result<Server, StartError> {
        let storage = Storage::open(&cfg.data_dir).map_err(|e| StartError::Storage(e.0))?;
        let revoked =
            Revocations::new(storage.revocations().map_err(|e| StartError::Storage(e.0))?);
        crate::control::serve(storage.clone(), cfg.data_dir.clone()).map_err(StartError::Other)?;
        let first = listener(cfg.listen).map_err(StartError::Listen)?;
        let addr = first.local_addr().map_err(StartError::Listen)?;
        let mut listeners = vec![first];
        for _ in 1..cfg.threads {
            listeners.push(listener(addr).map_err(StartError::Listen)?);
        }
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
                .spawn(move || reactor.run())
                .map_err(StartError::Other)?;
            reactors.push(handle);
        }
        Ok(Server { addr, mailboxes, reactors, commit: Some(commit), node: Some(node) })
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
        self.commit.take().is_some_and(|c| c.join().unwrap_or(false))
    }
}
