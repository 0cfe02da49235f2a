//! The chinwag frames the harness writes and reads (PROTOCOL.md sections 2-4).
//!
//! Owns: the choice of dialect ([`Proto`]), encoding `join`, `leave`,
//! `send` (with `reply_to`), `dm`, `edit`, `react`, `history` and `search`
//! in JSON or MessagePack straight into a reusable buffer, the timestamped
//! message text, and the hot-path reader that pulls only `type`, `room`,
//! `seq` and the send timestamp out of a room event frame (`message`,
//! `edit`, `delete`, `reaction`; PROTOCOL.md section 3.1) and `id`, `seq`
//! out of an `ack`, without allocating. Rare frames (hello, joined, history,
//! search_results, error) are decoded fully into a `serde_json::Value` by
//! [`decode`].

use serde_json::Value;

/// The dialect the harness speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// chinwag's own protocol, in one of its encodings.
    Chinwag(Encoding),
    /// Socket.IO v4 over WebSocket (see `sio`).
    SocketIo,
}

impl Proto {
    /// Name for reports (`encoding`): json, msgpack or socketio.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Chinwag(e) => e.name(),
            Proto::SocketIo => "socketio",
        }
    }

    /// Name for people (plot titles).
    pub fn label(self) -> String {
        match self {
            Proto::Chinwag(e) => format!("chinwag ({})", e.name()),
            Proto::SocketIo => "Socket.IO".into(),
        }
    }
}

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

/// Where a `history` request starts (PROTOCOL.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The latest messages.
    Latest,
    /// The messages just below this seq.
    Before(u64),
    /// The messages just above this seq.
    After(u64),
}

/// Appends `{"type":"join","room":ROOM}`, with `"since":N` if given.
pub fn join(enc: Encoding, room: &str, since: Option<u64>, out: &mut Vec<u8>) {
    let mut f = Fields::start(enc, out, 2 + usize::from(since.is_some()));
    f.str("type", "join");
    f.str("room", room);
    if let Some(n) = since {
        f.uint("since", n);
    }
    f.end();
}

/// Appends `{"type":"leave","room":ROOM}`.
pub fn leave(enc: Encoding, room: &str, out: &mut Vec<u8>) {
    let mut f = Fields::start(enc, out, 2);
    f.str("type", "leave");
    f.str("room", room);
    f.end();
}

/// Appends `{"type":"send","id":ID,"room":ROOM,"text":TEXT}`.
pub fn send(enc: Encoding, id: u64, room: &str, text: &[u8], out: &mut Vec<u8>) {
    id_text_frame(enc, "send", id, ("room", room), text, out)
}

/// Appends `{"type":"send","id":ID,"room":ROOM,"text":TEXT,"reply_to":ROOT}`:
/// a thread reply (`text` as for [`send`]).
pub fn reply(enc: Encoding, id: u64, room: &str, text: &[u8], root: u64, out: &mut Vec<u8>) {
    let mut f = Fields::start(enc, out, 5);
    f.str("type", "send");
    f.uint("id", id);
    f.str("room", room);
    f.raw_str("text", text);
    f.uint("reply_to", root);
    f.end();
}

/// Appends `{"type":"edit","id":ID,"room":ROOM,"seq":SEQ,"text":TEXT}`
/// (`text` as for [`send`]).
pub fn edit(enc: Encoding, id: u64, room: &str, seq: u64, text: &[u8], out: &mut Vec<u8>) {
    let mut f = Fields::start(enc, out, 5);
    f.str("type", "edit");
    f.uint("id", id);
    f.str("room", room);
    f.uint("seq", seq);
    f.raw_str("text", text);
    f.end();
}

/// Appends `{"type":"react","id":ID,"room":ROOM,"seq":SEQ,"emoji":E,"on":B}`.
pub fn react(
    enc: Encoding,
    id: u64,
    room: &str,
    seq: u64,
    emoji: &str,
    on: bool,
    out: &mut Vec<u8>,
) {
    let mut f = Fields::start(enc, out, 6);
    f.str("type", "react");
    f.uint("id", id);
    f.str("room", room);
    f.uint("seq", seq);
    f.str("emoji", emoji);
    f.bool("on", on);
    f.end();
}

