//! A reactor's connections: a `Slab` with generation-tagged slots (a
//! [`ConnId`] that outlived its connection matches nothing), and the
//! outbox: queueing shared frame bytes, the dirty list flushed once per
//! turn, and the slow-consumer list.
//!
//! The only place that turns a `ConnId` into a slab index or a mio `Token`.

use super::{Conn, Session, Transport};
use crate::{fanout::ConnId, metrics::LocalCounts};
use bytes::Bytes;
use mio::{net::TcpStream, Interest, Registry, Token};
use slab::Slab;
use std::{io, sync::Arc, time::Instant};

/// Most connections the dirty list keeps room for between turns (24 KiB).
const KEEP_DIRTY: usize = 2048;

/// The refusal an HTTP response stands for, by its status and (for 429)
/// its error code. Those decided with more to say are counted where they
/// are decided: an origin's 403, the connection caps' 429 (the node).
fn refusal(status: u16, response: &[u8]) -> Option<&'static str> {
    let has = |code: &str| response.windows(code.len()).any(|w| w == code.as_bytes());
    match status {
        401 => Some("unauthorized"),
        429 if has("\"rate_limited\"") => Some("rate_limited"),
        413 | 431 => Some("too_large"),
        _ => None,
    }
}

/// Logs an HTTP error answer: the route, the status, the error code and
/// its words (a 401's say what was wrong with the token, never its text),
/// and the client's address. Rate-limited: clients choose how many.
fn log_refusal(c: &Conn, route: u8, status: u16, response: &[u8]) {
    let kind = match status {
        401 => "refused login",
        s if s >= 500 => "request failed",
        _ => "request refused",
    };
    let Some(left_out) = crate::logs::allow(kind) else { return };
    let body = response.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &response[i + 4..]);
    let err: serde_json::Value =
        body.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
    let (code, words) =
        (err["error"].as_str().unwrap_or("-"), err["message"].as_str().unwrap_or(""));
    let route = crate::metrics::ROUTES[route as usize % crate::metrics::ROUTES.len()];
    let peer = c.peer_ip().map_or_else(|| "?".to_string(), |ip| ip.to_string());
    let more = crate::logs::left_out(left_out);
    if status >= 500 {
        log::warn!("{kind}: {status} {code} on {route} for {peer}: {words}{more}");
    } else {
        log::info!("{kind}: {status} {code} on {route} from {peer}: {words}{more}");
    }
}

/// One reactor's connections.
#[derive(Debug)]
pub struct ConnTable {
    reactor: u16,
    slab: Slab<Conn>,
    next_gen: u32,
    /// Connections with output to write this turn.
    dirty: Vec<ConnId>,
    /// Connections whose output passed `max_output` during a delivery.
    slow: Vec<ConnId>,
    max_output: usize,
    /// Counts folded into the shared metrics once per turn.
    pub counts: LocalCounts,
}

impl ConnTable {
    /// An empty table for reactor `reactor`.
    pub fn new(reactor: u16, max_output: usize) -> ConnTable {
        ConnTable {
            reactor,
            slab: Slab::new(),
            next_gen: 0,
            dirty: Vec::new(),
            slow: Vec::new(),
            max_output,
            counts: LocalCounts::default(),
        }
    }

    /// Takes an accepted socket: registers it and gives it a slot.
    pub fn insert(
        &mut self,
        registry: &Registry,
        mut sock: TcpStream,
        tls: Option<&Arc<rustls::ServerConfig>>,
        now: Instant,
    ) -> io::Result<ConnId> {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let entry = self.slab.vacant_entry();
        let idx = u32::try_from(entry.key()).map_err(io::Error::other)?;
        let id = ConnId { reactor: self.reactor, idx, gen };
        registry.register(&mut sock, token(id), Interest::READABLE | Interest::WRITABLE)?;
        // On an error the socket is dropped, and with it its registration.
        let sock = Transport::new(sock, tls)?;
        entry.insert(Conn::new(gen, sock, now));
        Ok(id)
    }

    /// Frees a connection (its socket closes).
    pub fn remove(&mut self, registry: &Registry, id: ConnId) {
        if self.get(id).is_some() {
            if let Some(mut conn) = self.slab.try_remove(id.idx as usize) {
                let _ = registry.deregister(conn.sock.tcp());
            }
        }
    }

    /// The connection a poll token names, if it is still that one.
    pub fn by_token(&self, t: Token) -> Option<ConnId> {
        let id = ConnId {
            reactor: self.reactor,
            idx: (t.0 & 0xffff_ffff) as u32,
            gen: (t.0 >> 32) as u32,
        };
        self.get(id).map(|_| id)
    }

