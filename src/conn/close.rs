//! Close codes of PROTOCOL.md section 4, mapped in this one place.

use crate::wire;
use bytes::Bytes;

/// Why the server closes a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// 1001: server shutdown or idle.
    Away,
    /// 1002: WebSocket protocol violation.
    Protocol,
    /// 1007: invalid UTF-8.
    Invalid,
    /// 1008: rate-limit abuse.
    Policy,
    /// 1009: frame over `max_frame`.
    TooBig,
    /// 1013: slow consumer.
    SlowConsumer,
    /// 4001: token revoked or expired.
    TokenGone,
}

impl Close {
    /// The close code.
    pub fn code(self) -> u16 {
        match self {
            Close::Away => 1001,
            Close::Protocol => 1002,
            Close::Invalid => 1007,
            Close::Policy => 1008,
            Close::TooBig => 1009,
            Close::SlowConsumer => 1013,
            Close::TokenGone => 4001,
        }
    }

    /// The words sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            Close::Away => "going away",
            Close::Protocol => "protocol error",
            Close::Invalid => "invalid utf-8",
            Close::Policy => "rate limit abuse",
            Close::TooBig => "frame too big",
            Close::SlowConsumer => "slow consumer",
            Close::TokenGone => "token revoked or expired",
        }
    }

    /// The complete close frame.
    pub fn frame(self) -> Bytes {
        wire::close_frame(self.code(), self.reason())
    }
}
