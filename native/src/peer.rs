//! One receive-only WebRTC peer: driving its str0m `Rtc` (offers, candidates, timers, keyframe requests, the
//! disconnected watchdog, closing) on the I/O thread. Its sockets are in `net`, its tracks' frames in `track`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};

use crate::nack::NackClock;
use crate::net::Net;
use crate::out::{Out, TrackStats};
use crate::track::Track;

/// str0m's ICE agent retries forever; after this long `Disconnected` we report `failed`.
const DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(15);
/// A closing peer gets this long to flush its BYE / close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(200);

/// A receive-only peer and its sockets (`Net`).
pub struct Peer {
    pub id: u64,
    rtc: Rtc,
    net: Net,
    tracks: HashMap<Mid, Track>,
    pub deadline: Instant,
    disconnected_since: Option<Instant>,
    failed: bool,
    closing: Option<Instant>,
    pub done: bool,
    /// Opus frames are handed over decoded too.
    decode_opus: bool,
    nack_clock: NackClock,
}

/// The str0m configuration every peer uses: the codecs LiveKit offers that we can record; a missing packet is
/// waited for 150 ms (audio: one NACK round trip) or 600 ms (video: 5 NACKs paced as `nack` does).
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
        .set_reordering_timeout_video(Some(Duration::from_millis(600)))
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
    pub fn new(id: u64, rtc: Rtc, net: Net, now: Instant) -> Self {
        Peer {
            id,
            rtc,
            net,
            tracks: HashMap::new(),
            deadline: now,
            disconnected_since: None,
            failed: false,
            closing: None,
            done: false,
            decode_opus: false,
            nack_clock: NackClock::default(),
        }
    }

    /// Stop polling the peer's sockets and connections (it is being dropped).
    pub fn release(&mut self) {
        self.net.release();
    }

    /// Add our host candidates (the UDP sockets' addresses, active TCP on the `tcp` addresses) and report them.
    pub fn start(&mut self, now: Instant, out: &mut Vec<Out>) {
        let candidates = self.net.host_candidates();
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
        let Some(slot) = index.checked_sub(self.net.udp_count()) else {
            while let Some((len, source, local)) = self.net.recv(index, buf) {
                if !self.done && !self.feed(Protocol::Udp, source, local, &buf[..len], now, out) {
                    return;
                }
            }
            return;
        };
        let Some((local, remote, packets)) = self.net.receive_link(slot, buf) else {
            return;
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
        self.note_rtp(packet, now); // first: a hole this packet shows is NACKed in the same input
        if let Err(e) = self.input(Input::Receive(now, receive), now) {
            self.fail(format!("input: {e}"), out);
            return false;
        }
        self.drain(now, out);
        true
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
        if !track.is_video() && track.nack && rtx.is_none() && track.nack_ssrc != Some(ssrc) {
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
            Ok(mut c) if self.net.usable(&c) => {
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

    pub fn request_keyframe(&mut self, mid: &str, now: Instant, out: &mut Vec<Out>) {
        let mid = Mid::from(mid);
        if let Some(track) = self.tracks.get_mut(&mid) {
            track.want_keyframe(now);
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
        self.tracks.values().map(Track::counters).collect()
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
        if let Err(e) = self.input(Input::Timeout(now), now) {
            self.fail(format!("timeout: {e}"), out);
            return;
        }
        self.drain(now, out);
    }

    /// Hand str0m an input (each runs its timers, NACKs included), with the video tracks' NACKs paced (`nack`).
    fn input(&mut self, input: Input, now: Instant) -> Result<(), RtcError> {
        let tick = self.pace_nacks(now);
        self.rtc.handle_input(input)?;
        if tick {
            for track in self.tracks.values_mut() {
                if track.nack_gate.applied == Some(true) {
                    track.nack_gate.ticked(now, track.holes.open() > 0);
                }
            }
        }
        Ok(())
    }

    /// Open or close each video track's NACKs by its gate (`nack`); whether the timeout at `now` is a NACK tick.
    fn pace_nacks(&mut self, now: Instant) -> bool {
        let mut api = self.rtc.direct_api();
        let mut any = false;
        for (mid, track) in &mut self.tracks {
            if !track.is_video() {
                any |= track.nack_ssrc.is_some();
                continue;
            }
            let open = track.nack_gate.open(now);
            if track.nack_gate.applied != Some(open) {
                // NACK negotiated (known from the first frame) or an RTX stream (known before: str0m NACKs then).
                match api.stream_rx_by_mid(*mid, None) {
                    Some(stream) if track.nack || stream.rtx().is_some() => {
                        stream.suppress_nack(!open);
                        track.nack_gate.applied = Some(open);
                    }
                    _ => {}
                }
            }
            any |= track.nack_gate.applied == Some(true);
        }
        self.nack_clock.tick(now, any)
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
                track.keyframe_requested(now, sent);
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
                Ok(Output::Transmit(t)) => self.net.send(t),
                Ok(Output::Event(e)) => self.event(e, now, out),
                Err(RtcError::Packet(mid, pt, e)) => {
                    log::debug!("peer {}: bad frame on {mid} (pt {pt}): {e}", self.id);
                    if let Some(track) = self.tracks.get_mut(&mid) {
                        track.bad_frame();
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
                self.tracks.insert(added.mid, Track::new(added.mid, video));
            }
            Event::MediaData(data) => {
                if let Some(track) = self.tracks.get_mut(&data.mid) {
                    track.frame(peer, data, self.decode_opus, now, out);
                }
            }
            Event::MediaIngressStats(s) => {
                if let Some(track) = self.tracks.get_mut(&s.mid) {
                    track.ingress(&s);
                }
            }
            Event::Closed if self.closing.is_none() => {
                self.closing = Some(now);
                let _ = self.rtc.close();
            }
            _ => {} // data channels (the SFU's _reliable/_lossy: dropped), stats of the peer, pauses
        }
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

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
