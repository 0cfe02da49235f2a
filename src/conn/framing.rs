//! A session's WebSocket reader: tungstenite's protocol state, made when
//! bytes arrive and dropped again once every byte read from the socket has
//! become a whole message. An idle connection then holds no read buffer
//! and no codec (together ~530 B of its ~2.3 KB before).
//!
//! Whether a context holds nothing is not something tungstenite tells, so
//! it is counted from outside: the bytes fed to it against the least that
//! the messages it gave back can have taken on the wire. The estimate
//! never exceeds the truth (a fragmented message or a long length form
//! only makes the frames bigger), so equal counts prove an empty buffer,
//! no half-read header and no half-assembled message; unequal ones just
//! keep the context.

use super::{OutQueue, Transport};
use bytes::Bytes;
use std::io::{self, Read, Write};
use tungstenite::{
    protocol::{Role, WebSocketConfig, WebSocketContext},
    Message,
};

/// The stream tungstenite sees: reads come from the socket (and are
/// counted), writes (pongs and close replies) join our queue so that they
/// never interleave with a half-written frame of ours.
#[derive(Debug)]
struct WsStream<'a> {
    sock: &'a mut Transport,
    out: &'a mut OutQueue,
    fed: &'a mut u32,
}

impl Read for WsStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        // Wrapping: only equality is asked, and no message nears 4 GiB.
        *self.fed = self.fed.wrapping_add(n as u32);
        Ok(n)
    }
}

impl Write for WsStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's context while it holds something, and the byte counts
/// that say when it no longer does.
#[derive(Debug, Default)]
pub struct Framing {
    ws: Option<Box<WebSocketContext>>,
    /// Bytes read from the socket into `ws` (wrapping).
    fed: u32,
    /// The least wire size of the messages `ws` gave back (wrapping).
    framed: u32,
}

impl Framing {
    /// A reader that starts with `leftover`, the bytes read past the
    /// upgrade request (often the client's first frames).
    pub fn new(leftover: Vec<u8>, cfg: &WebSocketConfig) -> Framing {
        if leftover.is_empty() {
            return Framing::default();
        }
        let fed = leftover.len() as u32;
        let ws = WebSocketContext::from_partially_read(leftover, Role::Server, Some(*cfg));
        Framing { ws: Some(Box::new(ws)), fed, framed: 0 }
    }

    /// Whether a context is held now (a partial frame, or just read).
    #[cfg(test)]
    fn is_held(&self) -> bool {
        self.ws.is_some()
    }

    /// Reads one message; on `WouldBlock`, drops the context if it holds
    /// nothing.
    pub fn read(
        &mut self,
        sock: &mut Transport,
        out: &mut OutQueue,
        cfg: &WebSocketConfig,
    ) -> tungstenite::Result<Message> {
        let ws = self
            .ws
            .get_or_insert_with(|| Box::new(WebSocketContext::new(Role::Server, Some(*cfg))));
        let mut io = WsStream { sock, out, fed: &mut self.fed };
        let r = ws.read(&mut io);
        match &r {
            Ok(msg) => self.framed = self.framed.wrapping_add(least_frame(msg)),
            Err(tungstenite::Error::Io(e)) if super::would_block(e) => {
                if self.fed == self.framed && ws.can_write() {
                    self.ws = None;
                }
            }
            Err(_) => {}
        }
        r
    }

    /// Writes out what tungstenite has queued (the reply to a close).
    pub fn flush(&mut self, sock: &mut Transport, out: &mut OutQueue) {
        if let Some(ws) = &mut self.ws {
            let _ = ws.flush(&mut WsStream { sock, out, fed: &mut self.fed });
        }
    }
}

/// The fewest bytes a client's message can take on the wire: one masked
/// frame with the shortest length form.
fn least_frame(msg: &Message) -> u32 {
    let n = match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(c) => c.as_ref().map_or(0, |c| 2 + c.reason.len()),
        // Never read as such; 0 keeps the context (counts stay unequal).
        Message::Frame(_) => return 0,
    };
    let len_form = match n {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    (2 + len_form + 4 + n) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{thread::sleep, time::Duration};

    /// A client frame with a zero mask (payload as is).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() <= 125);
        let mut f = vec![(u8::from(fin) << 7) | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    /// Reads until `WouldBlock`: the texts read, and whether a context
    /// is still held.
    fn drain(r: &mut Framing, sock: &mut Transport) -> (Vec<String>, bool) {
        let (mut out, cfg) = (OutQueue::default(), WebSocketConfig::default());
        sleep(Duration::from_millis(50)); // Loopback delivers by then.
        let mut texts = Vec::new();
        loop {
            match r.read(sock, &mut out, &cfg) {
                Ok(Message::Text(t)) => texts.push(t.to_string()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if super::super::would_block(&e) => break,
                Err(e) => panic!("{e}"),
            }
        }
        (texts, r.is_held())
    }

    #[test]
    fn the_context_lives_exactly_while_a_message_is_unfinished() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut sock = Transport::Plain(mio::net::TcpStream::from_std(server));
        let mut r = Framing::new(frame(true, 1, b"first"), &WebSocketConfig::default());
        assert_eq!(drain(&mut r, &mut sock), (vec!["first".into()], false));

        // Half a frame: held; the rest: read and dropped.
        let f = frame(true, 1, b"hello");
        client.write_all(&f[..4]).unwrap();
        assert_eq!(drain(&mut r, &mut sock), (vec![], true));
        client.write_all(&f[4..]).unwrap();
        assert_eq!(drain(&mut r, &mut sock), (vec!["hello".into()], false));

        // Two frames and a ping in one read: all consumed.
        let mut b = frame(true, 1, b"a");
        b.extend(frame(true, 9, b"p"));
        b.extend(frame(true, 1, b"b"));
        client.write_all(&b).unwrap();
        assert_eq!(drain(&mut r, &mut sock), (vec!["a".into(), "b".into()], false));

        // A fragmented message: held between its fragments (and after it,
        // since fragments cost more than the estimate: never dropped
        // early, at worst kept).
        client.write_all(&frame(false, 1, b"par")).unwrap();
        assert_eq!(drain(&mut r, &mut sock), (vec![], true));
        client.write_all(&frame(true, 0, b"ts")).unwrap();
        assert_eq!(drain(&mut r, &mut sock), (vec!["parts".into()], true));
    }

    #[test]
    fn least_frame_is_the_shortest_masked_form() {
        assert_eq!(least_frame(&Message::text("")), 6);
        assert_eq!(least_frame(&Message::text("a".repeat(125))), 131);
        assert_eq!(least_frame(&Message::binary(vec![0; 126])), 134);
        assert_eq!(least_frame(&Message::binary(vec![0; 65536])), 65536 + 14);
        assert_eq!(least_frame(&Message::Close(None)), 6);
    }
}
