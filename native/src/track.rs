//! One received track: how its frames are shaped for Python (codec MIME type, SVC layers, VP9 superframes, Opus
//! decoded to PCM) and when a keyframe is asked for. Knows nothing of sockets or of driving str0m.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::format::{Codec, CodecExtra};
use str0m::media::{MediaData, Mid};
use str0m::stats::MediaIngressStats;

use crate::holes::{Holes, HOLE_LIFETIME};
use crate::nack::NackGate;
use crate::opus::OpusDecoder;
use crate::out::{Out, TrackStats};

/// How often a video track without a usable picture asks for a keyframe (not while a packet may still be
/// retransmitted: see `holes`).
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// Per-track state: codec, keyframe wanted, counters.
#[derive(Default)]
pub struct Track {
    video: bool,
    announced: bool,
    /// A keyframe has been delivered (the SFU starts a video track with one, asking its publisher itself).
    keyframe_seen: bool,
    /// Since when a keyframe is wanted.
    keyframe_wanted: Option<Instant>,
    /// NACK was negotiated for the codec in use.
    pub nack: bool,
    /// The SSRC (without RTX) str0m was told to NACK (audio; video NACKs go through `nack_gate`).
    pub nack_ssrc: Option<u32>,
    /// Paces a video track's NACKs (`nack`).
    pub nack_gate: NackGate,
    last_keyframe_request: Option<Instant>,
    pub holes: Holes,
    /// Decodes the track's Opus to PCM, once the peer was asked to (`Peer::decode_opus`).
    decoder: Option<OpusDecoder>,
    stats: TrackStats,
}

