//! The inbox phase of a turn: commands from other threads (and other
//! reactors), each handed to the local index or the rule that finishes it.

use super::Reactor;
use crate::{chat, fanout::Cmd};

/// Commands taken per turn, so a flood of deliveries cannot starve reads.
const INBOX_BUDGET: usize = 4096;

impl Reactor {
    pub(super) fn drain_inbox(&mut self) {
        for _ in 0..INBOX_BUDGET {
            let Some(cmd) = self.inbox.try_recv() else { return };
            match cmd {
                Cmd::ToRoom { room, seq, frame, skip_user } => {
                    let skip = skip_user.as_deref();
                    self.local.deliver_room(&self.node, &mut self.conns, &room, seq, &frame, skip)
                }
                Cmd::ToUser { user, action, frame, skip } => {
                    let frame = frame.as_ref();
                    let (node, conns) = (&self.node, &mut self.conns);
                    self.local.deliver_user(node, conns, &user, &action, frame, skip)
                }
                Cmd::Reply { to, reply } => self.ctx().answer(&to, &reply),
                Cmd::Joined { to, room, user, since, new } => {
                    chat::join::finish(&mut self.ctx(), &to, &room, &user, since, new)
                }
                Cmd::Left { to, room } => chat::leave::finish(&mut self.ctx(), &to, &room),
                Cmd::Shutdown => self.begin_shutdown(),
            }
        }
    }
}
