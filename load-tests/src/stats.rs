//! Counters shared by all sessions of a run (one thread: `Rc<RefCell<_>>`),
//! the latency histogram and per-channel index accounting.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the harness's monotonic clock. The send time that rides in
/// `messageAttributes.t` is this value, so sender and receiver (both in this
/// process) agree without any wall-clock skew.
pub fn now_ns() -> u64 {
    let e = *EPOCH.get_or_init(Instant::now);
    e.elapsed().as_nanos() as u64
}

/// Start the clock early so `t` values stay small.
pub fn init_clock() {
    let _ = now_ns();
}

/// What one `messageAdded.index` meant for its channel's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    InOrder,
    /// Index above the expected one; `missing` indices were skipped.
    Gap {
        missing: u64,
    },
    /// Index below the expected one: seen already, or late after a gap.
    Duplicate,
}

/// The expected next index of one channel in one session.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderTracker {
    next: Option<u64>,
}

impl OrderTracker {
    /// `next`: the first index this session must receive, when known (0 for a
    /// fresh channel, `lastIndex + 1` after `JoinChannel`); `None` takes the
    /// first index seen as the start.
    pub fn new(next: Option<u64>) -> Self {
        OrderTracker { next }
    }

    pub fn observe(&mut self, index: u64) -> OrderEvent {
        match self.next {
            None => {
                self.next = Some(index + 1);
                OrderEvent::InOrder
            }
            Some(n) if index == n => {
                self.next = Some(n + 1);
                OrderEvent::InOrder
            }
            Some(n) if index > n => {
                self.next = Some(index + 1);
                OrderEvent::Gap { missing: index - n }
            }
            Some(_) => OrderEvent::Duplicate,
        }
    }

    #[cfg(test)]
    pub fn next(&self) -> Option<u64> {
        self.next
    }
}

/// Trackers of the (few) channels one session receives.
#[derive(Debug, Default)]
pub struct ChannelTrackers {
    entries: Vec<(String, OrderTracker)>,
}

impl ChannelTrackers {
    pub fn expect(&mut self, sid: &str, next: Option<u64>) {
        if let Some(e) = self.entries.iter_mut().find(|(s, _)| s == sid) {
            e.1 = OrderTracker::new(next);
        } else {
            self.entries
                .push((sid.to_string(), OrderTracker::new(next)));
        }
    }

    pub fn observe(&mut self, sid: &str, index: u64) -> OrderEvent {
        if let Some(e) = self.entries.iter_mut().find(|(s, _)| s == sid) {
            return e.1.observe(index);
        }
        let mut t = OrderTracker::new(None);
        let ev = t.observe(index);
        self.entries.push((sid.to_string(), t));
        ev
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct OrderCounts {
    /// Times an index skipped ahead of the expected one.
    pub gaps: u64,
    /// Indices skipped in total by those gaps.
    pub missing_indices: u64,
    /// Times an index was at or below one already passed.
    pub duplicates: u64,
}

impl OrderCounts {
    pub fn add(&mut self, ev: OrderEvent) {
        match ev {
            OrderEvent::InOrder => {}
            OrderEvent::Gap { missing } => {
                self.gaps += 1;
                self.missing_indices += missing;
            }
            OrderEvent::Duplicate => self.duplicates += 1,
        }
    }
    pub fn violations(&self) -> u64 {
        self.gaps + self.duplicates
    }
}

/// Everything a run counts.
pub struct Stats {
    /// `messageAdded` pushes received by any session.
    pub deliveries: u64,
    /// Of those, the ones carrying this run's send time.
    pub tagged_deliveries: u64,
    /// WebSocket payload bytes of those deliveries.
    pub delivered_bytes: u64,
    /// End-to-end latency of tagged deliveries to sessions other than the
    /// author's, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Latency of other things (connect, a whole churn cycle), per name.
    pub timings: BTreeMap<&'static str, Histogram<u64>>,
    pub sent: u64,
    pub acked: u64,
    pub typing_sent: u64,
    pub typing_received: u64,
    pub other_pushes: BTreeMap<String, u64>,
    pub order: OrderCounts,
    pub errors: BTreeMap<String, u64>,
    pub conn_ok: u64,
    /// Sessions opened per `--url` (index as given).
    pub conn_ok_by_target: Vec<u64>,
    pub conn_failed: u64,
    /// Generic "units done" for the progress bar.
    pub progress: u64,
    /// Sends skipped because a session's in-flight window was full.
    pub skipped_sends: u64,
    pub encoding_mismatch: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            deliveries: 0,
            tagged_deliveries: 0,
            delivered_bytes: 0,
            latency: new_hist(),
            timings: BTreeMap::new(),
            sent: 0,
            acked: 0,
            typing_sent: 0,
            typing_received: 0,
            other_pushes: BTreeMap::new(),
            order: OrderCounts::default(),
            errors: BTreeMap::new(),
            conn_ok: 0,
            conn_ok_by_target: Vec::new(),
            conn_failed: 0,
            progress: 0,
            skipped_sends: 0,
            encoding_mismatch: 0,
        }
    }
}

