//! The timer phase of a turn: once a second, upgrade deadlines, pings,
//! idle and token checks, closing lingers, and the metrics gauges.

use super::Reactor;
use crate::{
    conn::Due,
    wire::{self, http},
};
use std::time::Duration;

/// Time between timer sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Reactor {
    pub(super) fn timers(&mut self) {
        if self.now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = self.now;
        let now_s = wire::now_ms() / 1000;
        let mut due = Vec::new();
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            match conn.due(self.now, now_s, self.node.revoked()) {
                Due::Nothing => {}
                d => due.push((id, d)),
            }
        }
        let node = &self.node;
        node.metrics().absorb(&mut self.conns.counts);
        node.metrics().loop_connections(self.id, self.local.sessions());
        for (id, d) in due {
            match d {
                Due::Nothing => {}
                Due::Reap => self.reap.push(id),
                Due::Ping => {
                    self.conns.queue(id, wire::ping_frame());
                }
                Due::Close(code) => self.close(id, Some(code)),
                Due::GiveUp => {
                    let why = "no durable answer in time: the write may not have been accepted";
                    self.conns.respond(id, http::error(503, "unavailable", why), self.now);
                }
            }
        }
    }
}
