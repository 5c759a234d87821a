//! trackegress's native media core: receive-only WebRTC peers (str0m) for Python.
//!
//! One I/O thread per `Core` owns every peer and its UDP sockets; Python sends commands and is woken
//! through an eventfd once per batch of events (never once per packet), which it then `drain()`s.

mod holes;
mod io;
mod nack;
mod net;
mod opus;
mod out;
mod peer;
mod tcp;
mod track;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::{Poll, Waker};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::io::{Cmd, IoLoop, Shared, WAKER};
use crate::out::{Out, StatsRow, TrackStats};

/// Event kinds in the tuples `drain()` returns (first element), exported to Python as module constants (the
/// stub declares them, with each event's tuple shape).
const EV_ANSWER: u8 = 0;
const EV_STATE: u8 = 1;
const EV_CANDIDATE: u8 = 2;
const EV_MEDIA: u8 = 3;
const EV_FRAME: u8 = 4;
const EV_CLOSED: u8 = 5;

/// Receive buffer of each UDP socket: a burst of a few hundred ms of 720p video while the I/O thread is late
/// (Linux's default of 208 KiB holds ~170 datagrams; the kernel doubles what is set for its bookkeeping).
const SOCKET_RECEIVE_BUFFER: libc::c_int = 2 << 20;

/// Size the socket's receive buffer for bursts: `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN, ignores
/// `net.core.rmem_max`), else `SO_RCVBUF` (capped at `rmem_max`).
fn size_receive_buffer(socket: &std::net::UdpSocket) {
    let size = SOCKET_RECEIVE_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: sets an int option on a socket we own, from a valid c_int.
        let done = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done == 0 {
            return;
        }
    }
}

/// A non-blocking UDP socket on `ip` (an ephemeral port), its receive buffer sized for bursts.
fn receive_socket(ip: IpAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    socket.set_nonblocking(true)?;
    size_receive_buffer(&socket);
    Ok(socket)
}

