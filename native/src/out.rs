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
/// the order of the fields of `trackegress.room.transport.TrackStats` (built from it positionally). The stub's
/// `StatsRow` spells the same tuple: checked against this one below, and against the dataclass by
/// tests/unit/test_native_stub.py.
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
        /// The latest RTCP sender report received before the frame: its NTP time (Unix nanoseconds) and the RTP
        /// timestamp (32 bits, as sent) of the same instant; None before the first one.
        sender: Option<(u64, u32)>,
    },
    Closed {
        peer: u64,
        error: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_spells_the_stats_row_rust_builds() {
        let stub = include_str!("../trackegress_native.pyi");
        let declared = stub
            .lines()
            .find_map(|l| l.strip_prefix("StatsRow: TypeAlias = tuple["))
            .and_then(|l| l.strip_suffix(']'))
            .expect("StatsRow in the stub");
        let rust = std::any::type_name::<StatsRow>();
        let python: Vec<&str> = rust
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|t| match t {
                "alloc::string::String" => "str",
                "u64" => "int",
                "f64" => "float",
                other => other,
            })
            .collect();
        assert_eq!(python.join(", "), declared);
    }
}
