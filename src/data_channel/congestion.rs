//! The data channel's congestion control: quinn's BBR with its window
//! capped near the path's measured bandwidth-delay product.
//!
//! quinn paces by window (about the window per round trip), not by BBR's
//! pacing rate, and BBR keeps up to twice its estimate of the path in
//! flight, more while that estimate runs high. Through a drop-tail queue
//! of about one bandwidth-delay product the surplus overflows the queue
//! again and again: a quarter of the packets or more dropped, each resent,
//! at a link's full rate (measured on the WAN test bed). [`Capped`] keeps
//! BBR's loss handling and startup and only lowers its window to
//! `gain × delivery rate × minimum round trip`: the delivery rate is the
//! highest rate at which acknowledgements arrived over one minimum round
//! trip, within the last few round trips; gain is BBR's own startup gain
//! while that rate grows ([`CHECK_GAIN`] after a round trip in which it
//! did not), then, once it has stopped growing, [`STEADY_GAIN`], which leaves at
//! most half a round trip of data queued in the path. Every window gets
//! [`SHARE_PACKETS`] on top, the same for each flow whatever its rate:
//! that is what makes sessions sharing a bottleneck converge to equal
//! shares.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Bbr, BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Window gain while the delivery rate still grows (BBR's startup gain).
const STARTUP_GAIN: f64 = 2.885;
/// Window gain once it has stopped growing: the path's bandwidth-delay
/// product plus half of it queued.
pub const STEADY_GAIN: f64 = 1.5;
/// Window gain in startup after a sample that did not grow, while startup
/// makes sure the rate has stopped growing: still room for the rate to
/// double in a round trip (then the startup gain is back), but not the
/// startup gain's surplus, which at the path's rate overflows a queue of
/// 1.5 bandwidth-delay products for each of those round trips (on the WAN
/// bed: about 1,200 packets dropped per run, at times ten times that,
/// against about 800 with this gain).
const CHECK_GAIN: f64 = 2.0;
/// Startup ends after this many rate samples without 25 % growth.
const ROUNDS_WITHOUT_GROWTH: u32 = 3;
/// Rate samples are kept this many minimum round trips.
const FILTER_ROUNDS: u32 = 6;
/// A sample spans at least this long, however short the round trip.
const MIN_SAMPLE: Duration = Duration::from_millis(10);
/// The window never drops below this many full packets.
const MIN_PACKETS: u64 = 16;
/// Full packets every capped window gets on top of its share: what makes
/// flows that share a bottleneck converge to equal rates (with a cap
/// proportional to each flow's own rate alone, any split would stay).
const SHARE_PACKETS: u64 = 96;

/// Builds [`Capped`] controllers around quinn's BBR.
#[derive(Debug, Default)]
pub struct CappedBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for CappedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Capped {
            bbr: Box::new(Bbr::new(Arc::clone(&self.bbr), current_mtu)),
            mtu: current_mtu,
            rate: DeliveryRate::new(now),
            yielding: false,
        })
    }
}

/// quinn's BBR, its window capped by [`DeliveryRate::cap`].
#[derive(Clone)]
pub struct Capped {
    bbr: Box<Bbr>,
    mtu: u16,
    rate: DeliveryRate,
    /// Since persistent congestion, until BBR's window is back above half
    /// the cap: BBR's window counts even while it holds back.
    yielding: bool,
}