/// The media core of a process: one I/O thread multiplexing every peer.
#[pyclass(frozen, module = "trackegress_native")]
struct Core {
    commands: Mutex<Sender<Cmd>>,
    waker: Waker,
    shared: Arc<Shared>,
    next_peer: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Core {
    fn send(&self, cmd: Cmd) -> PyResult<()> {
        let sent = self
            .commands
            .lock()
            .map_err(|_| PyRuntimeError::new_err("media core lock poisoned"))?
            .send(cmd);
        sent.map_err(|_| PyRuntimeError::new_err("media core has stopped"))?;
        self.waker
            .wake()
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }
}

#[pymethods]
impl Core {
    #[new]
    fn new() -> PyResult<Self> {
        // SAFETY: plain eventfd(2); the descriptor is owned right away.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(PyOSError::new_err(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let event_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let poll = Poll::new().map_err(|e| PyOSError::new_err(e.to_string()))?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(|e| PyOSError::new_err(e.to_string()))?;
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            events: Mutex::new(Vec::new()),
            stats: Mutex::new(HashMap::new()),
            notified: AtomicBool::new(false),
            event_fd,
        });
        let io_loop = IoLoop::new(poll, rx, Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("trackegress-media".into())
            .spawn(move || io_loop.run())
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Core {
            commands: Mutex::new(tx),
            waker,
            shared,
            next_peer: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The descriptor that becomes readable when events are waiting.
    fn fileno(&self) -> i32 {
        self.shared.event_fd.as_raw_fd()
    }

    /// Start a peer on the local IPv4 `addresses`: a UDP socket on each (`udp`), an active ICE-TCP candidate on
    /// each (`tcp`); returns its id and the bound UDP addresses.
    #[pyo3(signature = (addresses, udp=true, tcp=true))]
    fn open(&self, addresses: Vec<String>, udp: bool, tcp: bool) -> PyResult<(u64, Vec<String>)> {
        let ips = addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| PyValueError::new_err(format!("not an IP address: {a}")))
            })
            .collect::<PyResult<Vec<IpAddr>>>()?;
        if ips.is_empty() || !(udp || tcp) {
            return Err(PyValueError::new_err("no local address to receive on"));
        }
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for &ip in ips.iter().filter(|_| udp) {
            let socket =
                receive_socket(ip).map_err(|e| PyOSError::new_err(format!("bind {ip}: {e}")))?;
            let local = socket
                .local_addr()
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            bound.push(local.to_string());
            sockets.push(socket);
        }
        let tcp = if tcp { ips } else { Vec::new() };
        let peer = self.next_peer.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::Open { peer, sockets, tcp })?;
        Ok((peer, bound))
    }

    /// Apply an offer; the answer comes back as an `answer` event carrying `req`.
    fn accept_offer(&self, peer: u64, req: u64, sdp: String) -> PyResult<()> {
        self.send(Cmd::Offer { peer, req, sdp })
    }

    /// Add a trickled remote candidate (`candidate:...`), tied to an ICE generation by `ufrag`.
    #[pyo3(signature = (peer, candidate, ufrag=None))]
    fn add_remote_candidate(
        &self,
        peer: u64,
        candidate: String,
        ufrag: Option<String>,
    ) -> PyResult<()> {
        self.send(Cmd::Candidate {
            peer,
            candidate,
            ufrag,
        })
    }

    /// Ask the sender of a video track for a keyframe (repeated until one arrives).
    fn request_keyframe(&self, peer: u64, mid: String) -> PyResult<()> {
        self.send(Cmd::Keyframe { peer, mid })
    }

    /// Hand the peer's Opus frames over decoded to PCM as well, from now on (decoded on the I/O thread).
    fn decode_opus(&self, peer: u64) -> PyResult<()> {
        self.send(Cmd::DecodeOpus { peer })
    }

    /// Close a peer; a `closed` event follows.
    fn close_peer(&self, peer: u64) -> PyResult<()> {
        self.send(Cmd::Close { peer })
    }

    /// Receive counters per track (see `StatsRow`).
    fn stats(&self, peer: u64) -> Vec<StatsRow> {
        let map = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&peer)
            .map(|tracks| tracks.iter().map(TrackStats::row).collect())
            .unwrap_or_default()
    }

    /// Forget a closed peer's counters.
    fn forget(&self, peer: u64) {
        let mut map = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&peer);
    }

    /// Take every waiting event as tuples `(kind, peer, ...)`; see the stub for the shapes.
    fn drain(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer from our own non-blocking eventfd.
        unsafe {
            libc::read(
                self.shared.event_fd.as_raw_fd(),
                counter.as_mut_ptr().cast(),
                counter.len(),
            );
        }
        self.shared.notified.store(false, Ordering::SeqCst);
        let events = {
            let mut events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *events)
        };
        let now = Instant::now();
        let monotonic = monotonic_seconds();
        let mut result = Vec::with_capacity(events.len());
        for event in events {
            let item = match event {
                Out::Answer { peer, req, result } => {
                    let (ok, text) = match result {
                        Ok(sdp) => (true, sdp),
                        Err(e) => (false, e),
                    };
                    (EV_ANSWER, peer, req, ok, text)
                        .into_pyobject(py)?
                        .into_any()
                }
                Out::State { peer, state } => (EV_STATE, peer, state).into_pyobject(py)?.into_any(),
                Out::Candidate { peer, candidate } => (EV_CANDIDATE, peer, candidate)
                    .into_pyobject(py)?
                    .into_any(),
                Out::Media {
                    peer,
                    mid,
                    kind,
                    mime,
                } => (EV_MEDIA, peer, mid, kind, mime)
                    .into_pyobject(py)?
                    .into_any(),
                Out::Frame {
                    peer,
                    mid,
                    pt_mime,
                    time,
                    keyframe,
                    contiguous,
                    spatial,
                    temporal,
                    arrival,
                    data,
                    pcm,
                    sender,
                } => {
                    let arrival = monotonic - now.saturating_duration_since(arrival).as_secs_f64();
                    let data = PyBytes::new(py, &data);
                    let pcm = pcm.map(|pcm| PyBytes::new(py, &pcm));
                    // 13 fields: past the 12 that PyO3 converts a Rust tuple of
                    let fields = [
                        EV_FRAME.into_pyobject(py)?.into_any(),
                        peer.into_pyobject(py)?.into_any(),
                        mid.into_pyobject(py)?.into_any(),
                        pt_mime.into_pyobject(py)?.into_any(),
                        time.into_pyobject(py)?.into_any(),
                        keyframe.into_pyobject(py)?.to_owned().into_any(),
                        contiguous.into_pyobject(py)?.to_owned().into_any(),
                        spatial.into_pyobject(py)?.into_any(),
                        temporal.into_pyobject(py)?.into_any(),
                        arrival.into_pyobject(py)?.into_any(),
                        data.into_any(),
                        pcm.into_pyobject(py)?.into_any(),
                        sender.into_pyobject(py)?.into_any(),
                    ];
                    PyTuple::new(py, fields)?.into_any()
                }
                Out::Closed { peer, error } => {
                    (EV_CLOSED, peer, error).into_pyobject(py)?.into_any()
                }
            };
            result.push(item.unbind());
        }
        Ok(result)
    }

    /// Stop the I/O thread (closing every peer).
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let _ = self.send(Cmd::Shutdown);
        let thread = self
            .thread
            .lock()
            .map_err(|_| PyRuntimeError::new_err("media core lock poisoned"))?
            .take();
        if let Some(thread) = thread {
            py.detach(|| thread.join())
                .map_err(|_| PyRuntimeError::new_err("media core thread panicked"))?;
        }
        Ok(())
    }
}

