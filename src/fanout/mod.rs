//! The only cross-thread path into a reactor: [`Mailbox`] (a channel plus
//! the reactor's `mio::Waker`) and [`Cmd`], what travels in it, with the
//! names every thread uses for a connection ([`ConnId`]) and for whoever
//! waits for a durable answer ([`ReplyTo`]).
//!
//! Owns transport only: who receives what is `node`'s and `local`'s.

mod cmd;
mod mailbox;

pub use cmd::{Cmd, ConnId, Reply, ReplyTo, UserAction, STORAGE_DOWN};
pub use mailbox::{mailbox, Inbox, Mailbox};
