//! What one subscriber saw, kept in its own task (no lock per message), and the sum of them.
//!
//! Per publisher a subscriber remembers the highest sequence number seen: the same number again
//! is a duplicate, a lower one an order violation. Losses are counted globally at the end
//! (expected minus received). Latencies go into an HDR histogram with two significant digits
//! (1% resolution), which stays a few KiB per subscriber; the histograms are added at the end.

use hdrhistogram::Histogram;

/// Two significant digits: ample for percentiles, small enough for thousands of subscribers.
const SIGFIG: u8 = 2;

fn histogram() -> Histogram<u64> {
    // Auto-resizing from 1 µs: only as large as the largest latency seen needs.
    Histogram::new(SIGFIG).unwrap_or_else(|_| unreachable!("2 significant digits are valid"))
}

/// One subscriber's counts.
#[derive(Debug)]
pub struct SubStats {
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub latency_us: Histogram<u64>,
    /// Highest sequence number seen, per publisher.
    last: Vec<Option<u64>>,
    /// Publishers whose closing message arrived.
    done: Vec<bool>,
    done_count: usize,
}

/// Whether a subscriber has heard everything it is going to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Open,
    /// Every publisher's closing message arrived: nothing more will come.
    AllDone,
}

impl SubStats {
    pub fn new(publishers: usize) -> SubStats {
        SubStats {
            received: 0,
            duplicates: 0,
            reordered: 0,
            latency_us: histogram(),
            last: vec![None; publishers],
            done: vec![false; publishers],
            done_count: 0,
        }
    }

    /// Counts message `n` of publisher `p`, published at `t` and received at `now` (both µs).
    pub fn record(&mut self, p: u64, n: u64, t: u64, now: u64) {
        let Ok(p) = usize::try_from(p) else {
            return;
        };
        if p >= self.last.len() {
            self.last.resize(p + 1, None);
        }
        match self.last[p] {
            Some(last) if n == last => self.duplicates += 1,
            Some(last) if n < last => self.reordered += 1,
            _ => self.last[p] = Some(n),
        }
        self.received += 1;
        let latency = now.saturating_sub(t).max(1);
        // `record` grows the histogram as needed (`saturating_record` would clamp instead).
        if self.latency_us.record(latency).is_err() {
            self.latency_us.saturating_record(latency);
        }
    }

    /// Notes publisher `p`'s closing message (sent to every room after its last message).
    pub fn done(&mut self, p: u64) -> Progress {
        if let Ok(p) = usize::try_from(p)
            && let Some(seen) = self.done.get_mut(p)
            && !*seen
        {
            *seen = true;
            self.done_count += 1;
        }
        if self.done_count == self.done.len() {
            Progress::AllDone
        } else {
            Progress::Open
        }
    }
}

/// Every subscriber's counts added up.
#[derive(Debug)]
pub struct Totals {
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub latency_us: Histogram<u64>,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            received: 0,
            duplicates: 0,
            reordered: 0,
            latency_us: histogram(),
        }
    }
}

impl Totals {
    pub fn add(&mut self, s: &SubStats) {
        self.received += s.received;
        self.duplicates += s.duplicates;
        self.reordered += s.reordered;
        // Both histograms auto-resize, so adding cannot run out of range.
        let _ = self.latency_us.add(&s.latency_us);
    }

    /// The latency at quantile `q`, in milliseconds (0 when nothing was received).
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        let us = if q >= 1.0 {
            self.latency_us.max()
        } else {
            self.latency_us.value_at_quantile(q)
        };
        us as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_duplicates_and_going_back_is_an_order_violation() {
        let mut s = SubStats::new(2);
        for (p, n) in [(0, 0), (0, 1), (1, 0), (0, 1), (0, 0), (1, 5)] {
            s.record(p, n, 0, 10);
        }
        assert_eq!((s.received, s.duplicates, s.reordered), (6, 1, 1));
    }

    #[test]
    fn a_subscriber_is_done_once_every_publisher_closed() {
        let mut s = SubStats::new(2);
        assert_eq!(s.done(1), Progress::Open);
        assert_eq!(s.done(1), Progress::Open, "a repeated close counts once");
        assert_eq!(s.done(7), Progress::Open, "an unknown publisher is ignored");
        assert_eq!(s.done(0), Progress::AllDone);
    }

    #[test]
    fn totals_add_counts_and_latencies() {
        let mut a = SubStats::new(1);
        let mut b = SubStats::new(1);
        for n in 0..99 {
            a.record(0, n, 0, 1_000);
        }
        b.record(0, 0, 0, 50_000);
        b.record(3, 0, 0, 2_000); // a publisher beyond the announced count still counts
        let mut t = Totals::default();
        t.add(&a);
        t.add(&b);
        assert_eq!(t.received, 101);
        assert!(
            (t.latency_ms(0.5) - 1.0).abs() < 0.02,
            "{}",
            t.latency_ms(0.5)
        );
        assert!(
            (t.latency_ms(1.0) - 50.0).abs() < 0.5,
            "{}",
            t.latency_ms(1.0)
        );
        assert_eq!(Totals::default().latency_ms(0.99), 0.0);
    }
}
