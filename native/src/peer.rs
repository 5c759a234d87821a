//! One receive-only WebRTC peer (a str0m `Rtc`) with its UDP sockets and ICE-TCP links, driven by the I/O thread.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, CodecExtra, FormatParams};
use str0m::media::{Frequency, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};

use crate::holes::{Holes, HOLE_LIFETIME};
use crate::opus::OpusDecoder;
use crate::out::{Out, TrackStats};
use crate::tcp::{TcpLink, ACTIVE_PORT};

/// How often a video track without a usable picture asks for a keyframe (not while a packet may still be
/// retransmitted: see `holes`).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// str0m's ICE agent retries forever; after this long `Disconnected` we report `failed`.
const DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(15);
/// A closing peer gets this long to flush its BYE / close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(200);
/// Largest datagram we read.
pub const RECV_BUFFER: usize = 2048;
/// Socket tokens are `peer << SOCKET_BITS | index`: UDP sockets first, then ICE-TCP links.
pub const SOCKET_BITS: usize = 5;

/// Per-track state: codec, keyframe wanted, counters.
#[derive(Default)]
struct Track {
    video: bool,
    announced: bool,
    /// A keyframe has been delivered (the SFU starts a video track with one, asking its publisher itself).
    keyframe_seen: bool,
    /// Since when a keyframe is wanted.
    keyframe_wanted: Option<Instant>,
    /// NACK was negotiated for the codec in use.
    nack: bool,
    /// The SSRC (without RTX) str0m was told to NACK.
    nack_ssrc: Option<u32>,
    last_keyframe_request: Option<Instant>,
    holes: Holes,
    /// Decodes the track's Opus to PCM, once the peer was asked to (`Peer::decode_opus`).
    decoder: Option<OpusDecoder>,
    stats: TrackStats,
}

impl Track {
    /// The frame as PCM; empty if libopus refuses it.
    fn decode(&mut self, frame: &[u8]) -> Vec<u8> {
        let started = Instant::now();
        if self.decoder.is_none() {
            self.decoder = OpusDecoder::new().ok();
        }
        let pcm = self
            .decoder
            .as_mut()
            .and_then(|d| d.decode(frame).ok())
            .unwrap_or_default();
        self.stats.decode_seconds += started.elapsed().as_secs_f64();
        pcm
    }

    /// When the next keyframe request may go out, if one is wanted: not sooner than `KEYFRAME_INTERVAL` after
    /// the last, and not while a hole may still be repaired, for at most `HOLE_LIFETIME` (under steady loss
    /// some hole is nearly always open).
    fn keyframe_request_at(&self) -> Option<Instant> {
        let since = self.keyframe_wanted?;
        let repeat = self
            .last_keyframe_request
            .map_or(since, |last| last + KEYFRAME_INTERVAL);
        let repaired = self
            .holes
            .repair_deadline()
            .map_or(since, |at| at.min(since + HOLE_LIFETIME));
        Some(repeat.max(repaired))
    }
}

/// A receive-only peer and its sockets: one UDP socket per local address, and the TCP connections ICE dials
/// from our active TCP candidates (one per local address in `tcp`) to the remote's passive ones.
pub struct Peer {
    pub id: u64,
    rtc: Rtc,
    registry: Registry,
    sockets: Vec<(UdpSocket, SocketAddr)>,
    tcp: Vec<IpAddr>,
    /// ICE-TCP links, in token slots after the UDP sockets (a slot is freed when its connection fails).
    links: Vec<Option<TcpLink>>,
    tracks: HashMap<Mid, Track>,
    pub deadline: Instant,
    disconnected_since: Option<Instant>,
    failed: bool,
    closing: Option<Instant>,
    pub done: bool,
    /// Opus frames are handed over decoded too.
    decode_opus: bool,
}

