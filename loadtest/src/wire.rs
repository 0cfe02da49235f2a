//! The chinwag frames the harness writes and reads (PROTOCOL.md sections 2-4).
//!
//! Owns: encoding `join`, `leave` and `send` in JSON or MessagePack straight
//! into a reusable buffer, the timestamped message text, and the hot-path
//! reader that pulls only `type`, `room`, `seq` and the send timestamp out of
//! a `message` frame without allocating. Rare frames (hello, joined, ack,
//! error) are decoded fully into a `serde_json::Value` by [`decode`].

use serde_json::Value;

/// The encoding the harness asks for at the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// `chinwag.v1.json`, text frames.
    Json,
    /// `chinwag.v1.msgpack`, binary frames of named maps.
    Msgpack,
}

impl Encoding {
    /// The `Sec-WebSocket-Protocol` offered (and expected back).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "chinwag.v1.json",
            Encoding::Msgpack => "chinwag.v1.msgpack",
        }
    }

    /// The WebSocket opcode of a data frame in this encoding.
    pub fn opcode(self) -> u8 {
        match self {
            Encoding::Json => crate::ws::OP_TEXT,
            Encoding::Msgpack => crate::ws::OP_BINARY,
        }
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }
}

/// Appends `{"type":"join","room":ROOM}`.
pub fn join(enc: Encoding, room: &str, out: &mut Vec<u8>) {
    room_frame(enc, "join", room, out)
}

/// Appends `{"type":"leave","room":ROOM}`.
pub fn leave(enc: Encoding, room: &str, out: &mut Vec<u8>) {
    room_frame(enc, "leave", room, out)
}

fn room_frame(enc: Encoding, kind: &str, room: &str, out: &mut Vec<u8>) {
    match enc {
        Encoding::Json => {
            // Room names are validated [a-z0-9_.-] (ours) or came from the
            // server's own JSON, so they need no escaping; serde_json makes
            // sure anyway for names we did not choose.
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(kind.as_bytes());
            out.extend_from_slice(b"\",\"room\":");
            out.extend_from_slice(Value::from(room).to_string().as_bytes());
            out.push(b'}');
        }
        Encoding::Msgpack => {
            out.push(0x82);
            mp_str(out, b"type");
            mp_str(out, kind.as_bytes());
            mp_str(out, b"room");
            mp_str(out, room.as_bytes());
        }
    }
}

/// Appends `{"type":"send","id":ID,"room":ROOM,"text":TEXT}`. `text` must be
/// plain ASCII without quotes or backslashes (see [`text`]).
pub fn send(enc: Encoding, id: u64, room: &str, text: &[u8], out: &mut Vec<u8>) {
    match enc {
        Encoding::Json => {
            out.extend_from_slice(b"{\"type\":\"send\",\"id\":");
            push_u64(out, id);
            out.extend_from_slice(b",\"room\":\"");
            out.extend_from_slice(room.as_bytes());
            out.extend_from_slice(b"\",\"text\":\"");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\"}");
        }
        Encoding::Msgpack => {
            out.push(0x84);
            mp_str(out, b"type");
            mp_str(out, b"send");
            mp_str(out, b"id");
            out.push(0xcf);
            out.extend_from_slice(&id.to_be_bytes());
            mp_str(out, b"room");
            mp_str(out, room.as_bytes());
            mp_str(out, b"text");
            mp_str(out, text);
        }
    }
}

