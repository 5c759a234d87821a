//! NACK pacing for livekit-server's retransmission rules.
//!
//! str0m NACKs every missing packet at each of its 33 ms NACK ticks, up to 5 times. livekit-server
//! (`pkg/sfu/sequencer.go`) resends a packet at most 3 times and ignores a NACK that comes within
//! min(100 ms, 2 × RTT) of the packet's last send, an RTT under 1 ms counting as its 70 ms default: on a short
//! path str0m's 5 NACKs all fall within ~170 ms and earn one resend, and a lost resend (or NACK) is final. So a
//! video stream's NACKs go out at most once per `SPACING`: up to 4 resends of a packet within str0m's wait.

use std::time::{Duration, Instant};

/// The least time between two NACK reports of one video stream: more than livekit-server's 100 ms.
pub const SPACING: Duration = Duration::from_millis(110);
/// str0m's `NACK_MIN_INTERVAL`: its NACK tick.
const STR0M_TICK: Duration = Duration::from_millis(33);

/// str0m's NACK tick, mirrored: a timeout makes NACK reports if some stream may NACK and 33 ms have passed since
/// the last tick (`Session::nack_at`).
#[derive(Debug, Default)]
pub struct NackClock {
    last: Option<Instant>,
}

impl NackClock {
    /// Whether str0m's timeout at `now` is a NACK tick (`any`: some stream may NACK); noted as the last if so.
    pub fn tick(&mut self, now: Instant, any: bool) -> bool {
        let due = any && self.last.is_none_or(|last| now >= last + STR0M_TICK);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// One video stream's gate: closed for `SPACING` after a tick that NACKed its open holes.
#[derive(Debug, Default)]
pub struct NackGate {
    closed_until: Option<Instant>,
    /// What str0m was last told (`suppress_nack(!open)`), once its stream exists.
    pub applied: Option<bool>,
}

impl NackGate {
    /// Whether the stream may NACK at `now`.
    pub fn open(&self, now: Instant) -> bool {
        self.closed_until.is_none_or(|until| now >= until)
    }

    /// A NACK tick passed with the gate open: if packets were missing, str0m NACKed them.
    pub fn ticked(&mut self, now: Instant, missing: bool) {
        if missing {
            self.closed_until = Some(now + SPACING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_ticks_every_33_ms_while_some_stream_may_nack() {
        let t0 = Instant::now();
        let mut clock = NackClock::default();
        assert!(clock.tick(t0, true));
        assert!(!clock.tick(t0 + Duration::from_millis(20), true));
        assert!(clock.tick(t0 + Duration::from_millis(33), true));
        assert!(!clock.tick(t0 + Duration::from_millis(100), false));
        assert!(clock.tick(t0 + Duration::from_millis(101), true));
    }

    #[test]
    fn a_gate_closes_for_the_spacing_after_a_tick_with_holes_only() {
        let t0 = Instant::now();
        let mut gate = NackGate::default();
        assert!(gate.open(t0));
        gate.ticked(t0, false);
        assert!(gate.open(t0 + Duration::from_millis(1)));
        gate.ticked(t0, true);
        assert!(!gate.open(t0 + SPACING - Duration::from_millis(1)));
        assert!(gate.open(t0 + SPACING));
    }
}
