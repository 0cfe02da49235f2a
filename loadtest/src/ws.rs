//! The client side of RFC 6455 that the harness needs, and nothing more.
//!
//! Owns: the upgrade request and the check of the server's 101 answer, parsing
//! server frame headers in place (no copy, no allocation), and writing masked
//! client frames into a caller's buffer. Framing is hand-rolled rather than
//! tungstenite's `WebSocket` because that allocates a `Message` per frame, and
//! the harness must absorb millions of deliveries per second on one core.

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// An HTTP answer longer than this without its blank line is not a server we
/// understand.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A random-enough `Sec-WebSocket-Key`: base64 of 16 bytes from `seed`.
pub fn key(seed: &mut u64) -> String {
    let mut raw = [0u8; 16];
    for chunk in raw.chunks_mut(8) {
        chunk.copy_from_slice(&xorshift(seed).to_le_bytes());
    }
    base64(&raw)
}

/// One step of xorshift64: cheap mask keys and handshake keys. Nothing here
/// needs cryptographic randomness; the server cannot tell the difference.
pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The upgrade request for `path` (path and query) on `host`, offering
/// `protocol` if given.
pub fn request(host: &str, path: &str, key: &str, protocol: Option<&str>) -> Vec<u8> {
    let offer = protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// Checks the server's answer to the upgrade. `Ok(None)`: incomplete, read
/// more; `Ok(Some(n))`: a valid 101 whose head is the first `n` bytes (the
/// rest are already frames); `Err`: refused or malformed, with the reason.
pub fn check_response(
    buf: &[u8],
    key: &str,
    protocol: Option<&str>,
) -> Result<Option<usize>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err("HTTP answer head over 16 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "HTTP answer is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split(' ').nth(1).unwrap_or("");
    if code != "101" {
        // The body (a JSON error from chinwag) is usually in the same read.
        let body = String::from_utf8_lossy(&buf[end + 4..buf.len().min(end + 4 + 200)]);
        return Err(format!("upgrade refused: {status} {}", body.trim()));
    }
    let (mut accept, mut proto) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value.trim());
        } else if name.trim().eq_ignore_ascii_case("sec-websocket-protocol") {
            proto = Some(value.trim());
        }
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if accept != Some(expected.as_str()) {
        return Err(format!("bad Sec-WebSocket-Accept {accept:?}"));
    }
    if proto != protocol {
        return Err(format!("server chose subprotocol {proto:?}, asked for {protocol:?}"));
    }
    Ok(Some(end + 4))
}

/// A parsed frame header; the payload is `buf[header_len..header_len + payload_len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Final fragment.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl Header {
    /// Header plus payload.
    pub fn total(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the header of a server frame at the start of `buf`. `Ok(None)`:
/// the whole frame (header and payload) is not there yet.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<Header>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err("reserved bits set (no extension was negotiated)".into());
    }
    if b1 & 0x80 != 0 {
        return Err("server frame is masked (RFC 6455 5.1 forbids it)".into());
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u64::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            let Some(len) = buf.get(2..10) else { return Ok(None) };
            let mut b = [0u8; 8];
            b.copy_from_slice(len);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    if payload_len > max_payload as u64 {
        return Err(format!("frame of {payload_len} bytes is over {max_payload}"));
    }
    let h = Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        header_len,
        payload_len: payload_len as usize,
    };
    Ok((buf.len() >= h.total()).then_some(h))
}

/// Appends one masked, final client frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// First position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let at = from + hay[from..].iter().position(|&b| b == first)?;
        if hay.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let mut seed = 1;
        assert_eq!(key(&mut seed).len(), 24);
    }

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        for len in [0usize, 5, 125, 126, 300, 65535, 65536] {
            out.clear();
            let payload = vec![b'a'; len];
            write_frame(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
            // Our frames are masked; unmask and reparse as a server frame.
            let hl = out.len() - len - 4;
            let mask = [out[hl], out[hl + 1], out[hl + 2], out[hl + 3]];
            let mut server = out[..hl].to_vec();
            server[1] &= 0x7f;
            server.extend(out[hl + 4..].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
            let h = parse(&server, 1 << 20).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.payload_len), (true, OP_TEXT, len));
            assert_eq!(&server[h.header_len..h.total()], &payload[..]);
            assert_eq!(parse(&server[..server.len() - 1], 1 << 20).unwrap(), None);
        }
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Protocol: chinwag.v1.json\r\n\r\n\x81\x00";
        let json = Some("chinwag.v1.json");
        assert_eq!(check_response(ok, key, json), Ok(Some(ok.len() - 2)));
        assert!(check_response(ok, key, Some("chinwag.v1.msgpack")).is_err());
        assert!(check_response(ok, key, None).is_err());
        assert_eq!(check_response(&ok[..20], key, json), Ok(None));
        let no = b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"error\":\"unauthorized\"}";
        assert!(check_response(no, key, json).unwrap_err().contains("401"));
        let req = String::from_utf8(request("h", "/ws", key, None)).unwrap();
        assert!(!req.contains("Protocol") && req.ends_with("13\r\n\r\n"));
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"xx\"seq\":5", b"\"seq\":"), Some(2));
    }
}