impl Controller for Capped {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        let held_back = held_back(
            self.bbr.window(),
            self.rate.cap(self.mtu),
            self.rate.startup,
        );
        self.yielding &= held_back;
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
        self.rate
            .acked(now, bytes, app_limited || held_back, rtt.min());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // quinn's BBR leaves startup at the first round without growth
        // while it recovers from a loss: on a path that drops packets at
        // random it is recovering all the time, leaves startup after a
        // round or two at a fraction of the path's rate, and then creeps
        // up a probe every few round trips (on the WAN bed at 0.5 % loss,
        // most of a second to reach the link's rate). So startup is this
        // controller's own (see `window`): while the delivery rate still
        // grows, a loss says nothing of a full path and BBR does not hear
        // of it; quinn resends what was lost all the same. Persistent
        // congestion ends startup, and BBR hears of it.
        if is_persistent_congestion {
            self.rate.startup = false;
            self.yielding = true;
        } else if self.rate.startup {
            return;
        }
        self.bbr
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu;
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        // Never below BBR's initial window: a session's first requests go
        // out before the rate is known, from a sender mostly idle.
        let floor = (MIN_PACKETS * u64::from(self.mtu)).max(self.bbr.initial_window());
        match self.rate.cap(self.mtu) {
            // Startup: the cap itself, which grows with the delivery rate
            // at the startup gain each round trip.
            Some(cap) if self.rate.startup => cap.max(floor),
            // BBR holding back (probing the round trip, or recovering with
            // little in flight after an idle spell): the cap, unless the
            // path was lost for a while.
            Some(cap) if held_back(self.bbr.window(), Some(cap), false) && !self.yielding => {
                cap.max(floor)
            }
            Some(cap) => self.bbr.window().min(cap.max(floor)),
            None => self.bbr.window(),
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.bbr.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Whether BBR holds its window well below the cap (`bbr_window` under
/// half of it), as it does while it probes the round trip (every ten
/// seconds, for a round trip and 200 ms, at three quarters of its own
/// estimate, which an idle spell may have left low), while it recovers
/// from a loss with little in flight (its window is then what was in
/// flight, and on a randomly lossy path it is always recovering: after an
/// idle spell, a few packets), and after persistent congestion. What is
/// delivered meanwhile is BBR's choice, not the path's: a sample of it
/// counts only if it raises the estimate, as one the application held
/// back, and the window is the cap (but after persistent congestion).
/// Else a transfer's last requests (the final commits, after the data)
/// went out a few packets a round trip. Not in startup, where the cap
/// alone is the window.
fn held_back(bbr_window: u64, cap: Option<u64>, startup: bool) -> bool {
    !startup && cap.is_some_and(|cap| bbr_window < cap / 2)
}

/// The rate at which acknowledged bytes arrive: one sample per minimum
/// round trip, the highest of the last [`FILTER_ROUNDS`] kept.
#[derive(Debug, Clone)]
struct DeliveryRate {
    /// Where the current sample began, and the bytes acknowledged since.
    start: Instant,
    bytes: u64,
    /// Whether anything in the current sample was acknowledged while the
    /// sender had nothing to send (the rate then says little of the path).
    app_limited: bool,
    /// Finished samples: when each ended, and bytes per second.
    samples: VecDeque<(Instant, f64)>,
    /// The current sample's rate so far, once it spans a quarter of its
    /// length (0 before).
    in_progress: f64,
    min_rtt: Duration,
    /// Still growing (startup), and the best rate startup has seen.
    startup: bool,
    startup_best: f64,
    rounds_without_growth: u32,
}

impl DeliveryRate {
    fn new(now: Instant) -> DeliveryRate {
        DeliveryRate {
            start: now,
            bytes: 0,
            app_limited: false,
            samples: VecDeque::new(),
            in_progress: 0.0,
            min_rtt: Duration::ZERO,
            startup: true,
            startup_best: 0.0,
            rounds_without_growth: 0,
        }
    }

    fn acked(&mut self, now: Instant, bytes: u64, app_limited: bool, min_rtt: Duration) {
        self.min_rtt = min_rtt;
        self.bytes += bytes;
        self.app_limited |= app_limited;
        let span = now.saturating_duration_since(self.start);
        let length = min_rtt.max(MIN_SAMPLE);
        if span < length {
            if span >= length / 4 && !self.app_limited {
                self.in_progress = self.bytes as f64 / span.as_secs_f64();
            }
            return;
        }
        self.in_progress = 0.0;
        let rate = self.bytes as f64 / span.as_secs_f64();
        let best = self.best();
        // A sample the application held back counts only when it raises
        // the estimate: the path carried at least that much.
        if !self.app_limited || rate > best {
            self.samples.push_back((now, rate));
            if self.startup && !self.app_limited {
                if rate >= self.startup_best * 1.25 {
                    self.startup_best = rate;
                    self.rounds_without_growth = 0;
                } else {
                    self.rounds_without_growth += 1;
                    self.startup = self.rounds_without_growth < ROUNDS_WITHOUT_GROWTH;
                }
            }
        }
        let keep = min_rtt.max(MIN_SAMPLE) * FILTER_ROUNDS;
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(end, _)| now.saturating_duration_since(*end) > keep)
        {
            self.samples.pop_front();
        }
        self.start = now;
        self.bytes = 0;
        self.app_limited = false;
    }

    /// What the cap is based on: the highest sample kept; in startup also
    /// the sample in progress (as of the last acknowledgement), since a
    /// rate that doubles each round trip has outgrown the last finished
    /// sample before the next one ends (the cap would hold the window to
    /// half of BBR's doubling, and the ramp would take twice as long).
    fn estimate(&self) -> f64 {
        if self.startup {
            self.best().max(self.in_progress)
        } else {
            self.best()
        }
    }

    /// The highest sample kept, bytes per second.
    fn best(&self) -> f64 {
        self.samples
            .iter()
            .map(|(_, rate)| *rate)
            .fold(0.0, f64::max)
    }

    /// The window cap in bytes, once there is a sample to base it on: the
    /// gain times the rate [`estimate`](Self::estimate) times the least
    /// round trip, and [`SHARE_PACKETS`] of `mtu` bytes on top.
    fn cap(&self, mtu: u16) -> Option<u64> {
        if self.samples.is_empty() || self.min_rtt.is_zero() {
            return None;
        }
        let gain = if self.startup && self.rounds_without_growth == 0 {
            STARTUP_GAIN
        } else if self.startup {
            CHECK_GAIN
        } else {
            STEADY_GAIN
        };
        let share = SHARE_PACKETS * u64::from(mtu);
        Some((gain * self.estimate() * self.min_rtt.as_secs_f64()) as u64 + share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);
    const MTU: u16 = 1452;
    const SHARE: f64 = (SHARE_PACKETS * MTU as u64) as f64;

    /// Acknowledgements at `rate` bytes/s for `rounds` round trips, in
    /// ten acks per round trip.
    fn feed(rate: &mut DeliveryRate, now: &mut Instant, bytes_per_sec: f64, rounds: u32) {
        for _ in 0..rounds * 10 {
            *now += RTT / 10;
            rate.acked(*now, (bytes_per_sec / 100.0) as u64, false, RTT);
        }
    }

    #[test]
    fn the_cap_follows_the_delivery_rate_with_the_startup_gain_then_the_steady_one() {
        let mut now = Instant::now();
        let mut rate = DeliveryRate::new(now);
        assert_eq!(rate.cap(MTU), None);
        // Growing: doubling each round trip keeps startup on.
        for step in 0..5 {
            feed(&mut rate, &mut now, 1e6 * f64::from(1 << step), 1);
        }
        assert!(rate.startup);
        let cap = rate.cap(MTU).unwrap() as f64;
        assert!(
            (cap - STARTUP_GAIN * 16e6 * 0.1 - SHARE).abs() < 0.05 * cap,
            "{cap}"
        );
        // Flat at 25 MB/s (200 Mbit/s): startup ends, the cap is 1.5 BDP.
        feed(&mut rate, &mut now, 25e6, 5);
        assert!(!rate.startup);
        let cap = rate.cap(MTU).unwrap() as f64;
        assert!(
            (cap - STEADY_GAIN * 25e6 * 0.1 - SHARE).abs() < 0.05 * cap,
            "{cap}"
        );
    }

    #[test]
    fn a_startup_sample_that_did_not_grow_lowers_the_gain_until_the_rate_grows_again() {
        let mut now = Instant::now();
        let mut rate = DeliveryRate::new(now);
        let gain = |rate: &DeliveryRate, bytes_per_sec: f64| {
            (rate.cap(MTU).unwrap() as f64 - SHARE) / (bytes_per_sec * RTT.as_secs_f64())
        };
        for step in 0..4 {
            feed(&mut rate, &mut now, 1e6 * f64::from(1 << step), 1);
        }
        assert!((gain(&rate, 8e6) - STARTUP_GAIN).abs() < 0.05);
        // A flat round trip: still startup, at the lower gain.
        feed(&mut rate, &mut now, 8e6, 1);
        assert!(rate.startup);
        assert!((gain(&rate, 8e6) - CHECK_GAIN).abs() < 0.05);
        // Growing again: the startup gain is back.
        feed(&mut rate, &mut now, 16e6, 1);
        assert!(rate.startup);
        assert!((gain(&rate, 16e6) - STARTUP_GAIN).abs() < 0.05);
    }

    #[test]
    fn in_startup_the_cap_leaves_room_for_doubling_before_a_sample_ends() {
        let mut now = Instant::now();
        let mut rate = DeliveryRate::new(now);
        for step in 0..4 {
            feed(&mut rate, &mut now, 1e6 * f64::from(1 << step), 1);
        }
        // Nine tenths into the next round trip, at twice the last rate:
        // BBR's window doubles to twice what that round trip carries.
        let doubled = 16e6;
        for _ in 0..9 {
            now += RTT / 10;
            rate.acked(now, (doubled / 100.0) as u64, false, RTT);
        }
        let needed = 2.0 * doubled * RTT.as_secs_f64();
        let cap = rate.cap(MTU).unwrap() as f64;
        assert!(cap >= needed, "cap {cap} < {needed}");
        // Once startup is over, only finished samples count.
        feed(&mut rate, &mut now, 25e6, 5);
        assert!(!rate.startup);
        // (A round trip's worth at once ends a sample: the next begins now.)
        now += RTT;
        rate.acked(now, (25e6 / 10.0) as u64, false, RTT);
        let steady = rate.cap(MTU).unwrap();
        for _ in 0..5 {
            now += RTT / 10;
            rate.acked(now, (50e6 / 100.0) as u64, false, RTT);
        }
        assert!(rate.in_progress > rate.best());
        assert_eq!(rate.cap(MTU).unwrap(), steady);
    }

    #[test]
    fn a_window_bbr_holds_far_below_the_cap_does_not_lower_the_estimate() {
        assert!(held_back(71_419, Some(3_900_000), false));
        assert!(!held_back(14_000_000, Some(3_900_000), false));
        assert!(!held_back(3_000_000, Some(3_900_000), false));
        assert!(!held_back(71_419, Some(3_900_000), true));
        assert!(!held_back(71_419, None, false));
        // Such samples are taken as the application's: see
        // `an_idle_sender_keeps_its_estimate`.
    }

    #[test]
    fn the_cap_stands_in_for_a_bbr_window_held_back_but_not_after_persistent_congestion() {
        let mut now = Instant::now();
        let mut controller = Capped {
            bbr: Box::new(Bbr::new(Arc::new(BbrConfig::default()), MTU)),
            mtu: MTU,
            rate: DeliveryRate::new(now),
            yielding: false,
        };
        feed(&mut controller.rate, &mut now, 25e6, 10);
        controller.rate.startup = false;
        let cap = controller.rate.cap(MTU).unwrap();
        // BBR, which heard of no acknowledgement, holds its initial window.
        assert!(controller.bbr.window() < cap / 2);
        assert_eq!(controller.window(), cap);
        controller.on_congestion_event(now, now, true, 10 * u64::from(MTU));
        assert!(controller.yielding);
        assert_eq!(controller.window(), controller.bbr.window());
    }

    #[test]
    fn a_lower_rate_lowers_the_cap_only_after_the_filter_forgets_the_higher() {
        let mut now = Instant::now();
        let mut rate = DeliveryRate::new(now);
        feed(&mut rate, &mut now, 25e6, 10);
        let high = rate.cap(MTU).unwrap();
        feed(&mut rate, &mut now, 5e6, 3);
        assert_eq!(rate.cap(MTU).unwrap(), high);
        feed(&mut rate, &mut now, 5e6, FILTER_ROUNDS + 2);
        assert!(rate.cap(MTU).unwrap() < high / 3);
    }

    #[test]
    fn an_idle_sender_keeps_its_estimate() {
        let mut now = Instant::now();
        let mut rate = DeliveryRate::new(now);
        feed(&mut rate, &mut now, 25e6, 10);
        let high = rate.cap(MTU).unwrap();
        // Application-limited trickle for many round trips.
        for _ in 0..200 {
            now += RTT / 10;
            rate.acked(now, 1000, true, RTT);
        }
        assert_eq!(rate.cap(MTU).unwrap(), high);
    }

    /// Two flows through one bottleneck of 25 MB/s with a 100 ms least
    /// round trip, in a fluid model: each keeps its capped window in
    /// flight, and what exceeds the path's bandwidth-delay product waits
    /// in the queue, which lengthens the round trip for both. They start
    /// 4:1 and end near 1:1 (with caps proportional to each flow's own
    /// rate alone, any split would stay as it started).
    #[test]
    fn two_flows_through_one_bottleneck_converge_to_equal_shares() {
        const CAPACITY: f64 = 25e6;
        let mut now = Instant::now();
        let mut flows = [DeliveryRate::new(now), DeliveryRate::new(now)];
        for _ in 0..10 {
            now += RTT;
            flows[0].acked(now, 2_000_000, false, RTT);
            flows[1].acked(now, 500_000, false, RTT);
        }
        let rates = |flows: &[DeliveryRate; 2]| {
            let windows = [0, 1].map(|i| flows[i].cap(MTU).unwrap() as f64);
            let total: f64 = windows.iter().sum();
            let rtt = RTT.as_secs_f64().max(total / CAPACITY);
            (windows.map(|w| w / rtt), rtt)
        };
        let (start, _) = rates(&flows);
        assert!(start[0] > 3.0 * start[1], "{start:?}");
        for _ in 0..300 {
            let (rate, rtt) = rates(&flows);
            for _ in 0..10 {
                now += Duration::from_secs_f64(rtt / 10.0);
                for (flow, rate) in flows.iter_mut().zip(rate) {
                    flow.acked(now, (rate * rtt / 10.0) as u64, false, RTT);
                }
            }
        }
        let (end, _) = rates(&flows);
        let ratio = end[0] / end[1];
        assert!((0.8..1.25).contains(&ratio), "{end:?}");
        // And they fill the link between them.
        assert!(end[0] + end[1] > 0.95 * CAPACITY, "{end:?}");
    }
}
