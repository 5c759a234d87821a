//! What the I/O thread hands to Python: events in batches, and per-track counters.

use std::sync::Arc;
use std::time::Instant;

/// Receive counters of one track.
#[derive(Clone, Debug, Default)]
pub struct TrackStats {
    pub mid: String,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub nacks_sent: u64,
    pub packets_recovered: u64,
    pub packets_late: u64,
    /// Missing and still awaited (a retransmission may yet come).
    pub packets_missing: u64,
    pub jitter: f64,
    pub frames_received: u64,
    pub frames_dropped: u64,
    pub keyframe_requests: u64,
    /// Time spent decoding the track's Opus to PCM (only when asked to).
    pub decode_seconds: f64,
}

/// One track's counters as Python gets them (`stats()`): the fields of `TrackStats` in their order, which is
/// the order of the fields of `trackegress.room.transport.TrackStats` (built from it positionally); the stub's
/// `StatsRow` spells the same tuple.
#[rustfmt::skip]
pub type StatsRow = (String, u64, u64, u64, u64, u64, u64, f64, u64, u64, u64, f64);

impl TrackStats {
    pub fn row(&self) -> StatsRow {
        (
            self.mid.clone(),
            self.packets_received,
            self.packets_lost,
            self.nacks_sent,
            self.packets_recovered,
            self.packets_late,
            self.packets_missing,
            self.jitter,
            self.frames_received,
            self.frames_dropped,
            self.keyframe_requests,
            self.decode_seconds,
        )
    }
}

/// One event for Python.
pub enum Out {
    Answer {
        peer: u64,
        req: u64,
        result: Result<String, String>,
    },
    State {
        peer: u64,
        state: &'static str,
    },
    Candidate {
        peer: u64,
        candidate: String,
    },
    Media {
        peer: u64,
        mid: String,
        kind: &'static str,
        mime: &'static str,
    },
    Frame {
        peer: u64,
        mid: String,
        pt_mime: &'static str,
        time: u64,
        keyframe: bool,
        contiguous: bool,
        spatial: u8,
        temporal: u8,
        arrival: Instant,
        data: Arc<[u8]>,
        /// The frame decoded to 48 kHz stereo s16le, if the peer decodes Opus (empty: libopus refused it).
        pcm: Option<Vec<u8>>,
    },
    Closed {
        peer: u64,
        error: Option<String>,
    },
}
