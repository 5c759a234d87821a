//! The process's one I/O thread: every peer's sockets in one poll set, their timers in one heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use str0m::config::DtlsCert;

use crate::net::{Net, RECV_BUFFER, SOCKET_BITS};
use crate::out::{Out, TrackStats};
use crate::peer::{build_rtc, Peer};

/// The waker's token; socket tokens are `peer << SOCKET_BITS | index`.
pub const WAKER: Token = Token(usize::MAX);
/// How often the counters Python reads are refreshed.
const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// A request from Python.
pub enum Cmd {
    Open {
        peer: u64,
        sockets: Vec<std::net::UdpSocket>,
        tcp: Vec<IpAddr>,
    },
    Offer {
        peer: u64,
        req: u64,
        sdp: String,
    },
    Candidate {
        peer: u64,
        candidate: String,
        ufrag: Option<String>,
    },
    Keyframe {
        peer: u64,
        mid: String,
    },
    DecodeOpus {
        peer: u64,
    },
    Close {
        peer: u64,
    },
    Shutdown,
}

/// What the I/O thread and Python share.
pub struct Shared {
    pub events: Mutex<Vec<Out>>,
    pub stats: Mutex<HashMap<u64, Vec<TrackStats>>>,
    pub notified: AtomicBool,
    pub event_fd: OwnedFd,
}

impl Shared {
    /// Hand a batch to Python, waking its event loop once per batch.
    fn publish(&self, out: &mut Vec<Out>) {
        if out.is_empty() {
            return;
        }
        {
            let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            events.append(out);
        }
        if !self.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
            unsafe {
                libc::write(
                    self.event_fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }
}

/// The I/O thread's state.
pub struct IoLoop {
    poll: Poll,
    commands: Receiver<Cmd>,
    shared: Arc<Shared>,
    peers: HashMap<u64, Peer>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    scheduled: HashMap<u64, Instant>,
    cert: Option<DtlsCert>,
    last_stats: Instant,
}

impl IoLoop {
    pub fn new(poll: Poll, commands: Receiver<Cmd>, shared: Arc<Shared>) -> Self {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        IoLoop {
            poll,
            commands,
            shared,
            peers: HashMap::new(),
            timers: BinaryHeap::new(),
            scheduled: HashMap::new(),
            cert,
            last_stats: Instant::now(),
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut out = Vec::new();
        let mut touched = Vec::new();
        loop {
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("poll: {e}");
                    return;
                }
            }
            let now = Instant::now();
            let mut commands = false;
            for event in events.iter() {
                if event.token() == WAKER {
                    commands = true;
                    continue;
                }
                let peer = (event.token().0 >> SOCKET_BITS) as u64;
                let index = event.token().0 & ((1 << SOCKET_BITS) - 1);
                self.with_peer(peer, &mut out, |p, out| p.ready(index, &mut buf, now, out));
                touched.push(peer);
            }
            if commands {
                while let Ok(cmd) = self.commands.try_recv() {
                    match cmd {
                        Cmd::Shutdown => {
                            self.shutdown(now, &mut out);
                            return;
                        }
                        cmd => touched.push(self.command(cmd, now, &mut out)),
                    }
                }
            }
            while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if self.scheduled.get(&peer) == Some(&at) {
                    self.scheduled.remove(&peer);
                    self.with_peer(peer, &mut out, |p, out| p.timeout(now, out));
                    touched.push(peer);
                }
            }
            for peer in touched.drain(..) {
                self.reschedule(peer);
            }
            if now >= self.last_stats + STATS_INTERVAL {
                self.last_stats = now;
                self.publish_stats();
            }
            self.shared.publish(&mut out);
        }
    }