/// Writes the message text: `t=<nanos since harness start>;` padded with `x`
/// to `size` bytes (never shorter than the stamp itself).
pub fn text(t: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"t=");
    push_u64(out, t);
    out.push(b';');
    if out.len() < size {
        out.resize(size, b'x');
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn mp_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

/// What the hot path pulled out of a server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A chat `message`: its room, seq and the send stamp of our text
    /// (`None` when the text is not one of ours).
    Message { room: &'a [u8], seq: u64, stamp: Option<u64> },
    /// Any other frame, by its `type`; decode it with [`decode`] if needed.
    Other(&'a [u8]),
}

/// Reads just enough of a server frame's payload to classify it.
pub fn peek(enc: Encoding, payload: &[u8]) -> Result<Frame<'_>, String> {
    match enc {
        Encoding::Json => peek_json(payload),
        Encoding::Msgpack => peek_msgpack(payload),
    }
}

/// serde_json writes the internally tagged `type` first and the message's
/// fields in declaration order; a raw `"` only ends a string in JSON, so a
/// key pattern like `"seq":` cannot match inside another field's value.
fn peek_json(p: &[u8]) -> Result<Frame<'_>, String> {
    const TAG: &[u8] = b"{\"type\":\"";
    let Some(rest) = p.strip_prefix(TAG) else {
        return Err("JSON frame does not start with its type".into());
    };
    let end = rest.iter().position(|&b| b == b'"').ok_or("unterminated type")?;
    let kind = &rest[..end];
    if kind != b"message" {
        return Ok(Frame::Other(kind));
    }
    let room = json_after(p, b"\"room\":\"").ok_or("message without room")?;
    let room = &room[..room.iter().position(|&b| b == b'"').ok_or("unterminated room")?];
    let seq = json_after(p, b"\"seq\":").and_then(|s| digits(s).map(|(n, _)| n));
    let seq = seq.ok_or("message without a numeric seq")?;
    let stamp = json_after(p, b"\"text\":\"t=").and_then(stamp_digits);
    Ok(Frame::Message { room, seq, stamp })
}

fn json_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    crate::ws::find(hay, key).map(|at| &hay[at + key.len()..])
}

/// The decimal number at the start of `s`, and how many bytes it took.
fn digits(s: &[u8]) -> Option<(u64, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    Some((s[..n].iter().fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0')), n))
}

/// Our stamp is digits terminated by `;`.
fn stamp_digits(s: &[u8]) -> Option<u64> {
    let (n, len) = digits(s)?;
    (s.get(len) == Some(&b';')).then_some(n)
}

/// A walk over the top-level map, skipping values we do not need.
fn peek_msgpack(p: &[u8]) -> Result<Frame<'_>, String> {
    let mut r = MpReader { buf: p, pos: 0 };
    let entries = r.map_len()?;
    let (mut kind, mut room, mut seq, mut stamp) = (None, None, None, None);
    for _ in 0..entries {
        let key = r.str()?;
        match key {
            b"type" => kind = Some(r.str()?),
            b"room" => room = Some(r.str()?),
            b"seq" => seq = Some(r.uint()?),
            b"text" => stamp = r.str()?.strip_prefix(b"t=").and_then(stamp_digits),
            _ => r.skip(0)?,
        }
        // The type comes first; stop early for frames the hot path ignores.
        if let Some(k) = kind {
            if k != b"message" {
                return Ok(Frame::Other(k));
            }
        }
    }
    match (kind, room, seq) {
        (Some(b"message"), Some(room), Some(seq)) => Ok(Frame::Message { room, seq, stamp }),
        (Some(k), _, _) if k != b"message" => Ok(Frame::Other(k)),
        _ => Err("MessagePack frame without type, room or seq".into()),
    }
}

struct MpReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Nesting deeper than this in a server frame is refused, not recursed into.
const MAX_DEPTH: u32 = 32;

impl<'a> MpReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or("truncated MessagePack")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn map_len(&mut self) -> Result<usize, String> {
        match self.byte()? {
            b @ 0x80..=0x8f => Ok(usize::from(b & 0x0f)),
            0xde => Ok(self.be(2)? as usize),
            0xdf => Ok(self.be(4)? as usize),
            b => Err(format!("MessagePack frame is not a map (0x{b:02x})")),
        }
    }

    fn str(&mut self) -> Result<&'a [u8], String> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            b => return Err(format!("expected a MessagePack string (0x{b:02x})")),
        };
        self.take(n)
    }

    fn uint(&mut self) -> Result<u64, String> {
        match self.byte()? {
            b @ 0x00..=0x7f => Ok(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            b => Err(format!("expected a MessagePack unsigned integer (0x{b:02x})")),
        }
    }

    fn skip(&mut self, depth: u32) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("MessagePack nested too deep".into());
        }
        let b = self.byte()?;
        let (bytes, items) = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(b & 0x0f)),
            0x90..=0x9f => (0, usize::from(b & 0x0f)),
            0xa0..=0xbf => (usize::from(b & 0x1f), 0),
            0xc4 | 0xd9 => (self.be(1)? as usize, 0),
            0xc5 | 0xda => (self.be(2)? as usize, 0),
            0xc6 | 0xdb => (self.be(4)? as usize, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xc7 => (self.be(1)? as usize + 1, 0),
            0xc8 => (self.be(2)? as usize + 1, 0),
            0xc9 => (self.be(4)? as usize + 1, 0),
            0xdc => (0, self.be(2)? as usize),
            0xdd => (0, self.be(4)? as usize),
            0xde => (0, 2 * self.be(2)? as usize),
            0xdf => (0, 2 * self.be(4)? as usize),
            0xc1 => return Err("MessagePack byte 0xc1 is never used".into()),
        };
        self.take(bytes)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Ok(())
    }
}