/// The str0m configuration every peer uses: the codecs LiveKit offers that we can record; a missing packet is
/// waited for long enough for one NACK round trip (NACKs go out every 33 ms; audio: 150 ms, video: 400 ms).
pub fn build_rtc(now: Instant, cert: Option<DtlsCert>) -> Rtc {
    let mut config = Rtc::builder()
        .enable_opus(true, true)
        .enable_pcmu(true, false)
        .enable_pcma(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_h265(true)
        .enable_vp9(true)
        .enable_av1(true)
        .set_reordering_size_audio(10)
        .set_reordering_timeout_audio(Some(Duration::from_millis(150)))
        .set_reordering_size_video(250)
        .set_reordering_timeout_video(Some(Duration::from_millis(400)))
        .set_stats_interval(Some(Duration::from_secs(1)));
    if let Some(cert) = cert {
        config = config.set_dtls_cert(cert);
    }
    let codecs = config.codec_config();
    // VP9 profile 1 (LiveKit registers it; str0m configures 0 and 2) and H.264 high profile in mode 0.
    codecs.add_config(
        92.into(),
        Some(93.into()),
        Codec::Vp9,
        Frequency::NINETY_KHZ,
        None,
        FormatParams {
            profile_id: Some(1),
            ..Default::default()
        },
    );
    codecs.add_h264(116.into(), Some(117.into()), false, 0x64001f);
    // NACK for audio too: livekit-server offers it for Opus unless the track uses RED.
    for params in codecs.iter_mut().filter(|p| !p.spec().codec.is_video()) {
        params.set_fb_nack(true);
    }
    config.build(now)
}

impl Peer {
    pub fn new(
        id: u64,
        rtc: Rtc,
        registry: Registry,
        sockets: Vec<(UdpSocket, SocketAddr)>,
        tcp: Vec<IpAddr>,
        now: Instant,
    ) -> Self {
        Peer {
            id,
            rtc,
            registry,
            sockets,
            tcp,
            links: Vec::new(),
            tracks: HashMap::new(),
            deadline: now,
            disconnected_since: None,
            failed: false,
            closing: None,
            done: false,
            decode_opus: false,
        }
    }

    /// Stop polling the peer's sockets and connections (it is being dropped).
    pub fn release(&mut self) {
        for (socket, _) in &mut self.sockets {
            let _ = self.registry.deregister(socket);
        }
        for slot in 0..self.links.len() {
            self.drop_link(slot);
        }
    }

    /// Add our host candidates (the UDP sockets' addresses, active TCP on the `tcp` addresses) and report them.
    pub fn start(&mut self, now: Instant, out: &mut Vec<Out>) {
        let udp = self.sockets.iter().map(|(_, a)| Candidate::host(*a, "udp"));
        let tcp = self.tcp.iter().map(|ip| {
            Candidate::builder()
                .tcp()
                .host(SocketAddr::new(*ip, ACTIVE_PORT))
                .tcptype(TcpType::Active)
                .build()
        });
        let candidates: Vec<_> = udp.chain(tcp).collect();
        for candidate in candidates {
            match candidate {
                Ok(c) => {
                    if let Some(c) = self.rtc.add_local_candidate(c) {
                        out.push(Out::Candidate {
                            peer: self.id,
                            candidate: c.to_sdp_string(),
                        });
                    }
                }
                Err(e) => log::warn!("peer {}: no host candidate: {e}", self.id),
            }
        }
        self.drive(now, out);
    }

    /// Socket `index` (a UDP socket, or an ICE-TCP link after them) is ready: feed the peer what arrived.
    pub fn ready(&mut self, index: usize, buf: &mut [u8], now: Instant, out: &mut Vec<Out>) {
        match index.checked_sub(self.sockets.len()) {
            None => self.readable(index, buf, now, out),
            Some(slot) => self.link_ready(slot, buf, now, out),
        }
    }

    /// Read every datagram waiting on UDP socket `index` and feed it to the peer.
    fn readable(&mut self, index: usize, buf: &mut [u8], now: Instant, out: &mut Vec<Out>) {
        loop {
            let Some((socket, local)) = self.sockets.get(index) else {
                return;
            };
            let local = *local;
            let (len, source) = match socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors (port unreachable) surface here; the next read goes on.
                    log::debug!("peer {}: recv on {local}: {e}", self.id);
                    continue;
                }
            };
            if !self.done && !self.feed(Protocol::Udp, source, local, &buf[..len], now, out) {
                return;
            }
        }
    }

    /// Write what ICE-TCP link `slot` has queued (it may just have connected), then feed the peer what arrived.
    fn link_ready(&mut self, slot: usize, buf: &mut [u8], now: Instant, out: &mut Vec<Out>) {
        let Some(link) = self.links.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let (local, remote) = (link.local, link.remote);
        let packets = match link.flush().and_then(|()| link.receive(buf)) {
            Ok(packets) => packets,
            Err(e) => {
                log::debug!("peer {}: tcp link to {remote}: {e}", self.id);
                self.drop_link(slot);
                return;
            }
        };
        for packet in packets {
            if self.done || !self.feed(Protocol::Tcp, remote, local, &packet, now, out) {
                return;
            }
        }
    }

    /// Hand one received packet to str0m; false if that ended the peer.
    fn feed(
        &mut self,
        proto: Protocol,
        source: SocketAddr,
        local: SocketAddr,
        packet: &[u8],
        now: Instant,
        out: &mut Vec<Out>,
    ) -> bool {
        let Ok(receive) = Receive::new(proto, source, local, packet) else {
            return true; // not STUN, DTLS, RTP or RTCP
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, receive)) {
            self.fail(format!("input: {e}"), out);
            return false;
        }
        self.note_rtp(packet, now);
        self.drain(now, out);
        true
    }

    /// Send one packet str0m wants out: from the UDP socket of its source, or over the ICE-TCP link between
    /// its source and destination (dialled now if there is none).
    fn transmit(&mut self, t: &Transmit) {
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
            log::debug!("peer {}: send to {}: {e}", self.id, t.destination);
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
            log::debug!("peer {}: no token left for a tcp link to {remote}", self.id);
            return None;
        }
        let token = Token(((self.id as usize) << SOCKET_BITS) | index);
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
                log::debug!("peer {}: tcp link {local} -> {remote}", self.id);
                if slot == self.links.len() {
                    self.links.push(Some(link));
                } else {
                    self.links[slot] = Some(link);
                }
                Some(slot)
            }
            Err(e) => {
                log::debug!("peer {}: tcp connect to {remote}: {e}", self.id);
                None
            }
        }
    }

    fn drop_link(&mut self, slot: usize) {
        if let Some(mut link) = self.links.get_mut(slot).and_then(Option::take) {
            let _ = self.registry.deregister(&mut link.stream);
        }
    }

    /// Note an RTP packet's sequence number if it is on a track's main SSRC (not RTX, not RTCP).
    fn note_rtp(&mut self, datagram: &[u8], now: Instant) {
        // RTP version 2 with an RTP payload type (RTCP's 200..=206 share the byte with the marker bit).
        if datagram.len() < 12 || datagram[0] >> 6 != 2 || (192..=223).contains(&datagram[1]) {
            return;
        }
        let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        let mut api = self.rtc.direct_api();
        let Some((mid, rtx)) = api
            .stream_rx(&ssrc.into())
            .filter(|s| *s.ssrc() == ssrc)
            .map(|s| (s.mid(), s.rtx()))
        else {
            return; // RTX, or not ours
        };
        let Some(track) = self.tracks.get_mut(&mid) else {
            return;
        };
        if track.nack && rtx.is_none() && track.nack_ssrc != Some(ssrc) {
            // str0m only NACKs streams with an RTX stream; livekit-server resends Opus on its own SSRC.
            // (Looked up by mid: that also makes str0m re-check whether any stream needs NACK timers.)
            if let Some(stream) = api.stream_rx_by_mid(mid, None) {
                stream.suppress_nack(false);
                track.nack_ssrc = Some(ssrc);
            }
        }
        track.holes.arrived(seq, now);
    }

    /// Run timers that are due.
    pub fn timeout(&mut self, now: Instant, out: &mut Vec<Out>) {
        if self.done {
            return;
        }
        if let Some(since) = self.closing {
            if now >= since + CLOSE_TIMEOUT {
                self.finish(None, out);
                return;
            }
        }
        self.drive(now, out);
    }

    pub fn accept_offer(&mut self, req: u64, sdp: &str, now: Instant, out: &mut Vec<Out>) {
        let result = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| format!("bad offer: {e}"))
            .and_then(|offer| {
                self.rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| format!("offer refused: {e}"))
            })
            .map(|answer| answer.to_sdp_string());
        out.push(Out::Answer {
            peer: self.id,
            req,
            result,
        });
        self.drive(now, out);
    }

    pub fn add_remote_candidate(
        &mut self,
        candidate: &str,
        ufrag: Option<&str>,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        match Candidate::from_sdp_string(candidate) {
            Ok(mut c) if self.usable(&c) => {
                if let Some(ufrag) = ufrag {
                    c.set_ufrag(ufrag);
                }
                self.rtc.add_remote_candidate(c);
            }
            Ok(_) => {}
            Err(e) => log::debug!("peer {}: candidate {candidate:?}: {e}", self.id),
        }
        self.drive(now, out);
    }

    /// A remote candidate we can pair: UDP, or passive TCP (which we dial) when ICE-TCP is on.
    fn usable(&self, candidate: &Candidate) -> bool {
        match candidate.proto() {
            Protocol::Udp => true,
            Protocol::Tcp => !self.tcp.is_empty() && candidate.tcptype() == Some(TcpType::Passive),
            _ => false,
        }
    }

    pub fn request_keyframe(&mut self, mid: &str, now: Instant, out: &mut Vec<Out>) {
        let mid = Mid::from(mid);
        if let Some(track) = self.tracks.get_mut(&mid) {
            if track.video {
                track.keyframe_wanted.get_or_insert(now);
                track.last_keyframe_request = None;
            }
        }
        self.drive(now, out);
    }

    /// From now on, hand Opus frames over decoded to PCM as well (decoded here, off the Python thread).
    pub fn decode_opus(&mut self) {
        self.decode_opus = true;
    }

    pub fn close(&mut self, now: Instant, out: &mut Vec<Out>) {
        if self.done || self.closing.is_some() {
            return;
        }
        self.closing = Some(now);
        if self.rtc.close().is_err() {
            self.rtc.disconnect();
        }
        self.drain(now, out);
        if !self.rtc.is_alive() {
            self.finish(None, out);
        } else {
            self.deadline = self.deadline.min(now + CLOSE_TIMEOUT);
        }
    }

    /// Counters of every track (copied out for `stats()`).
    pub fn stats(&self) -> Vec<TrackStats> {
        self.tracks
            .values()
            .map(|t| TrackStats {
                packets_lost: t.holes.lost,
                packets_recovered: t.holes.recovered,
                packets_late: t.holes.late,
                packets_missing: t.holes.open(),
                ..t.stats.clone()
            })
            .collect()
    }

    /// Keyframe requests and the disconnected watchdog, then str0m's own timers.
    fn drive(&mut self, now: Instant, out: &mut Vec<Out>) {
        if self.done {
            return;
        }
        if self.closing.is_none() {
            self.request_keyframes(now);
            for track in self.tracks.values_mut() {
                track.holes.expire(now);
            }
            if let Some(since) = self.disconnected_since {
                if !self.failed && now >= since + DISCONNECTED_TIMEOUT {
                    self.failed = true;
                    out.push(Out::State {
                        peer: self.id,
                        state: "failed",
                    });
                }
            }
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.fail(format!("timeout: {e}"), out);
            return;
        }
        self.drain(now, out);
    }

    fn request_keyframes(&mut self, now: Instant) {
        let mids: Vec<Mid> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.keyframe_request_at().is_some_and(|at| now >= at))
            .map(|(mid, _)| *mid)
            .collect();
        for mid in mids {
            let sent = self
                .rtc
                .writer(mid)
                .map(|mut w| w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok())
                .unwrap_or(false);
            if let Some(track) = self.tracks.get_mut(&mid) {
                track.last_keyframe_request = Some(now);
                track.stats.keyframe_requests += u64::from(sent);
            }
        }
    }

    /// Poll str0m until it only has a timeout left: send, report, remember the deadline.
    fn drain(&mut self, now: Instant, out: &mut Vec<Out>) {
        loop {
            if !self.rtc.is_alive() {
                if self.closing.is_some() {
                    self.finish(None, out);
                } else {
                    self.finish(Some("peer connection closed".into()), out);
                }
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.deadline = self.next_deadline(t, now);
                    return;
                }
                Ok(Output::Transmit(t)) => self.transmit(&t),
                Ok(Output::Event(e)) => self.event(e, now, out),
                Err(RtcError::Packet(mid, pt, e)) => {
                    log::debug!("peer {}: bad frame on {mid} (pt {pt}): {e}", self.id);
                    if let Some(track) = self.tracks.get_mut(&mid) {
                        track.stats.frames_dropped += 1;
                    }
                }
                Err(e) => {
                    self.fail(format!("{e}"), out);
                    return;
                }
            }
        }
    }

    fn next_deadline(&self, rtc: Instant, now: Instant) -> Instant {
        let mut deadline = rtc;
        if self.closing.is_none() {
            for at in self.tracks.values().filter_map(Track::keyframe_request_at) {
                deadline = deadline.min(at.max(now + Duration::from_millis(1)));
            }
            if let (Some(since), false) = (self.disconnected_since, self.failed) {
                deadline = deadline.min(since + DISCONNECTED_TIMEOUT);
            }
        } else if let Some(since) = self.closing {
            deadline = deadline.min(since + CLOSE_TIMEOUT);
        }
        deadline
    }

    fn event(&mut self, event: Event, now: Instant, out: &mut Vec<Out>) {
        let peer = self.id;
        match event {
            Event::IceConnectionStateChange(state) => {
                let name = match state {
                    IceConnectionState::New => "new",
                    IceConnectionState::Checking => "connecting",
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        if self.rtc.is_connected() {
                            "connected"
                        } else {
                            "connecting"
                        }
                    }
                    IceConnectionState::Disconnected => "disconnected",
                };
                if state == IceConnectionState::Disconnected {
                    self.disconnected_since.get_or_insert(now);
                } else {
                    self.disconnected_since = None;
                    self.failed = false;
                }
                out.push(Out::State { peer, state: name });
            }
            Event::Connected => out.push(Out::State {
                peer,
                state: "connected",
            }),
            Event::MediaAdded(added) => {
                let video = added.kind == MediaKind::Video;
                self.tracks.insert(
                    added.mid,
                    Track {
                        video,
                        stats: TrackStats {
                            mid: added.mid.to_string(),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                );
            }
            Event::MediaData(data) => self.frame(data, now, out),
            Event::MediaIngressStats(s) => {
                if let Some(track) = self.tracks.get_mut(&s.mid) {
                    track.stats.packets_received = s.packets;
                    track.stats.nacks_sent = s.nacks;
                    track.stats.jitter =
                        f64::from(s.jitter) / if track.video { 90_000.0 } else { 48_000.0 };
                }
            }
            Event::Closed if self.closing.is_none() => {
                self.closing = Some(now);
                let _ = self.rtc.close();
            }
            _ => {} // data channels (the SFU's _reliable/_lossy: dropped), stats of the peer, pauses
        }
    }

    fn frame(&mut self, data: MediaData, now: Instant, out: &mut Vec<Out>) {
        let Some(track) = self.tracks.get_mut(&data.mid) else {
            return;
        };
        let keyframe = data.is_keyframe();
        let pt_mime = mime(Some(data.params.spec().codec), track.video);
        if !track.announced {
            // Announced with its first frame: only then is the codec in use known.
            track.announced = true;
            out.push(Out::Media {
                peer: self.id,
                mid: data.mid.to_string(),
                kind: if track.video { "video" } else { "audio" },
                mime: pt_mime,
            });
        }
        track.nack = data.params.fb_nack();
        let (spatial, temporal) = layers(&data.codec_extra);
        track
            .holes
            .delivered(**data.seq_range.start(), **data.seq_range.end());
        track.stats.frames_received += 1;
        if !data.contiguous {
            track.stats.frames_dropped += 1;
        }
        if track.video {
            if keyframe {
                track.keyframe_wanted = None;
                track.keyframe_seen = true;
            } else if !data.contiguous || !track.keyframe_seen {
                track.keyframe_wanted.get_or_insert(now);
            }
        }
        let pcm = (self.decode_opus && pt_mime == "audio/opus").then(|| track.decode(&data.data));
        out.push(Out::Frame {
            peer: self.id,
            mid: data.mid.to_string(),
            pt_mime,
            time: data.time.numer(),
            keyframe: if track.video { keyframe } else { true },
            contiguous: data.contiguous,
            spatial,
            temporal,
            arrival: now,
            data: match &data.codec_extra {
                CodecExtra::Vp9(e) => vp9_superframe(&data.data, &e.layers_scheme),
                _ => None,
            }
            .map_or_else(|| Arc::clone(&data.data), Arc::from),
            pcm,
        });
    }

    fn fail(&mut self, error: String, out: &mut Vec<Out>) {
        log::warn!("peer {}: {error}", self.id);
        self.rtc.disconnect();
        self.finish(Some(error), out);
    }

    fn finish(&mut self, error: Option<String>, out: &mut Vec<Out>) {
        if !self.done {
            self.done = true;
            self.rtc.disconnect();
            out.push(Out::Closed {
                peer: self.id,
                error,
            });
        }
    }
}