    fn command(&mut self, cmd: Cmd, now: Instant, out: &mut Vec<Out>) -> u64 {
        match cmd {
            Cmd::Open { peer, sockets, tcp } => {
                self.open(peer, sockets, tcp, now, out);
                peer
            }
            Cmd::Offer { peer, req, sdp } => {
                if !self.peers.contains_key(&peer) {
                    out.push(Out::Answer {
                        peer,
                        req,
                        result: Err("peer connection is closed".into()),
                    });
                }
                self.with_peer(peer, out, |p, out| p.accept_offer(req, &sdp, now, out));
                peer
            }
            Cmd::Candidate {
                peer,
                candidate,
                ufrag,
            } => {
                self.with_peer(peer, out, |p, out| {
                    p.add_remote_candidate(&candidate, ufrag.as_deref(), now, out)
                });
                peer
            }
            Cmd::Keyframe { peer, mid } => {
                self.with_peer(peer, out, |p, out| p.request_keyframe(&mid, now, out));
                peer
            }
            Cmd::DecodeOpus { peer } => {
                self.with_peer(peer, out, |p, _| p.decode_opus());
                peer
            }
            Cmd::Close { peer } => {
                self.with_peer(peer, out, |p, out| p.close(now, out));
                peer
            }
            Cmd::Shutdown => 0,
        }
    }