/// 1 ns .. 120 s at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

impl Stats {
    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_insert(0) += 1;
    }

    /// Count a session opened to target number `target`.
    pub fn connected(&mut self, target: usize) {
        self.conn_ok += 1;
        if self.conn_ok_by_target.len() <= target {
            self.conn_ok_by_target.resize(target + 1, 0);
        }
        self.conn_ok_by_target[target] += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn timing(&mut self, name: &'static str, ns: u64) {
        self.timings
            .entry(name)
            .or_insert_with(new_hist)
            .saturating_record(ns.max(1));
    }

    pub fn push_seen(&mut self, event: &str) {
        if let Some(v) = self.other_pushes.get_mut(event) {
            *v += 1;
        } else {
            self.other_pushes.insert(event.to_string(), 1);
        }
    }

    /// Account one `messageAdded`. `own` is true when the receiving session
    /// belongs to the author (its echo): counted, but not in the latency.
    pub fn delivery(&mut self, t: Option<u64>, own: bool, order: OrderEvent, now: u64) {
        self.deliveries += 1;
        self.order.add(order);
        if let Some(t) = t {
            self.tagged_deliveries += 1;
            if !own {
                self.latency.saturating_record(now.saturating_sub(t).max(1));
            }
        }
    }
}

pub type Shared = Rc<RefCell<Stats>>;

pub fn shared() -> Shared {
    Rc::new(RefCell::new(Stats::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_in_sequence() {
        let mut t = OrderTracker::new(Some(0));
        for i in 0..10 {
            assert_eq!(t.observe(i), OrderEvent::InOrder);
        }
        assert_eq!(t.next(), Some(10));
    }

    #[test]
    fn order_gaps_and_duplicates() {
        let mut c = OrderCounts::default();
        let mut t = OrderTracker::new(Some(0));
        for i in [0, 1, 4, 5, 5, 3, 6, 9] {
            c.add(t.observe(i));
        }
        // 1 -> 4 skips 2,3; 6 -> 9 skips 7,8; 5 again and late 3 are duplicates.
        assert_eq!(c.gaps, 2);
        assert_eq!(c.missing_indices, 4);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.violations(), 4);
    }

    #[test]
    fn order_first_index_when_unknown() {
        let mut t = OrderTracker::new(None);
        assert_eq!(t.observe(17), OrderEvent::InOrder);
        assert_eq!(t.observe(18), OrderEvent::InOrder);
        // a baseline from JoinChannel lastIndex = -1 means "expect 0"
        let mut t = OrderTracker::new(Some(0));
        assert_eq!(t.observe(1), OrderEvent::Gap { missing: 1 });
    }

    #[test]
    fn trackers_per_channel() {
        let mut tr = ChannelTrackers::default();
        tr.expect("CHa", Some(0));
        assert_eq!(tr.observe("CHa", 0), OrderEvent::InOrder);
        assert_eq!(tr.observe("CHb", 5), OrderEvent::InOrder);
        assert_eq!(tr.observe("CHa", 1), OrderEvent::InOrder);
        assert_eq!(tr.observe("CHb", 5), OrderEvent::Duplicate);
        assert_eq!(tr.observe("CHa", 3), OrderEvent::Gap { missing: 1 });
    }

    #[test]
    fn counts_connections_per_target() {
        let mut s = Stats::default();
        s.connected(1);
        s.connected(1);
        s.connected(0);
        assert_eq!(s.conn_ok, 3);
        assert_eq!(s.conn_ok_by_target, [1, 2]);
    }

    #[test]
    fn delivery_latency_only_for_others() {
        let mut s = Stats::default();
        s.delivery(Some(1_000), false, OrderEvent::InOrder, 11_000);
        s.delivery(Some(1_000), true, OrderEvent::InOrder, 500_000);
        s.delivery(None, false, OrderEvent::Gap { missing: 2 }, 9);
        assert_eq!(s.deliveries, 3);
        assert_eq!(s.tagged_deliveries, 2);
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.latency.max(), s.latency.highest_equivalent(10_000));
        assert_eq!(s.order.missing_indices, 2);
    }
}