/// Appends `{"type":"search","id":ID,"query":Q,["room":R,]["cursor":C,]"limit":L}`.
pub fn search(
    enc: Encoding,
    id: u64,
    query: &str,
    (room, cursor): (Option<&str>, Option<&str>),
    limit: u64,
    out: &mut Vec<u8>,
) {
    let n = 4 + usize::from(room.is_some()) + usize::from(cursor.is_some());
    let mut f = Fields::start(enc, out, n);
    f.str("type", "search");
    f.uint("id", id);
    f.str("query", query);
    if let Some(r) = room {
        f.str("room", r);
    }
    if let Some(c) = cursor {
        f.str("cursor", c);
    }
    f.uint("limit", limit);
    f.end();
}

/// Appends `{"type":"dm","id":ID,"to":USER,"text":TEXT}`.
pub fn dm(enc: Encoding, id: u64, to: &str, text: &[u8], out: &mut Vec<u8>) {
    id_text_frame(enc, "dm", id, ("to", to), text, out)
}

/// `text` must be plain ASCII without quotes or backslashes (see [`text`]):
/// it is copied verbatim, never escaped, on the hot path.
fn id_text_frame(
    enc: Encoding,
    kind: &str,
    id: u64,
    (key, value): (&str, &str),
    text: &[u8],
    out: &mut Vec<u8>,
) {
    let mut f = Fields::start(enc, out, 4);
    f.str("type", kind);
    f.uint("id", id);
    f.str(key, value);
    f.raw_str("text", text);
    f.end();
}

/// Appends `{"type":"history","id":ID,"room":ROOM,["before"|"after":N,]"limit":L}`.
pub fn history(enc: Encoding, id: u64, room: &str, cursor: Cursor, limit: u64, out: &mut Vec<u8>) {
    let mut f = Fields::start(enc, out, 4 + usize::from(cursor != Cursor::Latest));
    f.str("type", "history");
    f.uint("id", id);
    f.str("room", room);
    match cursor {
        Cursor::Latest => {}
        Cursor::Before(n) => f.uint("before", n),
        Cursor::After(n) => f.uint("after", n),
    }
    f.uint("limit", limit);
    f.end();
}

