//! A `Peer` against a str0m sender standing in for the SFU, over a simulated network (packets handed over in
//! memory, on a simulated clock, as str0m's own tests drive two peers): the receive path the I/O thread runs,
//! from datagrams in to frames and keyframe requests out, without sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Poll;
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::Receive;
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::{build_rtc, Peer};
use crate::net::Net;
use crate::out::Out;

const STEP: Duration = Duration::from_millis(1);

/// A frame our peer handed over: (mid, mime, rtp time, keyframe, contiguous, data).
type Received = (String, &'static str, u64, bool, bool, Vec<u8>);

/// Our peer, the sending "SFU", and the wire between them.
struct Wire {
    peer: Peer,
    sfu: Rtc,
    mid: Mid,
    now: Instant,
    out: Vec<Out>,
    /// The PLIs the SFU got.
    plis: usize,
    /// RTP packets from the SFU are counted; the one with this number (from 0) is dropped.
    drop_rtp: Option<usize>,
    rtp_sent: usize,
}

impl Wire {
    /// Negotiate one `kind` track from the SFU to our peer and run until both are connected.
    fn connect(kind: MediaKind) -> Wire {
        let now = Instant::now();
        let poll = Poll::new().expect("poll");
        // A real socket only for its address (our host candidate); what the peer sends is tapped.
        let socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let local = socket.local_addr().expect("local address");
        let registry = poll.registry().try_clone().expect("registry");
        let mut net = Net::new(1, registry, vec![(socket, local)], Vec::new());
        net.tap = Some(Vec::new());
        let mut peer = Peer::new(1, build_rtc(now, None), net, now);
        let mut out = Vec::new();
        peer.start(now, &mut out);

        let mut sfu = Rtc::builder().build(now);
        let sfu_address: SocketAddr = "10.0.0.1:7882".parse().unwrap();
        sfu.add_local_candidate(Candidate::host(sfu_address, "udp").unwrap());
        let mut change = sfu.sdp_api();
        let mid = change.add_media(kind, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        peer.accept_offer(7, &offer.to_sdp_string(), now, &mut out);
        let answer = out
            .iter()
            .find_map(|o| match o {
                Out::Answer { req: 7, result, .. } => Some(result.clone()),
                _ => None,
            })
            .expect("an answer")
            .expect("the offer accepted");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("a valid answer");
        sfu.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        let mut wire = Wire {
            peer,
            sfu,
            mid,
            now,
            out,
            plis: 0,
            drop_rtp: None,
            rtp_sent: 0,
        };
        for _ in 0..5000 {
            if wire.sfu.is_connected() && wire.states().contains(&"connected") {
                return wire;
            }
            wire.run(STEP);
        }
        panic!("not connected: {:?}", wire.states());
    }

    fn states(&self) -> Vec<&'static str> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::State { state, .. } => Some(*state),
                _ => None,
            })
            .collect()
    }

    /// Advance the simulated clock by `span`, running both sides' timers and handing packets over.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.now += STEP;
            if self.now >= self.peer.deadline {
                self.peer.timeout(self.now, &mut self.out);
            }
            self.sfu.handle_input(Input::Timeout(self.now)).unwrap();
            self.exchange();
        }
    }

    /// Hand packets both ways until neither side has any left to send.
    fn exchange(&mut self) {
        loop {
            loop {
                let t = match self.sfu_output() {
                    Output::Timeout(_) => break,
                    Output::Event(_) => continue,
                    Output::Transmit(t) => t,
                };
                if self.dropped(&t.contents) {
                    continue;
                }
                let (proto, source, destination) = (t.proto, t.source, t.destination);
                self.peer.feed(
                    proto,
                    source,
                    destination,
                    &t.contents,
                    self.now,
                    &mut self.out,
                );
            }
            let sent = self.peer.net.tap.replace(Vec::new()).unwrap_or_default();
            if sent.is_empty() {
                return;
            }
            for t in sent {
                let receive = Receive::new(t.proto, t.source, t.destination, &t.contents).unwrap();
                self.sfu
                    .handle_input(Input::Receive(self.now, receive))
                    .unwrap();
            }
        }
    }

    /// The SFU's next output; PLIs are counted.
    fn sfu_output(&mut self) -> Output {
        let output = self.sfu.poll_output().unwrap();
        if let Output::Event(Event::KeyframeRequest(r)) = &output {
            self.plis += usize::from(r.kind == KeyframeRequestKind::Pli);
        }
        output
    }

    /// Whether to lose this datagram from the SFU (the chosen RTP media packet).
    fn dropped(&mut self, datagram: &[u8]) -> bool {
        let rtp =
            datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1]);
        if !rtp {
            return false;
        }
        self.rtp_sent += 1;
        self.drop_rtp == Some(self.rtp_sent - 1)
    }

    /// The SFU sends one frame of its track's `codec`.
    fn send(&mut self, codec: Codec, rtp_time: u64, data: &[u8]) {
        let clock = if codec == Codec::Opus {
            Frequency::FORTY_EIGHT_KHZ
        } else {
            Frequency::NINETY_KHZ
        };
        let writer = self.sfu.writer(self.mid).expect("a writer");
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .expect("the codec negotiated")
            .pt();
        writer
            .write(pt, self.now, MediaTime::new(rtp_time, clock), data.to_vec())
            .unwrap();
        self.exchange();
    }

    /// The frames our peer handed over.
    fn frames(&self) -> Vec<Received> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::Frame {
                    mid,
                    pt_mime,
                    time,
                    keyframe,
                    contiguous,
                    data,
                    ..
                } => Some((
                    mid.clone(),
                    *pt_mime,
                    *time,
                    *keyframe,
                    *contiguous,
                    data.to_vec(),
                )),
                _ => None,
            })
            .collect()
    }
}

