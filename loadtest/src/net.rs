//! Sockets as the harness opens and closes them.
//!
//! Owns: opening a non-blocking TCP connection from a chosen loopback source
//! address (so a run can pass the ~28k ephemeral ports one source address
//! has towards one server port), the abrupt close used by `storm`, and the
//! one blocking HTTP request the harness makes (a node's `/health`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream as StdStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Starts a connection to `addr`, from `source` if given (any port).
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    open(addr, source, None)
}

/// [`connect`], optionally with the socket's ephemeral ports limited to
/// `ports` (Linux 6.3+ `IP_LOCAL_PORT_RANGE`): the tests use it to run out of
/// ports with a handful of sockets rather than 28k.
fn open(
    addr: SocketAddr,
    source: Option<IpAddr>,
    ports: Option<(u16, u16)>,
) -> io::Result<TcpStream> {
    if source.is_none() && ports.is_none() {
        return TcpStream::connect(addr);
    }
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    if let Some((lo, hi)) = ports {
        /// From linux/in.h; the libc crate does not have it yet.
        const IP_LOCAL_PORT_RANGE: libc::c_int = 51;
        setsockopt_u32(&sock, IP_LOCAL_PORT_RANGE, u32::from(hi) << 16 | u32::from(lo))?;
    }
    if let Some(src) = source {
        // Without this, bind(port 0) reserves a port for the source address
        // alone and the range runs out at ~28k sockets however many servers
        // there are; with it the port is picked at connect over the 4-tuple.
        setsockopt_u32(&sock, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        sock.bind(&SocketAddr::new(src, 0).into())?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(StdStream::from(sock)))
}

/// An IPPROTO_IP option socket2 does not wrap.
fn setsockopt_u32(sock: &Socket, option: libc::c_int, value: u32) -> io::Result<()> {
    // SAFETY: a valid fd, and a value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the coming close send a RST instead of a FIN: the client vanishes
/// (a phone going out of coverage) and leaves no TIME_WAIT socket behind, so
/// churn does not run out of ephemeral ports.
pub fn set_abortive(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// `127.0.0.1` to `127.0.0.<n>`.
pub fn loopback_sources(n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::from([127, 0, 0, i])).collect()
}

/// The body of `GET /health` on `addr` (any status), within a few seconds.
pub fn health(addr: SocketAddr) -> Result<String, String> {
    let limit = Duration::from_secs(3);
    let mut s = StdStream::connect_timeout(&addr, limit).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    s.take(64 << 10).read_to_end(&mut answer).map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP answer")?;
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_from_a_second_loopback_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let src: IpAddr = "127.0.0.2".parse().unwrap();
        let _client = connect(addr, Some(src)).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), src);
        drop(_client);
        let three: Vec<String> = loopback_sources(3).iter().map(|a| a.to_string()).collect();
        assert_eq!(three, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    }

    #[test]
    fn more_sources_mean_more_ports() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // 8 ports per socket: one source runs out after 8 connections to one
        // server port, three sources hold 24. (The range must lie inside the
        // system's ephemeral range or the kernel ignores it; ports other
        // programs got from connect do not count, only bound ones would.)
        let ports = Some((60900, 60907));
        let mut held = Vec::new();
        let probe = open(addr, Some(IpAddr::from([127, 0, 0, 1])), ports);
        if matches!(&probe, Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT)) {
            eprintln!("kernel without IP_LOCAL_PORT_RANGE: skipped");
            return;
        }
        held.push(probe.unwrap());
        let one = (1..20).map(|_| open(addr, Some(IpAddr::from([127, 0, 0, 1])), ports));
        let refused = one.filter_map(|r| r.map(|s| held.push(s)).err()).count();
        assert_eq!(refused, 12, "one source: 8 of 20 connect");
        // Closed sockets linger in TIME_WAIT on their ports: use fresh ones.
        let ports = Some((60910, 60917));
        let three = loopback_sources(3);
        for i in 0..20 {
            held.push(open(addr, Some(three[i % 3]), ports).unwrap());
        }
    }
}
