//! ICE-TCP (RFC 6544), active side: a TCP connection we dial to a peer's passive candidate, carrying STUN,
//! DTLS and SRTP packets framed by a 16-bit length each (RFC 4571).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};

use mio::net::TcpStream;

/// The port of an active TCP candidate (RFC 6544 §4.5: it never accepts connections).
pub const ACTIVE_PORT: u16 = 9;
/// Bytes queued on a connection that does not drain; past this, packets are dropped (as a full UDP buffer does).
const MAX_QUEUED: usize = 1 << 20;

/// One dialled connection: from our active candidate `local` to the peer's passive candidate `remote`.
pub struct TcpLink {
    pub stream: TcpStream,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
}

impl TcpLink {
    /// Start connecting from `local`'s address (any port) to `remote`, without blocking.
    pub fn dial(local: SocketAddr, remote: SocketAddr) -> io::Result<Self> {
        let stream = connect_from(local.ip(), remote)?;
        stream.set_nodelay(true)?;
        Ok(TcpLink {
            stream,
            local,
            remote,
            inbox: Vec::new(),
            outbox: Vec::new(),
        })
    }

    /// Queue one packet and write what the connection takes now.
    pub fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.outbox.len() + packet.len() + 2 > MAX_QUEUED {
            return Ok(());
        }
        frame(packet, &mut self.outbox);
        self.flush()
    }

    /// Write queued bytes until the connection would block (or is still connecting).
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.outbox.is_empty() {
            match self.stream.write(&self.outbox) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read what has arrived; the whole packets in it. An error (or the peer's close) ends the link.
    pub fn receive(&mut self, buf: &mut [u8]) -> io::Result<Vec<Vec<u8>>> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(unframe(&mut self.inbox))
    }
}

/// Append `packet` with its RFC 4571 length prefix (packets over 65535 bytes cannot be framed: dropped).
fn frame(packet: &[u8], out: &mut Vec<u8>) {
    if let Ok(len) = u16::try_from(packet.len()) {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(packet);
    }
}

/// Take every whole packet off the front of `inbox`, leaving a partial one.
fn unframe(inbox: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut at = 0;
    while inbox.len() - at >= 2 {
        let len = usize::from(u16::from_be_bytes([inbox[at], inbox[at + 1]]));
        if inbox.len() - at - 2 < len {
            break;
        }
        packets.push(inbox[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    inbox.drain(..at);
    packets
}

/// A non-blocking TCP socket bound to `ip` (so the connection leaves from the candidate's address), connecting.
fn connect_from(ip: IpAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let (IpAddr::V4(ip), SocketAddr::V4(remote)) = (ip, remote) else {
        return Err(ErrorKind::Unsupported.into());
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let from = sockaddr(ip, 0);
    let to = sockaddr(*remote.ip(), remote.port());
    // SAFETY: plain socket(2), bind(2), connect(2) on a descriptor owned right after creation, with valid
    // sockaddr_in values that outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        if libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(std::net::TcpStream::from(owned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_split_across_reads_come_out_whole_and_in_order() {
        let mut wire = Vec::new();
        frame(b"stun", &mut wire);
        frame(b"", &mut wire);
        frame(&[7u8; 300], &mut wire);
        let mut inbox = wire[..5].to_vec(); // the first length and 3 of its 4 bytes
        assert!(unframe(&mut inbox).is_empty());
        inbox.extend_from_slice(&wire[5..wire.len() - 1]);
        assert_eq!(unframe(&mut inbox), vec![b"stun".to_vec(), Vec::new()]);
        inbox.extend_from_slice(&wire[wire.len() - 1..]);
        assert_eq!(unframe(&mut inbox), vec![vec![7u8; 300]]);
        assert!(inbox.is_empty());
    }

    #[test]
    fn a_packet_too_long_to_frame_is_dropped() {
        let mut wire = Vec::new();
        frame(&vec![0u8; 70_000], &mut wire);
        assert!(wire.is_empty());
    }

    #[test]
    fn a_dialled_link_carries_framed_packets_both_ways() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let remote = listener.local_addr().unwrap();
        let local = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), ACTIVE_PORT);
        let mut link = TcpLink::dial(local, remote).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        link.send(b"hello").unwrap();
        for _ in 0..100 {
            link.flush().unwrap(); // a write while still connecting stays queued
            if link.outbox.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut got = [0u8; 7];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x00\x05hello");
        accepted.write_all(b"\x00\x02hi\x00\x01").unwrap();
        let mut buf = [0u8; 64];
        let mut packets = Vec::new();
        for _ in 0..100 {
            packets.extend(link.receive(&mut buf).unwrap());
            if !packets.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(packets, vec![b"hi".to_vec()]);
        drop(accepted);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(link.receive(&mut buf).is_err());
    }
}
