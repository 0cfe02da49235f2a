//! The publisher thread: pipelines accepted room events and other events
//! to Redis. A room event's sender is answered by the subscriber once the
//! event comes back with its seq and is applied here (after the local
//! flush), or here with `unavailable` if Redis refused or failed it.

use super::{
    backoff, connect,
    guard::{self, Outcome, SEQ_SCRIPT},
    SNAPSHOT_EVERY,
};
use crate::{
    cluster::{Event, Link, Outbound, CHANNEL, REVOKED_KEY},
    fanout::{Cmd, Reply},
    node::Node,
};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Connection, ConnectionLike, Value};
use std::{
    thread,
    time::{Duration, Instant},
};

/// Most requests pipelined in one round trip.
const BATCH: usize = 512;

/// Keeps a revocation in the hash (the larger value wins) and publishes it.
/// KEYS[1] the hash; ARGV[1] field, ARGV[2] value, ARGV[3] the event.
const REVOKE_SCRIPT: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if cur < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PUBLISH', 'chinwag:events', ARGV[3])
return 1
"#;

/// The publisher's Redis connection, remade after a failure or when the
/// subscriber reconnected (a newer epoch).
#[derive(Default)]
struct Publisher {
    con: Option<Connection>,
    epoch: u64,
    sha: String,
    attempt: u32,
    last_snapshot: Option<Instant>,
}

/// Runs until the link stops.
pub(super) fn run(link: &Link, rx: &Receiver<Outbound>, node: &Node) {
    let slot = node.alive().slot("redis-pub").unwrap_or(usize::MAX);
    let _guard = node.alive().guard(slot);
    let mut p = Publisher::default();
    while !link.is_stopped() {
        node.alive().beat(slot);
        // (Re)connect without waiting for traffic: while the publisher is
        // down, sends are refused, so none would come to wake it.
        if let Err(e) = p.connect(link) {
            link.set_publisher_up(false, &e.to_string());
            fail_batch(link, node, rx.try_iter().collect());
            thread::sleep(backoff(p.attempt));
            p.attempt += 1;
            continue;
        }
        link.set_publisher_up(true, "");
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(o) => Some(o),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Outbound> = first.into_iter().collect();
        batch.extend(rx.try_iter().take(BATCH));
        if p.last_snapshot.is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY) {
            p.last_snapshot = Some(Instant::now());
            let snapshot = Event::Snapshot { node: link.node().into(), users: node.online_users() };
            batch.extend(link.event_payload(snapshot).map(Outbound::Event));
        }
        if batch.is_empty() {
            continue;
        }
        // The subscriber may have reconnected meanwhile (a restarted Redis):
        // a connection of an older epoch is not trusted with the batch.
        if let Err(e) = p.connect(link) {
            link.set_publisher_up(false, &e.to_string());
            fail_batch(link, node, batch);
            continue;
        }
        p.send(link, node, batch);
    }
}

impl Publisher {
    /// Makes sure there is a connection of the current epoch, with the
    /// script loaded (on every connect: a restarted Redis has forgotten it).
    fn connect(&mut self, link: &Link) -> redis::RedisResult<()> {
        let epoch = link.epoch();
        if self.epoch != epoch {
            self.con = None;
        }
        if self.con.is_none() {
            let mut c = connect(link.client())?;
            self.sha = redis::cmd("SCRIPT").arg("LOAD").arg(SEQ_SCRIPT).query(&mut c)?;
            self.con = Some(c);
            self.epoch = epoch;
            self.attempt = 0;
        }
        Ok(())
    }

    /// Drops the connection after a failure; the next turn reconnects.
    fn fail(&mut self, link: &Link, why: &str) {
        log::debug!("redis publisher: {why}");
        self.con = None;
        link.set_publisher_up(false, why);
    }