    fn open(
        &mut self,
        id: u64,
        sockets: Vec<std::net::UdpSocket>,
        tcp: Vec<IpAddr>,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let registry = match self.poll.registry().try_clone() {
            Ok(r) => r,
            Err(e) => {
                out.push(Out::Closed {
                    peer: id,
                    error: Some(format!("poll registry: {e}")),
                });
                return;
            }
        };
        let mut registered = Vec::new();
        for socket in sockets {
            let local = match socket.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            };
            let mut socket = UdpSocket::from_std(socket);
            let token = Token(((id as usize) << SOCKET_BITS) | registered.len());
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut socket, token, Interest::READABLE)
            {
                log::warn!("peer {id}: register {local}: {e}");
                continue;
            }
            registered.push((socket, local));
        }
        let rtc = build_rtc(now, self.cert.clone());
        let net = Net::new(id, registry, registered, tcp);
        let mut peer = Peer::new(id, rtc, net, now);
        let result = catch_unwind(AssertUnwindSafe(|| peer.start(now, out)));
        if result.is_err() {
            out.push(Out::Closed {
                peer: id,
                error: Some("media core panicked while opening".into()),
            });
            return;
        }
        self.peers.insert(id, peer);
    }

    /// Run `f` on a live peer; a panic inside str0m ends that peer only.
    fn with_peer(&mut self, id: u64, out: &mut Vec<Out>, f: impl FnOnce(&mut Peer, &mut Vec<Out>)) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let result = catch_unwind(AssertUnwindSafe(|| f(peer, out)));
        if result.is_err() {
            out.push(Out::Closed {
                peer: id,
                error: Some("media core panicked".into()),
            });
            self.remove(id);
            return;
        }
        if peer.done {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(mut peer) = self.peers.remove(&id) {
            let stats = peer.stats();
            peer.release();
            self.scheduled.remove(&id);
            let mut map = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(id, stats);
        }
    }

    fn reschedule(&mut self, id: u64) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        if self.scheduled.get(&id) != Some(&peer.deadline) {
            self.scheduled.insert(id, peer.deadline);
            self.timers.push(Reverse((peer.deadline, id)));
        }
    }

    fn publish_stats(&self) {
        let mut map = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        for (id, peer) in &self.peers {
            map.insert(*id, peer.stats());
        }
    }

    fn shutdown(&mut self, now: Instant, out: &mut Vec<Out>) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.with_peer(id, out, |p, out| p.close(now, out));
        }
        self.shared.publish(out);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::sync::mpsc::channel;

    use mio::Waker;

    use super::*;

    fn shared() -> Arc<Shared> {
        // SAFETY: plain eventfd(2), owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        Arc::new(Shared {
            events: Mutex::new(Vec::new()),
            stats: Mutex::new(HashMap::new()),
            notified: AtomicBool::new(false),
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            event_fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The eventfd's counter (0 if it was not written), as Python's `drain()` reads it.
    fn wakeups(shared: &Shared) -> u64 {
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a local u64 from our non-blocking eventfd.
        let read = unsafe {
            libc::read(
                shared.event_fd.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                8,
            )
        };
        if read == 8 {
            counter
        } else {
            0
        }
    }

    fn closed(peer: u64) -> Out {
        Out::Closed { peer, error: None }
    }

    /// Wait until the I/O thread wakes Python, then take its events.
    fn next_batch(shared: &Shared) -> Vec<Out> {
        for _ in 0..500 {
            if wakeups(shared) > 0 {
                shared.notified.store(false, Ordering::SeqCst);
                return std::mem::take(&mut *shared.events.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the I/O thread did not wake Python");
    }

    #[test]
    fn python_is_woken_once_per_batch_until_it_drains() {
        let shared = shared();
        shared.publish(&mut Vec::new());
        assert_eq!(wakeups(&shared), 0, "nothing to hand over");
        let mut batch = vec![closed(1)];
        shared.publish(&mut batch);
        assert!(batch.is_empty());
        shared.publish(&mut vec![closed(2)]);
        assert_eq!(wakeups(&shared), 1, "one wake-up for both batches");
        assert_eq!(shared.events.lock().unwrap().len(), 2);
        shared.notified.store(false, Ordering::SeqCst); // Python drained
        shared.publish(&mut vec![closed(3)]);
        assert_eq!(wakeups(&shared), 1);
    }

    #[test]
    fn commands_reach_their_peer_and_a_gone_peer_answers_closed() {
        let shared = shared();
        let (_tx, rx) = channel();
        let mut io = IoLoop::new(Poll::new().unwrap(), rx, Arc::clone(&shared));
        let now = Instant::now();
        let mut out = Vec::new();
        let offer = |peer, req| Cmd::Offer {
            peer,
            req,
            sdp: "v=0\r\n".into(),
        };
        io.command(offer(9, 1), now, &mut out);
        assert!(
            matches!(&out[..], [Out::Answer { peer: 9, req: 1, result: Err(e) }] if e == "peer connection is closed")
        );

        out.clear();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let open = Cmd::Open {
            peer: 1,
            sockets: vec![socket],
            tcp: Vec::new(),
        };
        assert_eq!(io.command(open, now, &mut out), 1);
        let candidate = format!(" {} {} typ host", address.ip(), address.port());
        let reported: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                Out::Candidate { peer: 1, candidate } => Some(candidate.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&reported[..], [c] if c.contains(&candidate)),
            "{reported:?}, {} events",
            out.len()
        );
        io.reschedule(1);
        assert_eq!(io.timers.len(), 1);
        io.reschedule(1);
        assert_eq!(
            io.timers.len(),
            1,
            "an unchanged deadline is not queued twice"
        );

        out.clear();
        io.command(offer(1, 2), now, &mut out);
        assert!(
            matches!(&out[..], [Out::Answer { peer: 1, req: 2, result: Err(e) }] if e.starts_with("bad offer"))
        );

        out.clear();
        io.command(Cmd::Close { peer: 1 }, now, &mut out);
        assert!(matches!(
            &out[..],
            [Out::Closed {
                peer: 1,
                error: None
            }]
        ));
        assert!(io.peers.is_empty(), "a closed peer is dropped");
        assert!(
            shared.stats.lock().unwrap().contains_key(&1),
            "its counters stay for Python"
        );
    }

    #[test]
    fn the_io_thread_runs_commands_publishes_and_shuts_down() {
        let shared = shared();
        let (tx, rx) = channel();
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        let io = IoLoop::new(poll, rx, Arc::clone(&shared));
        let thread = std::thread::spawn(move || io.run());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        tx.send(Cmd::Open {
            peer: 4,
            sockets: vec![socket],
            tcp: vec!["127.0.0.1".parse().unwrap()],
        })
        .unwrap();
        waker.wake().unwrap();
        let batch = next_batch(&shared);
        let candidates = batch
            .iter()
            .filter(|o| matches!(o, Out::Candidate { peer: 4, .. }))
            .count();
        assert_eq!(candidates, 2, "UDP and active TCP");

        tx.send(Cmd::Shutdown).unwrap();
        waker.wake().unwrap();
        thread.join().expect("the I/O thread ends");
        let batch = std::mem::take(&mut *shared.events.lock().unwrap());
        assert!(matches!(
            &batch[..],
            [Out::Closed {
                peer: 4,
                error: None
            }]
        ));
    }
}