    /// The connection, if `id` still names it on this reactor.
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slab.get(id.idx as usize).filter(|c| c.gen == id.gen && id.reactor == self.reactor)
    }

    /// The connection, mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let reactor = self.reactor;
        self.slab.get_mut(id.idx as usize).filter(|c| c.gen == id.gen && id.reactor == reactor)
    }

    /// Its open session.
    pub fn session(&self, id: ConnId) -> Option<&Session> {
        self.get(id).and_then(Conn::session)
    }

    /// Its open session, mutably.
    pub fn session_mut(&mut self, id: ConnId) -> Option<&mut Session> {
        self.get_mut(id).and_then(Conn::session_mut)
    }

    /// Every connection.
    pub fn ids(&self) -> Vec<ConnId> {
        self.slab
            .iter()
            .map(|(i, c)| ConnId { reactor: self.reactor, idx: i as u32, gen: c.gen })
            .collect()
    }

    /// No connection at all.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Puts it on this turn's flush list.
    pub fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.get_mut(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Queues a complete HTTP response and closes after it. Every HTTP
    /// answer but the 101 passes here, whichever rule produced it, so this
    /// is where they are counted: by route and status, and the refusals
    /// by reason.
    pub fn respond(&mut self, id: ConnId, bytes: Bytes, now: Instant) {
        let status = std::str::from_utf8(bytes.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if let Some(c) = self.get_mut(id) {
            let route = c.route();
            if status >= 400 {
                log_refusal(c, route, status, &bytes);
            }
            c.respond(bytes.clone(), now);
            self.counts.http.push((route, status));
            if let Some(reason) = refusal(status, &bytes) {
                self.counts.refusals.push(reason);
            }
            self.mark_dirty(id);
        }
    }

    /// Queues `bytes` for an open connection. False (and the connection is
    /// flagged for a 1013 close) if its unsent output passed the limit.
    pub fn queue(&mut self, id: ConnId, bytes: Bytes) -> bool {
        let max = self.max_output;
        let Some(conn) = self.get_mut(id) else { return false };
        if conn.session().is_none() {
            return false;
        }
        conn.out.push(bytes);
        let dirty = std::mem::replace(&mut conn.dirty, true);
        let over = conn.out.len() > max && {
            // Before calling it slow, give the socket a chance: a healthy
            // reader can take a burst bigger than the limit within one turn.
            let _ = conn.out.write_to(&mut conn.sock);
            conn.out.len() > max
        };
        self.counts.frames_out += 1;
        if !dirty {
            self.dirty.push(id);
        }
        if over {
            self.slow.push(id);
        }
        !over
    }

    /// Flags a connection slow when what tungstenite queued by itself
    /// (pongs, close replies) passed the limit: a ping flood from a client
    /// that never reads is a slow consumer too.
    pub fn check_output(&mut self, id: ConnId) {
        let max = self.max_output;
        let Some(conn) = self.get_mut(id) else { return };
        if conn.out.len() > max {
            let _ = conn.out.write_to(&mut conn.sock);
            if conn.out.len() > max {
                self.slow.push(id);
            }
        }
    }

    /// Takes the connections flagged slow since the last call.
    pub fn take_slow(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.slow)
    }

    /// Writes every dirty connection's output; returns those that failed.
    pub fn flush_dirty(&mut self) -> Vec<ConnId> {
        let mut dead = Vec::new();
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(conn) = self.get_mut(id) else { continue };
            conn.dirty = false;
            if conn.flush().is_err() {
                dead.push(id);
            }
        }
        // The list keeps its memory for the next turn: taken empty, it grew
        // again by doubling on every message (six reallocations for a room
        // of 100). A list grown past KEEP_DIRTY by a burst goes back.
        dirty.clear();
        if dirty.capacity() <= KEEP_DIRTY {
            self.dirty = dirty;
        }
        dead
    }
}

/// The poll token of a connection: generation above, slot below.
fn token(id: ConnId) -> Token {
    Token(((id.gen as usize) << 32) | id.idx as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Poll;

    /// A table of `n` accepted loopback connections, with their peers.
    fn table_of(n: usize) -> (ConnTable, Poll, Vec<ConnId>, Vec<std::net::TcpStream>) {
        let poll = Poll::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut t = ConnTable::new(0, 1 << 20);
        let (mut ids, mut peers) = (vec![], vec![]);
        for _ in 0..n {
            peers.push(std::net::TcpStream::connect(addr).unwrap());
            let (s, _) = listener.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            let id = t.insert(poll.registry(), TcpStream::from_std(s), None, Instant::now());
            ids.push(id.unwrap());
        }
        (t, poll, ids, peers)
    }

    #[test]
    fn the_dirty_list_keeps_its_memory_between_turns_unless_a_burst_grew_it() {
        let (mut t, _poll, ids, _peers) = table_of(100);
        for &id in &ids {
            t.mark_dirty(id);
        }
        assert!(t.flush_dirty().is_empty());
        assert!(t.dirty.is_empty());
        assert!(t.dirty.capacity() >= 100, "kept for the next turn");
        // Each connection's flag went down with the flush: marked twice
        // now, each is listed once.
        for &id in &ids {
            t.mark_dirty(id);
            t.mark_dirty(id);
        }
        assert_eq!(t.dirty.len(), 100);
        t.dirty.reserve(KEEP_DIRTY * 2);
        assert!(t.flush_dirty().is_empty());
        assert_eq!(t.dirty.capacity(), 0, "a list a burst grew goes back");
    }
}
