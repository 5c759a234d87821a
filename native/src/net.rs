//! A peer's I/O: one UDP socket per local address, and the ICE-TCP connections dialled from our active TCP
//! candidates to the remote's passive ones. Sends what str0m transmits; reads what arrived.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use str0m::error::IceError;
use str0m::net::{Protocol, TcpType, Transmit};
use str0m::Candidate;

use crate::tcp::{TcpLink, ACTIVE_PORT};

/// Largest datagram we read.
pub const RECV_BUFFER: usize = 2048;
/// Socket tokens are `peer << SOCKET_BITS | index`: UDP sockets first, then ICE-TCP links.
pub const SOCKET_BITS: usize = 5;

/// The sockets of one peer, registered in the I/O thread's poll set.
pub struct Net {
    peer: u64,
    registry: Registry,
    sockets: Vec<(UdpSocket, SocketAddr)>,
    tcp: Vec<IpAddr>,
    /// ICE-TCP links, in token slots after the UDP sockets (a slot is freed when its connection fails).
    links: Vec<Option<TcpLink>>,
    /// Tests: what would have been sent, instead of sending it.
    #[cfg(test)]
    pub tap: Option<Vec<Transmit>>,
}

impl Net {
    /// `sockets` are registered already (tokens `peer << SOCKET_BITS | index`); `tcp`: the local addresses of
    /// our active TCP candidates.
    pub fn new(
        peer: u64,
        registry: Registry,
        sockets: Vec<(UdpSocket, SocketAddr)>,
        tcp: Vec<IpAddr>,
    ) -> Self {
        Net {
            peer,
            registry,
            sockets,
            tcp,
            links: Vec::new(),
            #[cfg(test)]
            tap: None,
        }
    }

    /// Our host candidates: the UDP sockets' addresses, then active TCP on the `tcp` addresses.
    pub fn host_candidates(&self) -> Vec<Result<Candidate, IceError>> {
        let udp = self.sockets.iter().map(|(_, a)| Candidate::host(*a, "udp"));
        let tcp = self.tcp.iter().map(|ip| {
            Candidate::builder()
                .tcp()
                .host(SocketAddr::new(*ip, ACTIVE_PORT))
                .tcptype(TcpType::Active)
                .build()
        });
        udp.chain(tcp).collect()
    }

    /// A remote candidate we can pair: UDP, or passive TCP (which we dial) when ICE-TCP is on.
    pub fn usable(&self, candidate: &Candidate) -> bool {
        match candidate.proto() {
            Protocol::Udp => true,
            Protocol::Tcp => !self.tcp.is_empty() && candidate.tcptype() == Some(TcpType::Passive),
            _ => false,
        }
    }

    /// The number of UDP sockets (their token indices come first).
    pub fn udp_count(&self) -> usize {
        self.sockets.len()
    }

    /// The next datagram waiting on UDP socket `index`: (length in `buf`, source, local address).
    pub fn recv(&self, index: usize, buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)> {
        let (socket, local) = self.sockets.get(index)?;
        loop {
            match socket.recv_from(buf) {
                Ok((len, source)) => return Some((len, source, *local)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors (port unreachable) surface here; the next read goes on.
                    log::debug!("peer {}: recv on {local}: {e}", self.peer);
                    continue;
                }
            }
        }
    }

    /// Write what ICE-TCP link `slot` has queued (it may just have connected), then read the packets that
    /// arrived: (local, remote, packets). None if there is no such link, or it failed (it is dropped).
    pub fn receive_link(
        &mut self,
        slot: usize,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<Vec<u8>>)> {
        let link = self.links.get_mut(slot).and_then(Option::as_mut)?;
        let (local, remote) = (link.local, link.remote);
        match link.flush().and_then(|()| link.receive(buf)) {
            Ok(packets) => Some((local, remote, packets)),
            Err(e) => {
                log::debug!("peer {}: tcp link to {remote}: {e}", self.peer);
                self.drop_link(slot);
                None
            }
        }
    }

    /// Send one packet str0m wants out: from the UDP socket of its source, or over the ICE-TCP link between
    /// its source and destination (dialled now if there is none).
    pub fn send(&mut self, t: Transmit) {
        #[cfg(test)]
        if let Some(tap) = &mut self.tap {
            tap.push(t);
            return;
        }
        let sent = match t.proto {
            Protocol::Udp => match self.sockets.iter().find(|(_, a)| *a == t.source) {
                Some((socket, _)) => socket.send_to(&t.contents, t.destination).map(drop),
                None => return,
            },
            Protocol::Tcp => match self.link(t.source, t.destination) {
                Some(slot) => {
                    let link = self.links[slot]
                        .as_mut()
                        .expect("link() returns a live slot");
                    let sent = link.send(&t.contents);
                    if sent.is_err() {
                        self.drop_link(slot);
                    }
                    sent
                }
                None => return,
            },
            _ => return,
        };
        if let Err(e) = sent {
            log::debug!("peer {}: send to {}: {e}", self.peer, t.destination);
        }
    }

    /// The slot of the link from our active candidate `local` to `remote`, dialling it if needed (None if it
    /// cannot be: no free token slot, or the connect failed at once).
    fn link(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<usize> {
        let live = |l: &Option<TcpLink>| {
            l.as_ref()
                .is_some_and(|l| l.local == local && l.remote == remote)
        };
        if let Some(slot) = self.links.iter().position(live) {
            return Some(slot);
        }
        if local.port() != ACTIVE_PORT || !self.tcp.contains(&local.ip()) {
            return None;
        }
        let slot = self
            .links
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.links.len());
        let index = self.sockets.len() + slot;
        if index >= 1 << SOCKET_BITS {
            log::debug!(
                "peer {}: no token left for a tcp link to {remote}",
                self.peer
            );
            return None;
        }
        let token = Token(((self.peer as usize) << SOCKET_BITS) | index);
        let dialled = TcpLink::dial(local, remote).and_then(|mut link| {
            self.registry
                .register(
                    &mut link.stream,
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| link)
        });
        match dialled {
            Ok(link) => {
                log::debug!("peer {}: tcp link {local} -> {remote}", self.peer);
                if slot == self.links.len() {
                    self.links.push(Some(link));
                } else {
                    self.links[slot] = Some(link);
                }
                Some(slot)
            }
            Err(e) => {
                log::debug!("peer {}: tcp connect to {remote}: {e}", self.peer);
                None
            }
        }
    }

    fn drop_link(&mut self, slot: usize) {
        if let Some(mut link) = self.links.get_mut(slot).and_then(Option::take) {
            let _ = self.registry.deregister(&mut link.stream);
        }
    }

    /// Stop polling the sockets and connections (the peer is being dropped).
    pub fn release(&mut self) {
        for (socket, _) in &mut self.sockets {
            let _ = self.registry.deregister(socket);
        }
        for slot in 0..self.links.len() {
            self.drop_link(slot);
        }
    }
}