impl Track {
    pub fn new(mid: Mid, video: bool) -> Self {
        Track {
            video,
            stats: TrackStats {
                mid: mid.to_string(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn is_video(&self) -> bool {
        self.video
    }

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
    pub fn keyframe_request_at(&self) -> Option<Instant> {
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

    /// Python asked for a keyframe: a video track asks its sender at once, then until one arrives.
    pub fn want_keyframe(&mut self, now: Instant) {
        if self.video {
            self.keyframe_wanted.get_or_insert(now);
            self.last_keyframe_request = None;
        }
    }

    /// A keyframe request went out at `now` (`sent`: str0m took it).
    pub fn keyframe_requested(&mut self, now: Instant, sent: bool) {
        self.last_keyframe_request = Some(now);
        self.stats.keyframe_requests += u64::from(sent);
    }

    /// str0m gave up on a frame it could not depacketize.
    pub fn bad_frame(&mut self) {
        self.stats.frames_dropped += 1;
    }

    /// str0m's periodic receive statistics of the track.
    pub fn ingress(&mut self, s: &MediaIngressStats) {
        self.stats.packets_received = s.packets;
        self.stats.nacks_sent = s.nacks;
        self.stats.jitter = f64::from(s.jitter) / if self.video { 90_000.0 } else { 48_000.0 };
    }

    /// The track's counters, with how its holes ended.
    pub fn counters(&self) -> TrackStats {
        TrackStats {
            packets_lost: self.holes.lost,
            packets_recovered: self.holes.recovered,
            packets_late: self.holes.late,
            packets_missing: self.holes.open(),
            ..self.stats.clone()
        }
    }

    /// A frame str0m delivered: announce the track with its first frame, count it, decide whether a keyframe is
    /// wanted, and hand it to Python (`decode_opus`: with its PCM).
    pub fn frame(
        &mut self,
        peer: u64,
        data: MediaData,
        decode_opus: bool,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let keyframe = data.is_keyframe();
        let pt_mime = mime(Some(data.params.spec().codec), self.video);
        if !self.announced {
            // Announced with its first frame: only then is the codec in use known.
            self.announced = true;
            out.push(Out::Media {
                peer,
                mid: data.mid.to_string(),
                kind: if self.video { "video" } else { "audio" },
                mime: pt_mime,
            });
        }
        self.nack = data.params.fb_nack();
        let (spatial, temporal) = layers(&data.codec_extra);
        self.holes
            .delivered(**data.seq_range.start(), **data.seq_range.end());
        self.stats.frames_received += 1;
        if !data.contiguous {
            self.stats.frames_dropped += 1;
        }
        if self.video {
            if keyframe {
                self.keyframe_wanted = None;
                self.keyframe_seen = true;
            } else if !data.contiguous || !self.keyframe_seen {
                self.keyframe_wanted.get_or_insert(now);
            }
        }
        let pcm = (decode_opus && pt_mime == "audio/opus").then(|| self.decode(&data.data));
        out.push(Out::Frame {
            peer,
            mid: data.mid.to_string(),
            pt_mime,
            time: data.time.numer(),
            keyframe: if self.video { keyframe } else { true },
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
            sender: data
                .last_sender_info
                .map(|sr| (unix_nanos(sr.ntp_time), sr.rtp_time.numer() as u32)),
        });
    }
}

/// A sender report's NTP time in nanoseconds since the Unix epoch (0 if before it).
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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
        let mut track = Track::new(Mid::from("1"), true);
        assert_eq!(track.keyframe_request_at(), None);
        track.want_keyframe(t0);
        assert_eq!(track.keyframe_request_at(), Some(t0));
        track.holes.arrived(1, t0);
        track.holes.arrived(3, t0 + ms(100)); // 2 is missing: a NACK may still bring it
        assert_eq!(track.keyframe_request_at(), Some(t0 + HOLE_LIFETIME));
        track.holes.delivered(2, 2);
        assert_eq!(track.keyframe_request_at(), Some(t0));
        track.keyframe_requested(t0 + ms(10), true);
        assert_eq!(
            track.keyframe_request_at(),
            Some(t0 + ms(10) + KEYFRAME_INTERVAL)
        );
        assert_eq!(track.counters().keyframe_requests, 1);
    }

    #[test]
    fn an_audio_track_never_asks_for_a_keyframe() {
        let mut track = Track::new(Mid::from("1"), false);
        track.want_keyframe(Instant::now());
        assert_eq!(track.keyframe_request_at(), None);
    }

    #[test]
    fn spatial_layers_become_a_superframe_with_its_index() {
        let data = [1u8, 2, 3, 4, 5];
        let frame = vp9_superframe(&data, &[Some(2), None, Some(5)]).expect("two layers");
        // marker 0b110_00_001: 1-byte sizes, 2 frames; then the sizes 2 and 3; the marker again
        assert_eq!(frame, [1, 2, 3, 4, 5, 0xc1, 2, 3, 0xc1]);
        let big = vec![0u8; 300];
        let frame = vp9_superframe(&big, &[Some(10), Some(300)]).expect("two layers");
        assert_eq!(frame[300..], [0xc9, 10, 0, 34, 1, 0xc9]); // 2-byte sizes: 10 and 290
    }

    #[test]
    fn a_single_layer_or_inconsistent_ends_stay_as_they_are() {
        assert_eq!(vp9_superframe(&[1, 2, 3], &[Some(3)]), None);
        assert_eq!(vp9_superframe(&[1, 2, 3], &[Some(2), Some(2)]), None);
        assert_eq!(vp9_superframe(&[1, 2, 3], &[Some(1), Some(2)]), None); // last layer ends before the data
        assert_eq!(vp9_superframe(&[1, 2, 3], &[Some(1), Some(4)]), None);
    }

    #[test]
    fn mime_types_are_lower_case_and_unknown_codecs_keep_their_kind() {
        assert_eq!(mime(Some(Codec::H264), true), "video/h264");
        assert_eq!(mime(Some(Codec::Opus), false), "audio/opus");
        assert_eq!(mime(None, true), "video/unknown");
        assert_eq!(mime(None, false), "audio/unknown");
    }
}