/// The lower-case MIME type of a str0m codec.
fn mime(codec: Option<Codec>, video: bool) -> &'static str {
    match codec {
        Some(Codec::Opus) => "audio/opus",
        Some(Codec::PCMU) => "audio/pcmu",
        Some(Codec::PCMA) => "audio/pcma",
        Some(Codec::G722) => "audio/g722",
        Some(Codec::H264) => "video/h264",
        Some(Codec::H265) => "video/h265",
        Some(Codec::Vp8) => "video/vp8",
        Some(Codec::Vp9) => "video/vp9",
        Some(Codec::Av1) => "video/av1",
        _ if video => "video/unknown",
        _ => "audio/unknown",
    }
}

/// A VP9 picture of several spatial layers as a superframe (VP9 spec Annex B): str0m concatenates the layers'
/// frames (`layers_ends`: where each ends) without the index that decoders need to split them again.
fn vp9_superframe(data: &[u8], layer_ends: &[Option<usize>]) -> Option<Vec<u8>> {
    let mut sizes = Vec::new();
    let mut start = 0;
    for &end in layer_ends.iter().flatten() {
        if end <= start || end > data.len() {
            return None;
        }
        sizes.push(end - start);
        start = end;
    }
    if sizes.len() < 2 || start != data.len() {
        return None;
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let magnitude = (1..=4).find(|&bytes| largest < 1 << (8 * bytes))?;
    let marker = 0xc0 | ((magnitude - 1) << 3) as u8 | (sizes.len() - 1) as u8;
    let mut out = Vec::with_capacity(data.len() + 2 + magnitude * sizes.len());
    out.extend_from_slice(data);
    out.push(marker);
    for size in sizes {
        out.extend_from_slice(&size.to_le_bytes()[..magnitude]);
    }
    out.push(marker);
    Some(out)
}

/// (spatial, temporal) layer ids where the codec carries them.
fn layers(extra: &CodecExtra) -> (u8, u8) {
    match extra {
        CodecExtra::Vp8(e) => (0, e.layer_index),
        CodecExtra::Vp9(e) => {
            let spatial = e.layers_scheme.iter().filter(|l| l.is_some()).count();
            (spatial.saturating_sub(1) as u8, e.tid.unwrap_or(0))
        }
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyframe_request_waits_for_repairs_at_most_a_hole_lifetime() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut track = Track::default();
        assert_eq!(track.keyframe_request_at(), None);
        track.keyframe_wanted = Some(t0);
        assert_eq!(track.keyframe_request_at(), Some(t0));
        track.holes.arrived(1, t0);
        track.holes.arrived(3, t0 + ms(100)); // 2 is missing: a NACK may still bring it
        assert_eq!(track.keyframe_request_at(), Some(t0 + HOLE_LIFETIME));
        track.holes.delivered(2, 2);
        assert_eq!(track.keyframe_request_at(), Some(t0));
        track.last_keyframe_request = Some(t0 + ms(10));
        assert_eq!(
            track.keyframe_request_at(),
            Some(t0 + ms(10) + KEYFRAME_INTERVAL)
        );
    }
}
