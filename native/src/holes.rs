//! Losses on the wire of one track's main RTP stream, and how each was repaired.
//!
//! str0m counts NACKs but not what they brought back, so the peer looks at each datagram's clear RTP
//! header (SRTP leaves it unencrypted): a sequence number skipped on the main SSRC is a hole. A hole is
//! then filled by a late packet on the main SSRC (`late`: reordering, or a plain retransmission where no
//! RTX is negotiated, as for Opus), or by a frame str0m delivers that covers it (`recovered`: the packet
//! came in an RTX retransmission or a RED block), or it stays open for `HOLE_LIFETIME` (`lost`).
//! While a hole is open a keyframe request waits: livekit-server stops answering NACKs from a PLI until
//! the next keyframe (`FlagStopRTXOnPLI`), so an early PLI would turn a repairable loss into a lost GOP.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a hole may still be repaired; str0m gives a missing video packet up after 600 ms.
pub const HOLE_LIFETIME: Duration = Duration::from_millis(650);
/// A jump of more sequence numbers than this is a new stream position, not a loss.
const MAX_GAP: u16 = 1000;

/// The holes of one main RTP stream and the counters of how they ended.
#[derive(Debug, Default)]
pub struct Holes {
    highest: Option<u16>,
    open: VecDeque<(u16, Instant)>,
    pub lost: u64,
    pub recovered: u64,
    pub late: u64,
}

impl Holes {
    /// A packet with sequence number `seq` arrived on the main SSRC.
    pub fn arrived(&mut self, seq: u16, now: Instant) {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            return;
        };
        let ahead = seq.wrapping_sub(highest);
        if ahead == 0 {
            return;
        }
        if ahead < 0x8000 {
            if ahead <= MAX_GAP {
                for k in 1..ahead {
                    self.open.push_back((highest.wrapping_add(k), now));
                }
            }
            self.highest = Some(seq);
        } else if self.fill(seq) {
            self.late += 1;
        }
        self.expire(now);
    }

    /// str0m delivered a frame made of the packets `first..=last` (sequence numbers, extended).
    pub fn delivered(&mut self, first: u64, last: u64) {
        if self.open.is_empty() || last.saturating_sub(first) > u64::from(MAX_GAP) {
            return;
        }
        for seq in first..=last {
            if self.fill(seq as u16) {
                self.recovered += 1;
            }
        }
    }

    /// When the oldest open hole is given up, if one is open (a retransmission may still fill it until then).
    pub fn repair_deadline(&self) -> Option<Instant> {
        self.open.front().map(|&(_, since)| since + HOLE_LIFETIME)
    }

    /// Holes still open: missing packets a retransmission may yet fill.
    pub fn open(&self) -> u64 {
        self.open.len() as u64
    }

    /// Holes older than `HOLE_LIFETIME` are lost.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(_, since)) = self.open.front() {
            if now.duration_since(since) < HOLE_LIFETIME {
                break;
            }
            self.open.pop_front();
            self.lost += 1;
        }
    }

    fn fill(&mut self, seq: u16) -> bool {
        match self.open.iter().position(|&(s, _)| s == seq) {
            Some(i) => {
                self.open.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_end_late_recovered_or_lost() {
        let t0 = Instant::now();
        let mut h = Holes::default();
        for seq in [65530u16, 65531, 65534, 1, 2] {
            h.arrived(seq, t0); // holes: 65532, 65533, 65535, 0
        }
        assert_eq!(h.open(), 4);
        h.arrived(65533, t0); // reordered
        h.delivered(65532, 65532); // came in an RTX packet
        h.delivered(65536 + 1, 65536 + 2); // no hole in it
        assert_eq!(h.repair_deadline(), Some(t0 + HOLE_LIFETIME));
        h.expire(t0 + HOLE_LIFETIME);
        assert_eq!(h.repair_deadline(), None);
        assert_eq!((h.late, h.recovered, h.lost, h.open()), (1, 1, 2, 0));
    }

    #[test]
    fn a_jump_is_not_a_loss() {
        let t0 = Instant::now();
        let mut h = Holes::default();
        h.arrived(10, t0);
        h.arrived(10 + MAX_GAP + 1, t0);
        h.arrived(10 + MAX_GAP + 2, t0);
        h.expire(t0 + HOLE_LIFETIME);
        assert_eq!((h.late, h.recovered, h.lost), (0, 0, 0));
    }
}