    /// One round trip for the batch, then an answer for each message: its
    /// own reply says whether it was taken (a command error fails only its
    /// caller, then the connection is remade: `NOSCRIPT`, OOM, ...).
    fn send(&mut self, link: &Link, node: &Node, batch: Vec<Outbound>) {
        let Some(c) = self.con.as_mut() else { return fail_batch(link, node, batch) };
        let mut pipe = redis::pipe();
        for o in &batch {
            match o {
                Outbound::Send { room, body, floor, guard, .. } => {
                    pipe.add_command(guard::command(&self.sha, room, body, *floor, guard, None));
                }
                Outbound::Event(payload) => {
                    pipe.cmd("PUBLISH").arg(CHANNEL).arg(payload.as_slice());
                }
                Outbound::Revoke { field, value, payload } => {
                    pipe.cmd("EVAL")
                        .arg(REVOKE_SCRIPT)
                        .arg(1)
                        .arg(REVOKED_KEY)
                        .arg(field)
                        .arg(*value)
                        .arg(payload.as_slice());
                }
            }
        }
        let replies = match c.req_packed_commands(&pipe.get_packed_pipeline(), 0, batch.len()) {
            Ok(r) => r,
            Err(e) => {
                // The outcome of each command is unknown; none is answered ok.
                self.fail(link, &e.to_string());
                return fail_batch(link, node, batch);
            }
        };
        let mut replies = replies.into_iter();
        let mut error = None;
        let mut unseeded = Vec::new();
        for o in batch {
            let reply = replies.next();
            match (&o, reply) {
                (Outbound::Send { n, .. }, reply) => match guard::outcome(node, reply) {
                    Outcome::Taken => {}
                    Outcome::Refused(r) => answer(link, node, *n, r),
                    Outcome::NeedSeed => unseeded.push(o),
                    Outcome::Failed(why) => {
                        error = Some(why);
                        fail_batch(link, node, vec![o]);
                    }
                },
                // Events are best effort; a revocation is kept in our
                // storage and pushed again on the next resync.
                (_, Some(Value::ServerError(e))) => error = Some(format!("{e:?}")),
                _ => {}
            }
        }
        if error.is_none() {
            error = unseeded.drain(..).find_map(|o| self.send_seeded(link, node, o).err());
        }
        fail_batch(link, node, unseeded);
        if let Some(why) = error {
            self.fail(link, &why);
        }
    }

    /// Sends a reaction again with this node's reactions of its target,
    /// which Redis had none of (its first since Redis forgot them).
    fn send_seeded(&mut self, link: &Link, node: &Node, o: Outbound) -> Result<(), String> {
        let (Some(c), Outbound::Send { room, body, floor, guard, n }) = (self.con.as_mut(), &o)
        else {
            return Ok(());
        };
        let seed = match guard::seed(node, room, guard) {
            Ok(seed) => seed,
            Err(r) => {
                answer(link, node, *n, r);
                return Ok(());
            }
        };
        let cmd = guard::command(&self.sha, room, body, *floor, guard, Some(&seed));
        let reply = cmd.query::<Value>(c).map_err(|e| e.to_string());
        match reply.map(|v| guard::outcome(node, Some(v))) {
            Ok(Outcome::Taken) => Ok(()),
            Ok(Outcome::Refused(r)) => {
                answer(link, node, *n, r);
                Ok(())
            }
            Ok(Outcome::NeedSeed) => Err(fail_with(link, node, o, "seeded twice".into())),
            Ok(Outcome::Failed(why)) | Err(why) => Err(fail_with(link, node, o, why)),
        }
    }
}

/// Fails one room event; returns why, for the connection's failure.
fn fail_with(link: &Link, node: &Node, o: Outbound, why: String) -> String {
    fail_batch(link, node, vec![o]);
    why
}

/// Answers this node's room event number `n` with `reply`, unless it was
/// answered already.
fn answer(link: &Link, node: &Node, n: u64, reply: Reply) {
    if let Some(to) = link.take_pending(n) {
        node.send_to(to.reactor(), Cmd::Reply { to, reply });
    }
}

/// Answers every room event of a failed batch `unavailable`, unless the
/// subscriber already applied it (events are lost: they are best effort,
/// like typing).
fn fail_batch(link: &Link, node: &Node, batch: Vec<Outbound>) {
    for o in batch {
        if let Outbound::Send { n, .. } = o {
            if let Some(to) = link.take_pending(n) {
                let down = to.down(crate::fanout::CLUSTER_DOWN);
                node.send_to(to.reactor(), Cmd::Reply { to, reply: Reply::Unavailable(down) });
            }
        }
    }
}