/// Writes one flat object field by field, in either encoding, with no
/// intermediate value.
struct Fields<'a> {
    enc: Encoding,
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Fields<'a> {
    /// MessagePack needs the number of entries up front.
    fn start(enc: Encoding, out: &'a mut Vec<u8>, entries: usize) -> Fields<'a> {
        match enc {
            Encoding::Json => out.push(b'{'),
            Encoding::Msgpack => out.push(0x80 | entries as u8),
        }
        Fields { enc, out, first: true }
    }

    fn key(&mut self, key: &str) {
        match self.enc {
            Encoding::Json => {
                if !self.first {
                    self.out.push(b',');
                }
                self.out.push(b'"');
                self.out.extend_from_slice(key.as_bytes());
                self.out.extend_from_slice(b"\":");
            }
            Encoding::Msgpack => mp_str(self.out, key.as_bytes()),
        }
        self.first = false;
    }

    /// A string we did not necessarily choose: escaped as JSON requires.
    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        match self.enc {
            Encoding::Json => self.out.extend_from_slice(Value::from(value).to_string().as_bytes()),
            Encoding::Msgpack => mp_str(self.out, value.as_bytes()),
        }
    }

    /// A string known to need no escaping.
    fn raw_str(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        match self.enc {
            Encoding::Json => {
                self.out.push(b'"');
                self.out.extend_from_slice(value);
                self.out.push(b'"');
            }
            Encoding::Msgpack => mp_str(self.out, value),
        }
    }

    fn uint(&mut self, key: &str, n: u64) {
        self.key(key);
        match self.enc {
            Encoding::Json => push_u64(self.out, n),
            Encoding::Msgpack => {
                self.out.push(0xcf);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    fn bool(&mut self, key: &str, b: bool) {
        self.key(key);
        match (self.enc, b) {
            (Encoding::Json, true) => self.out.extend_from_slice(b"true"),
            (Encoding::Json, false) => self.out.extend_from_slice(b"false"),
            (Encoding::Msgpack, true) => self.out.push(0xc3),
            (Encoding::Msgpack, false) => self.out.push(0xc2),
        }
    }

    fn end(self) {
        if self.enc == Encoding::Json {
            self.out.push(b'}');
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

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
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

/// The kind of a live room event frame (PROTOCOL.md section 3.1): its `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `message` (a thread reply too).
    Message,
    /// `edit`: carries the new text, so our stamp when we wrote it.
    Edit,
    /// `delete`: no text.
    Delete,
    /// `reaction`: no text.
    Reaction,
}

impl Kind {
    fn of(t: &[u8]) -> Option<Kind> {
        match t {
            b"message" => Some(Kind::Message),
            b"edit" => Some(Kind::Edit),
            b"delete" => Some(Kind::Delete),
            b"reaction" => Some(Kind::Reaction),
            _ => None,
        }
    }
}

/// What the hot path pulled out of a server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A room event (every kind takes a seq of the room): its kind, room,
    /// seq and the send stamp of our text (`None` when there is no text or
    /// it is not one of ours).
    Message { kind: Kind, room: &'a [u8], seq: u64, stamp: Option<u64> },
    /// An `ack`: the id we gave the send (`None` if not a number) and the
    /// seq the message got.
    Ack { id: Option<u64>, seq: u64 },
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
    if let Some(kind) = Kind::of(kind) {
        let body = &rest[end..];
        let (room, seq, stamp) = message_fields(body).ok_or("event without room or seq")?;
        return Ok(Frame::Message { kind, room, seq, stamp });
    }
    match kind {
        b"ack" => {
            let id = json_after(p, b"\"id\":").and_then(|s| digits(s).map(|(n, _)| n));
            let seq = json_after(p, b"\"seq\":").and_then(|s| digits(s).map(|(n, _)| n));
            Ok(Frame::Ack { id, seq: seq.ok_or("ack without a numeric seq")? })
        }
        kind => Ok(Frame::Other(kind)),
    }
}

/// Room, seq and send stamp of a JSON message object. The fast path reads
/// them in the order both chinwag (serde: room, seq, ts, from, text) and the
/// Socket.IO peer (JSON.stringify: insertion order) write them, without
/// searching; any other layout falls back to a search per key.
pub(crate) fn message_fields(p: &[u8]) -> Option<(&[u8], u64, Option<u64>)> {
    let at_room = json_after(p, b"\"room\":\"")?;
    let room_len = at_room.iter().position(|&b| b == b'"')?;
    let after_room = &at_room[room_len..];
    let (seq, rest) = match after_room.strip_prefix(b"\",\"seq\":") {
        Some(r) => {
            let (n, len) = digits(r)?;
            (n, &r[len..])
        }
        None => (json_after(p, b"\"seq\":").and_then(digits)?.0, p),
    };
    let stamp = json_after(rest, b"\"text\":\"t=").and_then(stamp_digits);
    Some((&at_room[..room_len], seq, stamp))
}

/// What follows the first `key` in `hay`.
pub(crate) fn json_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
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
    let (mut kind, mut room, mut seq, mut stamp, mut id) = (None, None, None, None, None);
    for _ in 0..entries {
        let key = r.str()?;
        match key {
            b"type" => kind = Some(r.str()?),
            b"room" => room = Some(r.str()?),
            b"seq" => seq = Some(r.uint()?),
            b"text" => stamp = r.str()?.strip_prefix(b"t=").and_then(stamp_digits),
            // Ours are numbers; anything else is someone else's id.
            b"id" => id = r.uint().ok(),
            _ => r.skip(0)?,
        }
        // The type comes first; stop early for frames the hot path ignores.
        if let Some(k) = kind {
            if k != b"ack" && Kind::of(k).is_none() {
                return Ok(Frame::Other(k));
            }
        }
    }
    match (kind, room, seq) {
        (Some(b"ack"), _, Some(seq)) => Ok(Frame::Ack { id, seq }),
        (Some(k), Some(room), Some(seq)) => match Kind::of(k) {
            Some(kind) => Ok(Frame::Message { kind, room, seq, stamp }),
            None => Err("MessagePack frame of an unknown type".into()),
        },
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

/// Whether a `message` frame is a thread reply (has `reply_to`). Off the
/// hot path: only publishers that pick reply roots ask.
pub fn is_reply(enc: Encoding, payload: &[u8]) -> bool {
    match enc {
        // A raw `"` only ends a string in JSON, so the key cannot match
        // inside the text.
        Encoding::Json => json_after(payload, b"\"reply_to\":").is_some(),
        Encoding::Msgpack => decode(enc, payload).is_ok_and(|v| !v["reply_to"].is_null()),
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
            Ok(Frame::Message { kind: Kind::Message, room: b"r3", seq: 121, stamp: Some(987654) })
        );
        let p = br#"{"type":"message","room":"r3","seq":1,"ts":1,"from":"u1","text":"hello"}"#;
        assert_eq!(
            peek(Encoding::Json, p),
            Ok(Frame::Message { kind: Kind::Message, room: b"r3", seq: 1, stamp: None })
        );
        // Another field order still parses (the slow path).
        let p = br#"{"type":"message","seq":9,"text":"t=5;","room":"r3"}"#;
        assert_eq!(
            peek(Encoding::Json, p),
            Ok(Frame::Message { kind: Kind::Message, room: b"r3", seq: 9, stamp: Some(5) })
        );
        let p = br#"{"type":"presence","room":"r3","user":"u1","state":"online"}"#;
        assert_eq!(peek(Encoding::Json, p), Ok(Frame::Other(b"presence")));
        let p = br#"{"type":"ack","id":77,"room":"r3","seq":12,"ts":1}"#;
        assert_eq!(peek(Encoding::Json, p), Ok(Frame::Ack { id: Some(77), seq: 12 }));
        let p = br#"{"type":"ack","id":"x","room":"r3","seq":12,"ts":1}"#;
        assert_eq!(peek(Encoding::Json, p), Ok(Frame::Ack { id: None, seq: 12 }));
        assert!(peek(Encoding::Json, b"[1]").is_err());
    }

    #[test]
    fn msgpack_message_is_peeked() {
        let v = serde_json::json!({"type":"message","room":"r3","seq":70000,"ts":1732250000123u64,
            "from":"u1","text":"t=42;xx"});
        let p = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(
            peek(Encoding::Msgpack, &p),
            Ok(Frame::Message { kind: Kind::Message, room: b"r3", seq: 70000, stamp: Some(42) })
        );
        let v = serde_json::json!({"type":"joined","room":"r3","seq":5,"members":["a","b"],
            "online":[],"history":[{"room":"r3","seq":1,"ts":2,"from":"a","text":"x"}],"more":false});
        let p = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(peek(Encoding::Msgpack, &p), Ok(Frame::Other(b"joined")));
        let v = serde_json::json!({"type":"ack","id":1u64 << 40,"room":"r3","seq":3,"ts":1});
        let a = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(peek(Encoding::Msgpack, &a), Ok(Frame::Ack { id: Some(1 << 40), seq: 3 }));
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
            join(enc, "r7", None, &mut out);
            assert_eq!(decode(enc, &out).unwrap(), serde_json::json!({"type":"join","room":"r7"}));
            out.clear();
            join(enc, "r7", Some(9), &mut out);
            let want = serde_json::json!({"type":"join","room":"r7","since":9});
            assert_eq!(decode(enc, &out).unwrap(), want);
            out.clear();
            dm(enc, 5, "u1", b"t=1;", &mut out);
            let want = serde_json::json!({"type":"dm","id":5,"to":"u1","text":"t=1;"});
            assert_eq!(decode(enc, &out).unwrap(), want);
            for (cursor, extra) in [
                (Cursor::Latest, None),
                (Cursor::Before(10), Some(("before", 10))),
                (Cursor::After(3), Some(("after", 3))),
            ] {
                out.clear();
                history(enc, 6, "r7", cursor, 50, &mut out);
                let mut want = serde_json::json!({"type":"history","id":6,"room":"r7","limit":50});
                if let Some((k, n)) = extra {
                    want[k] = n.into();
                }
                assert_eq!(decode(enc, &out).unwrap(), want);
            }
            out.clear();
            leave(enc, "a\"b", &mut out);
            assert_eq!(decode(enc, &out).unwrap()["room"], "a\"b");
        }
    }

    #[test]
    fn event_frames_are_peeked() {
        let p = br#"{"type":"edit","room":"r3","seq":12,"ts":1,"from":"u1","text":"t=77;x","target":5}"#;
        let want = Frame::Message { kind: Kind::Edit, room: &b"r3"[..], seq: 12, stamp: Some(77) };
        assert_eq!(peek(Encoding::Json, p), Ok(want));
        let p = br#"{"type":"reaction","room":"r3","seq":13,"ts":1,"from":"u1","target":5,"emoji":"x","on":true}"#;
        let want = Frame::Message { kind: Kind::Reaction, room: &b"r3"[..], seq: 13, stamp: None };
        assert_eq!(peek(Encoding::Json, p), Ok(want));
        let v = serde_json::json!({"type":"reaction","room":"r3","seq":14,"ts":1,"from":"u1",
            "target":5,"emoji":"\u{1f44d}","on":false});
        let m = rmp_serde::to_vec_named(&v).unwrap();
        let want = Frame::Message { kind: Kind::Reaction, room: &b"r3"[..], seq: 14, stamp: None };
        assert_eq!(peek(Encoding::Msgpack, &m), Ok(want));
        let v =
            serde_json::json!({"type":"delete","room":"r3","seq":15,"ts":1,"from":"u1","target":5});
        let m = rmp_serde::to_vec_named(&v).unwrap();
        assert!(matches!(
            peek(Encoding::Msgpack, &m),
            Ok(Frame::Message { kind: Kind::Delete, .. })
        ));
        let r = br#"{"type":"message","room":"r3","seq":16,"ts":1,"from":"u1","text":"t=1;","reply_to":3}"#;
        assert!(is_reply(Encoding::Json, r));
        assert!(!is_reply(
            Encoding::Json,
            br#"{"type":"message","room":"r3","seq":1,"text":"reply_to"}"#
        ));
        let v: Value = serde_json::from_slice(r).unwrap();
        assert!(is_reply(Encoding::Msgpack, &rmp_serde::to_vec_named(&v).unwrap()));
    }

    #[test]
    fn event_requests_decode_as_the_server_would() {
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let mut out = Vec::new();
            reply(enc, 3, "r1", b"t=9;", 7, &mut out);
            let want =
                serde_json::json!({"type":"send","id":3,"room":"r1","text":"t=9;","reply_to":7});
            assert_eq!(decode(enc, &out).unwrap(), want);
            out.clear();
            edit(enc, 4, "r1", 7, b"t=10;", &mut out);
            let want = serde_json::json!({"type":"edit","id":4,"room":"r1","seq":7,"text":"t=10;"});
            assert_eq!(decode(enc, &out).unwrap(), want);
            out.clear();
            react(enc, 5, "r1", 7, "\u{2764}\u{fe0f}", false, &mut out);
            let want = serde_json::json!({"type":"react","id":5,"room":"r1","seq":7,
                "emoji":"\u{2764}\u{fe0f}","on":false});
            assert_eq!(decode(enc, &out).unwrap(), want);
            out.clear();
            search(enc, 6, "ka lo", (Some("r3"), Some("1.2.r3")), 20, &mut out);
            let want = serde_json::json!({"type":"search","id":6,"query":"ka lo",
                "room":"r3","cursor":"1.2.r3","limit":20});
            assert_eq!(decode(enc, &out).unwrap(), want);
        }
    }
}
