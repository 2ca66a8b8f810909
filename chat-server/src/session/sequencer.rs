//! Per-room delivery order for one session: no gap, no duplicate.
//!
//! Events reach a session live (Pub/Sub, or the memory broker) and from history (recovery,
//! gap repair). The sequencer keeps the last offset delivered and its epoch. An event at or below
//! it is a duplicate; one that skips ahead opens a gap: the sequencer starts holding live events
//! and asks for the missing range from history; `release` then delivers the history and the held
//! events in order. A new epoch means history was lost: delivery restarts from the new epoch's
//! first offset (a gap from 0 if the first event seen of it is later than offset 1).

use std::sync::Arc;

use crate::model::RoomEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Duplicate,
    /// Held until `release`: a replay or a gap repair is under way.
    Held,
    /// Offsets `after + 1 .. until` are missing; fetch them and call `release`.
    Gap {
        after: u64,
        until: u64,
    },
}

#[derive(Debug, Default)]
pub struct Sequencer {
    last: Option<(String, u64)>,
    held: Option<Vec<Arc<RoomEvent>>>,
}

impl Sequencer {
    /// Starts holding live events (before a replay from history).
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Whether live events are being held (only the tests ask; the session knows from its ops).
    #[cfg(test)]
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    pub fn held_len(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// The last (epoch, offset) delivered.
    pub fn last(&self) -> Option<(&str, u64)> {
        self.last.as_ref().map(|(e, o)| (e.as_str(), *o))
    }

    pub fn offer(&mut self, ev: &Arc<RoomEvent>) -> Verdict {
        if let Some(held) = &mut self.held {
            held.push(ev.clone());
            return Verdict::Held;
        }
        let off = ev.offset();
        let Some((epoch, last)) = &mut self.last else {
            self.last = Some((ev.epoch().to_owned(), off));
            return Verdict::Deliver;
        };
        // A new epoch: the room's history was lost and offsets started again at 1. It starts
        // from 0, so whatever of it came before this event (it may arrive late, from a
        // catch-up read) is fetched as a gap.
        if epoch != ev.epoch() {
            *epoch = ev.epoch().to_owned();
            *last = 0;
        }
        if off <= *last {
            Verdict::Duplicate
        } else if off == *last + 1 {
            *last = off;
            Verdict::Deliver
        } else {
            let after = *last;
            self.held = Some(vec![ev.clone()]);
            Verdict::Gap { after, until: off }
        }
    }

    /// Ends holding. `baseline` (if given) becomes the last delivered position first; then
    /// `fetched` (history, oldest first) and the held events go through `offer` in order.
    /// Returns what to deliver, and a new gap if one opened (holding starts again then).
    pub fn release(
        &mut self,
        baseline: Option<(String, u64)>,
        fetched: Vec<Arc<RoomEvent>>,
    ) -> (Vec<Arc<RoomEvent>>, Option<(u64, u64)>) {
        if baseline.is_some() {
            self.last = baseline;
        }
        let held = self.held.take().unwrap_or_default();
        let mut out = Vec::with_capacity(fetched.len() + held.len());
        let mut gap = None;
        for ev in fetched.into_iter().chain(held) {
            match self.offer(&ev) {
                Verdict::Deliver => out.push(ev),
                Verdict::Gap { after, until } => gap = Some((after, until)),
                Verdict::Duplicate | Verdict::Held => {}
            }
        }
        (out, gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::room_event;

    fn ev(epoch: &str, offset: u64) -> Arc<RoomEvent> {
        room_event("r", epoch, offset)
    }

    fn offsets(v: &[Arc<RoomEvent>]) -> Vec<u64> {
        v.iter().map(|e| e.offset()).collect()
    }

    #[test]
    fn contiguous_events_are_delivered_and_repeats_dropped() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(&ev("e", 5)), Verdict::Deliver);
        assert_eq!(s.offer(&ev("e", 6)), Verdict::Deliver);
        assert_eq!(s.offer(&ev("e", 6)), Verdict::Duplicate);
        assert_eq!(s.offer(&ev("e", 3)), Verdict::Duplicate);
        assert_eq!(s.last(), Some(("e", 6)));
    }

    #[test]
    fn a_skip_ahead_opens_a_gap_that_history_fills_in_order() {
        let mut s = Sequencer::default();
        s.offer(&ev("e", 1));
        assert_eq!(s.offer(&ev("e", 4)), Verdict::Gap { after: 1, until: 4 });
        assert_eq!(s.offer(&ev("e", 5)), Verdict::Held);
        assert_eq!(s.offer(&ev("e", 4)), Verdict::Held);
        let (out, gap) = s.release(None, vec![ev("e", 2), ev("e", 3), ev("e", 4)]);
        assert_eq!(offsets(&out), vec![2, 3, 4, 5]);
        assert_eq!(gap, None);
        assert!(!s.is_holding());
    }

    #[test]
    fn a_replay_then_live_events_have_no_gap_and_no_duplicate() {
        let mut s = Sequencer::default();
        s.hold();
        // Live events that raced the history read.
        s.offer(&ev("e", 9));
        s.offer(&ev("e", 10));
        let (out, gap) = s.release(
            Some(("e".into(), 6)),
            vec![ev("e", 7), ev("e", 8), ev("e", 9)],
        );
        assert_eq!(offsets(&out), vec![7, 8, 9, 10]);
        assert_eq!(gap, None);
    }

    #[test]
    fn history_that_falls_short_reopens_the_gap() {
        let mut s = Sequencer::default();
        s.offer(&ev("e", 1));
        s.offer(&ev("e", 5));
        let (out, gap) = s.release(None, vec![ev("e", 2)]);
        assert_eq!(offsets(&out), vec![2]);
        assert_eq!(gap, Some((2, 5)));
        assert!(s.is_holding());
        // The caller gives up on the missing range by moving the baseline past it.
        let (out, gap) = s.release(Some(("e".into(), 4)), vec![]);
        assert_eq!(offsets(&out), vec![5]);
        assert_eq!(gap, None);
    }

    #[test]
    fn a_new_epoch_restarts_delivery_from_its_first_offset() {
        let mut s = Sequencer::default();
        s.offer(&ev("old", 40));
        assert_eq!(s.offer(&ev("new", 1)), Verdict::Deliver);
        assert_eq!(s.offer(&ev("new", 2)), Verdict::Deliver);
        assert_eq!(s.last(), Some(("new", 2)));
    }

    #[test]
    fn a_new_epoch_seen_first_past_offset_1_fetches_its_beginning() {
        // After a Redis restart, live Pub/Sub may bring offset 3 of the new epoch before the
        // catch-up read brings 1 and 2.
        let mut s = Sequencer::default();
        s.offer(&ev("old", 40));
        assert_eq!(s.offer(&ev("new", 3)), Verdict::Gap { after: 0, until: 3 });
        assert_eq!(s.offer(&ev("new", 1)), Verdict::Held);
        let (out, gap) = s.release(None, vec![ev("new", 1), ev("new", 2)]);
        assert_eq!(offsets(&out), vec![1, 2, 3]);
        assert_eq!(gap, None);
        assert_eq!(s.last(), Some(("new", 3)));
    }

    #[test]
    fn the_first_event_of_a_session_is_delivered_whatever_its_offset() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(&ev("e", 17)), Verdict::Deliver);
    }
}