/// `time.monotonic()` (CLOCK_MONOTONIC, the clock `Instant` reads on Linux).
fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The machine's IPv4 addresses of interfaces that are up (loopback included), as host candidates.
#[pyfunction]
fn host_addresses() -> PyResult<Vec<String>> {
    interface_ipv4s().map_err(|e| PyOSError::new_err(e.to_string()))
}

/// The IPv4 addresses of the interfaces that are up, each once.
fn interface_ipv4s() -> std::io::Result<Vec<String>> {
    let mut addresses = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cursor = head;
        while !cursor.is_null() {
            let entry = &*cursor;
            let up = entry.ifa_flags & (libc::IFF_UP as u32) != 0;
            if up
                && !entry.ifa_addr.is_null()
                && i32::from((*entry.ifa_addr).sa_family) == libc::AF_INET
            {
                let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !addresses.contains(&ip.to_string()) {
                    addresses.push(ip.to_string());
                }
            }
            cursor = entry.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(addresses)
}

#[pymodule]
fn trackegress_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add_function(wrap_pyfunction!(host_addresses, m)?)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add("STR0M_VERSION", "0.24.0")?;
    // libopus's own opus_get_version_string() says "libopus unknown": the source audiopus_sys bundles (Opus 1.3,
    // pinned =0.2.2 in Cargo.toml) carries no version stamp for its cmake build.
    m.add("LIBOPUS_VERSION", "1.3 (audiopus_sys 0.2.2)")?;
    m.add("OPENSSL_VERSION", openssl::version::version())?;
    for (name, kind) in [
        ("EV_ANSWER", EV_ANSWER),
        ("EV_STATE", EV_STATE),
        ("EV_CANDIDATE", EV_CANDIDATE),
        ("EV_MEDIA", EV_MEDIA),
        ("EV_FRAME", EV_FRAME),
        ("EV_CLOSED", EV_CLOSED),
    ] {
        m.add(name, kind)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An int socket option of `socket`.
    fn option(socket: &std::net::UdpSocket, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reads an int option of a socket we own into a local c_int.
        let done = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(done, 0);
        value
    }

    #[test]
    fn the_loopback_address_is_a_host_address_and_none_repeats() {
        let addresses = interface_ipv4s().unwrap();
        assert!(
            addresses.contains(&"127.0.0.1".to_string()),
            "{addresses:?}"
        );
        let mut unique = addresses.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), addresses.len());
    }

    #[test]
    fn a_receive_socket_never_blocks_and_buffers_a_burst() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let socket = receive_socket(ip).unwrap();
        assert_eq!(socket.local_addr().unwrap().ip(), ip);
        let mut buf = [0u8; 16];
        let read = socket.recv_from(&mut buf).unwrap_err();
        assert_eq!(read.kind(), std::io::ErrorKind::WouldBlock);
        // SO_RCVBUFFORCE when privileged, else capped at net.core.rmem_max (the kernel reports twice the size).
        let rmem_max: libc::c_int = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .map_or(0, |s| s.trim().parse().unwrap_or(0));
        let expected = SOCKET_RECEIVE_BUFFER.min(rmem_max.max(0));
        assert!(option(&socket, libc::SO_RCVBUF) >= 2 * expected);
    }
}
