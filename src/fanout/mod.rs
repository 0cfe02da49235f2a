//! The only cross-thread path into a reactor: [`Mailbox`] (a channel plus
//! the reactor's `mio::Waker`) and [`Cmd`], what travels in it, with the
//! names every thread uses for a connection ([`ConnId`]) and for whoever
//! waits for a durable answer ([`ReplyTo`]).
//!
//! [`Fanout`] addresses rooms and users from any thread through the
//! directory. Who, on a reactor, receives what is `local`'s.

mod cmd;
mod deliver;
mod mailbox;

pub use cmd::{Cmd, ConnId, Reply, ReplyTo, UserAction, CLUSTER_DOWN, STORAGE_DOWN};
pub use deliver::Fanout;
pub use mailbox::{mailbox, Inbox, Mailbox};