/// Decodes a whole (rare) server frame into a JSON value.
pub fn decode(enc: Encoding, payload: &[u8]) -> Result<Value, String> {
    match enc {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| format!("bad JSON: {e}")),
        Encoding::Msgpack => {
            rmp_serde::from_slice(payload).map_err(|e| format!("bad MessagePack: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_message_is_peeked() {
        let p = br#"{"type":"message","room":"r3","seq":121,"ts":1732250000123,"from":"u1","text":"t=987654;xxxx"}"#;
        assert_eq!(
            peek(Encoding::Json, p),
            Ok(Frame::Message { room: b"r3", seq: 121, stamp: Some(987654) })
        );
        let p = br#"{"type":"message","room":"r3","seq":1,"ts":1,"from":"u1","text":"hello"}"#;
        assert_eq!(
            peek(Encoding::Json, p),
            Ok(Frame::Message { room: b"r3", seq: 1, stamp: None })
        );
        let p = br#"{"type":"presence","room":"r3","user":"u1","state":"online"}"#;
        assert_eq!(peek(Encoding::Json, p), Ok(Frame::Other(b"presence")));
        assert!(peek(Encoding::Json, b"[1]").is_err());
    }

    #[test]
    fn msgpack_message_is_peeked() {
        let v = serde_json::json!({"type":"message","room":"r3","seq":70000,"ts":1732250000123u64,
            "from":"u1","text":"t=42;xx"});
        let p = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(
            peek(Encoding::Msgpack, &p),
            Ok(Frame::Message { room: b"r3", seq: 70000, stamp: Some(42) })
        );
        let v = serde_json::json!({"type":"joined","room":"r3","seq":5,"members":["a","b"],
            "online":[],"history":[{"room":"r3","seq":1,"ts":2,"from":"a","text":"x"}],"more":false});
        let p = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(peek(Encoding::Msgpack, &p), Ok(Frame::Other(b"joined")));
        assert_eq!(decode(Encoding::Msgpack, &p).unwrap()["seq"], 5);
        assert!(peek(Encoding::Msgpack, &p[..3]).is_err());
    }

    #[test]
    fn client_frames_decode_as_the_server_would() {
        let mut t = Vec::new();
        text(1234, 40, &mut t);
        assert_eq!(t.len(), 40);
        assert!(t.starts_with(b"t=1234;x"));
        text(1234, 1, &mut t);
        assert_eq!(t, b"t=1234;");
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let mut out = Vec::new();
            text(u64::MAX, 300, &mut t);
            send(enc, u64::MAX, "r7", &t, &mut out);
            let v = decode(enc, &out).unwrap();
            assert_eq!(v["type"], "send");
            assert_eq!(v["id"], u64::MAX);
            assert_eq!(v["room"], "r7");
            assert_eq!(v["text"].as_str().unwrap().len(), 300);
            out.clear();
            join(enc, "r7", &mut out);
            assert_eq!(decode(enc, &out).unwrap(), serde_json::json!({"type":"join","room":"r7"}));
            out.clear();
            leave(enc, "a\"b", &mut out);
            assert_eq!(decode(enc, &out).unwrap()["room"], "a\"b");
        }
    }
}