/// A VP8 frame: the first byte's lowest bit clear marks a keyframe (RFC 6386 §9.1).
fn vp8(keyframe: bool, n: u8) -> Vec<u8> {
    vec![if keyframe { 0x10 } else { 0x11 }, 0x00, 0x00, n]
}

#[test]
fn opus_frames_arrive_whole_in_order_announced_once() {
    let mut wire = Wire::connect(MediaKind::Audio);
    let start = 48_000 * 10;
    for i in 0..50u64 {
        wire.send(Codec::Opus, start + i * 960, &[0xfc, i as u8, 0xaa]);
        wire.run(Duration::from_millis(20));
    }
    let mid = wire.mid.to_string();
    let media: Vec<_> = wire
        .out
        .iter()
        .filter_map(|o| match o {
            Out::Media {
                mid, kind, mime, ..
            } => Some((mid.clone(), *kind, *mime)),
            _ => None,
        })
        .collect();
    assert_eq!(media, [(mid.clone(), "audio", "audio/opus")]);
    let frames = wire.frames();
    assert_eq!(frames.len(), 50);
    for (i, (frame_mid, mime, time, keyframe, contiguous, data)) in frames.into_iter().enumerate() {
        assert_eq!((frame_mid.as_str(), mime), (mid.as_str(), "audio/opus"));
        assert_eq!(time, start + i as u64 * 960);
        assert!(keyframe && contiguous, "audio frames are all usable");
        assert_eq!(data, [0xfc, i as u8, 0xaa]);
    }
    let stats = wire.peer.stats();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].frames_received, stats[0].frames_dropped), (50, 0));
    assert_eq!(stats[0].keyframe_requests, 0);
}

#[test]
fn video_starting_without_a_keyframe_asks_for_one_until_it_comes() {
    let mut wire = Wire::connect(MediaKind::Video);
    let frame_time = 3000;
    for i in 0..40u64 {
        wire.send(Codec::Vp8, i * frame_time, &vp8(false, i as u8));
        wire.run(Duration::from_millis(33));
    }
    let asked = wire.plis;
    // Asked at once, then every KEYFRAME_INTERVAL (500 ms) over these 1.3 s.
    assert!((2..=4).contains(&asked), "{asked} PLIs");
    wire.send(Codec::Vp8, 40 * frame_time, &vp8(true, 40));
    wire.run(Duration::from_millis(33));
    for i in 41..60u64 {
        wire.send(Codec::Vp8, i * frame_time, &vp8(false, i as u8));
        wire.run(Duration::from_millis(33));
    }
    assert_eq!(wire.plis, asked, "no PLI once a keyframe came");
    let frames = wire.frames();
    assert_eq!(frames.len(), 60);
    assert!(frames.iter().all(|f| f.1 == "video/vp8"));
    let keyframes: Vec<u64> = frames.iter().filter(|f| f.3).map(|f| f.2).collect();
    assert_eq!(keyframes, [40 * frame_time]);
    assert_eq!(wire.peer.stats()[0].keyframe_requests, asked as u64);
}

#[test]
fn a_lost_video_packet_is_nacked_and_recovered_without_a_keyframe_request() {
    let mut wire = Wire::connect(MediaKind::Video);
    for i in 0..10u64 {
        wire.send(Codec::Vp8, i * 3000, &vp8(i == 0, i as u8));
        wire.run(Duration::from_millis(33));
    }
    wire.drop_rtp = Some(wire.rtp_sent + 1); // the second packet from now on
    for i in 10..30u64 {
        wire.send(Codec::Vp8, i * 3000, &vp8(false, i as u8));
        wire.run(Duration::from_millis(33));
    }
    let frames = wire.frames();
    assert_eq!(frames.len(), 30, "the lost frame came back");
    assert!(frames.iter().all(|f| f.4), "every frame contiguous");
    let stats = &wire.peer.stats()[0];
    assert_eq!(
        (stats.packets_recovered, stats.packets_lost),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!((stats.frames_dropped, stats.keyframe_requests), (0, 0));
    assert_eq!(wire.plis, 0);
}

#[test]
fn closing_reports_closed_once_and_stops_the_peer() {
    let mut wire = Wire::connect(MediaKind::Audio);
    let now = wire.now;
    wire.peer.close(now, &mut wire.out);
    wire.run(Duration::from_millis(300));
    wire.peer.close(wire.now, &mut wire.out);
    let closed: Vec<_> = wire
        .out
        .iter()
        .filter_map(|o| match o {
            Out::Closed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [None]);
    assert!(wire.peer.done);
}
