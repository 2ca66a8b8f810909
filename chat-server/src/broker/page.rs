//! History pages for the REST API (`GET /api/rooms/{id}/messages`): which offsets a page
//! covers (`since`, `before`, `limit`), where each part comes from (Redis for what its window
//! holds, the archive for what it no longer does), and the merge of the two.
//!
//! Keeps true: a page covers one contiguous span of offsets of one epoch, `from..=to`, at most
//! `limit` long; every offset in it is either in `messages` (once, in order) or listed in
//! `missing` (neither store has it), never silently absent; an offset only the archive holds is
//! never answered without the archive: if PostgreSQL cannot be read the page fails
//! (`ArchiveUnavailable`) instead of leaving it out. The pure parts (`span`, `merge`,
//! `contiguous_from`, `contiguous_tail`) are what the unit tests pin down.

use std::sync::Arc;

use tracing::{debug, warn};

use super::{BackendError, History, RoomInfo, Slice};
use crate::archive::ArchiveSource;
use crate::model::RoomEvent;

/// The largest `limit` of one page.
pub const MAX_PAGE: usize = 1000;

/// The page a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// The epoch to read; `None` is the room's current one.
    pub epoch: Option<String>,
    /// Events after this offset, oldest first.
    pub since: Option<u64>,
    /// Events before this offset: without `since`, the newest `limit` of them.
    pub before: Option<u64>,
    /// 1..=`MAX_PAGE`.
    pub limit: usize,
}

/// One page of a room's history.
#[derive(Debug, Clone)]
pub struct Page {
    /// The page's epoch; `first_offset` is the oldest offset either store still holds,
    /// `last_offset` the newest of the epoch.
    pub info: RoomInfo,
    /// The offsets the page covers, `from..=to` (`to < from`: none).
    pub from: u64,
    pub to: u64,
    pub events: Vec<Arc<RoomEvent>>,
    /// Offsets in `from..=to` that neither Redis nor the archive holds, as inclusive ranges.
    pub missing: Vec<(u64, u64)>,
    /// Whether the epoch has events beyond the page in the direction it was read (older for
    /// `before` or no cursor, newer for `since`).
    pub has_more: bool,
    /// When the page reaches the epoch's oldest offset: the epoch the room had before this
    /// one, if the archive holds any of it.
    pub previous_epoch: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    NotFound(String),
    /// The page needs offsets only the archive holds, and it cannot be read now.
    #[error("{0}")]
    ArchiveUnavailable(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The span `(from, to, has_more)` a query covers in an epoch whose reachable offsets are
/// `first..=last` (`first` >= 1; `last < first` when it has none).
pub(crate) fn span(q: &PageQuery, first: u64, last: u64) -> (u64, u64, bool) {
    let limit = u64::try_from(q.limit.max(1)).unwrap_or(u64::MAX);
    let ceiling = q.before.map_or(last, |b| last.min(b.saturating_sub(1)));
    match q.since {
        Some(n) => {
            let from = n.saturating_add(1).max(first);
            let to = ceiling.min(from.saturating_add(limit - 1));
            (from, to, to < ceiling)
        }
        None => {
            let from = first.max(ceiling.saturating_add(1).saturating_sub(limit));
            (from, ceiling, from > first && from <= ceiling)
        }
    }
}

/// The events of `from..=to` out of two reads (in any order, possibly overlapping), once each
/// in offset order, and the offsets of the span neither had.
pub(crate) fn merge(
    from: u64,
    to: u64,
    parts: [Vec<Arc<RoomEvent>>; 2],
) -> (Vec<Arc<RoomEvent>>, Vec<(u64, u64)>) {
    let mut events: Vec<Arc<RoomEvent>> = parts
        .into_iter()
        .flatten()
        .filter(|e| (from..=to).contains(&e.offset()))
        .collect();
    events.sort_by_key(|e| e.offset());
    events.dedup_by_key(|e| e.offset());
    let mut missing = Vec::new();
    let mut next = from;
    for e in &events {
        if e.offset() > next {
            missing.push((next, e.offset() - 1));
        }
        next = e.offset() + 1;
    }
    if next <= to {
        missing.push((next, to));
    }
    (events, missing)
}

/// Whether `events` are exactly the offsets `from..=to`, in order.
pub(crate) fn contiguous_from(events: &[Arc<RoomEvent>], from: u64, to: u64) -> bool {
    to.checked_sub(from)
        .map_or(events.is_empty(), |n| events.len() as u64 == n + 1)
        && events
            .iter()
            .zip(from..)
            .all(|(e, offset)| e.offset() == offset)
}

/// The longest run at the end of `events` (oldest first) that ends at `end` without a gap.
pub(crate) fn contiguous_tail(mut events: Vec<Arc<RoomEvent>>, end: u64) -> Vec<Arc<RoomEvent>> {
    let mut want = end;
    let mut keep = 0;
    for e in events.iter().rev() {
        if e.offset() != want {
            break;
        }
        keep += 1;
        want = want.saturating_sub(1);
    }
    events.split_off(events.len() - keep)
}

fn archive_down(what: &str, e: &crate::archive::ArchiveError) -> PageError {
    warn!(error = %e, what, "archive read failed");
    PageError::ArchiveUnavailable(format!(
        "the archive cannot be read now ({what} are only in the archive); try again"
    ))
}

/// One page of `room`'s history: Redis (`history`, the window it holds) and, when configured,
/// the archive for the rest.
pub async fn read_page<H: History + ?Sized>(
    history: &H,
    archive: Option<&dyn ArchiveSource>,
    room: &str,
    q: &PageQuery,
) -> Result<Page, PageError> {
    let current = history.read(room, Slice::Info).await?.info;
    let archived_epoch = q.epoch.as_ref().is_some_and(|e| *e != current.epoch);
    // (epoch, first reachable, last, Redis's first); Redis holds nothing of an old epoch.
    let mut archive_error = None;
    let (epoch, first, last, redis_first) = if archived_epoch || current.epoch.is_empty() {
        let Some(ar) = archive else {
            return Err(PageError::NotFound(match &q.epoch {
                Some(e) => format!("no epoch {e:?} of room {room:?} (no archive)"),
                None => format!("no room {room:?}"),
            }));
        };
        let epoch = match &q.epoch {
            Some(e) => e.clone(),
            None => ar
                .latest_epoch(room)
                .await
                .map_err(|e| archive_down("its messages", &e))?
                .ok_or_else(|| PageError::NotFound(format!("no room {room:?}")))?,
        };
        let (lo, hi) = ar
            .bounds(room, &epoch)
            .await
            .map_err(|e| archive_down("the messages of that epoch", &e))?
            .ok_or_else(|| {
                PageError::NotFound(format!("no epoch {epoch:?} of room {room:?} archived"))
            })?;
        (epoch, lo, hi, hi.saturating_add(1))
    } else {
        let redis_first = current.first_offset;
        let first = match archive {
            Some(ar) if redis_first > 1 => match ar.bounds(room, &current.epoch).await {
                Ok(Some((lo, _))) => lo.min(redis_first),
                Ok(None) => redis_first,
                // Unknown: older offsets may be archived. A page that needs them fails below.
                Err(e) => {
                    archive_error = Some(e);
                    1
                }
            },
            _ => redis_first,
        };
        (current.epoch, first, current.last_offset, redis_first)
    };
    let (mut from, to, has_more) = span(q, first, last);
    let mut newer = Vec::new();
    // The lowest offset Redis answered for; below it the archive is asked.
    let mut redis_low = to.saturating_add(1);
    if to >= redis_first && to >= from {
        let lo = from.max(redis_first);
        let limit = usize::try_from(to - lo + 1).unwrap_or(MAX_PAGE);
        let page = history
            .read(
                room,
                Slice::After {
                    after: lo - 1,
                    limit,
                },
            )
            .await?;
        // A Redis that lost the epoch since the first read holds none of it now.
        if page.info.epoch == epoch {
            newer = page.events;
            if let Some(e) = newer.first() {
                redis_low = e.offset();
            }
        }
    }
    let mut older = Vec::new();
    if from < redis_low {
        match archive {
            // Without an archive nothing below Redis's window exists any more.
            None => from = redis_low,
            Some(ar) => {
                if let Some(e) = archive_error {
                    return Err(archive_down(
                        &format!("offsets {from}-{}", redis_low - 1),
                        &e,
                    ));
                }
                older = ar
                    .range(room, &epoch, from, redis_low - 1)
                    .await
                    .map_err(|e| archive_down(&format!("offsets {from}-{}", redis_low - 1), &e))?;
            }
        }
    }
    let (events, missing) = merge(from, to, [older, newer]);
    let previous_epoch = match archive {
        // Only a pointer: without it the page is still whole, so a failure is not an error.
        Some(ar) if from <= first => ar.previous_epoch(room, &epoch).await.unwrap_or_else(|e| {
            debug!(error = %e, "archive read of the previous epoch failed");
            None
        }),
        _ => None,
    };
    Ok(Page {
        info: RoomInfo {
            id: room.to_owned(),
            epoch,
            last_offset: last,
            first_offset: first,
        },
        from,
        to,
        events,
        missing,
        has_more,
        previous_epoch,
    })
}

/// A chat event of room "r" at `offset` of `epoch`, for tests.
#[cfg(test)]
pub(crate) fn event_at(epoch: &str, offset: u64) -> Arc<RoomEvent> {
    use crate::model::{EventKind, EventRecord, Sender};
    RoomEvent::new(EventRecord {
        id: format!("{epoch}-{offset}"),
        room_id: "r".into(),
        offset,
        epoch: epoch.into(),
        kind: EventKind::Chat,
        sender: Sender {
            id: "u".into(),
            name: "U".into(),
        },
        content: "x".into(),
        sent_at: String::new(),
        server_id: "s".into(),
        extra: serde_json::Map::new(),
        headers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(offset: u64) -> Arc<RoomEvent> {
        event_at("e", offset)
    }

    fn evs(offsets: impl IntoIterator<Item = u64>) -> Vec<Arc<RoomEvent>> {
        offsets.into_iter().map(ev).collect()
    }

    fn offsets(events: &[Arc<RoomEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.offset()).collect()
    }

    fn q(since: Option<u64>, before: Option<u64>, limit: usize) -> PageQuery {
        PageQuery {
            epoch: None,
            since,
            before,
            limit,
        }
    }

    #[test]
    fn no_cursor_is_the_newest_limit_and_says_older_ones_exist() {
        assert_eq!(span(&q(None, None, 10), 1, 100), (91, 100, true));
        assert_eq!(span(&q(None, None, 10), 95, 100), (95, 100, false));
    }

    #[test]
    fn before_pages_back_to_the_oldest_reachable_offset() {
        assert_eq!(span(&q(None, Some(91), 10), 1, 100), (81, 90, true));
        assert_eq!(span(&q(None, Some(11), 10), 1, 100), (1, 10, false));
        assert_eq!(span(&q(None, Some(5), 10), 1, 100), (1, 4, false));
        // Before the oldest reachable offset there is nothing.
        let (from, to, more) = span(&q(None, Some(3), 10), 5, 100);
        assert!(to < from && !more);
        // A `before` past the newest offset is the newest page.
        assert_eq!(span(&q(None, Some(1000), 10), 1, 100), (91, 100, true));
    }

    #[test]
    fn since_pages_forward_to_the_newest_offset() {
        assert_eq!(span(&q(Some(0), None, 10), 1, 100), (1, 10, true));
        assert_eq!(span(&q(Some(90), None, 10), 1, 100), (91, 100, false));
        let (from, to, more) = span(&q(Some(100), None, 10), 1, 100);
        assert!(to < from && !more);
        // Below the oldest reachable offset it starts there.
        assert_eq!(span(&q(Some(0), None, 10), 41, 100), (41, 50, true));
    }

    #[test]
    fn since_and_before_together_bound_the_page_on_both_sides() {
        assert_eq!(span(&q(Some(10), Some(15), 10), 1, 100), (11, 14, false));
        assert_eq!(span(&q(Some(10), Some(50), 10), 1, 100), (11, 20, true));
    }

    #[test]
    fn an_empty_epoch_gives_an_empty_span() {
        let (from, to, more) = span(&q(None, None, 10), 1, 0);
        assert!(to < from && !more);
        let (from, to, more) = span(&q(Some(0), None, 10), 1, 0);
        assert!(to < from && !more);
    }

    #[test]
    fn merge_keeps_each_offset_once_in_order_within_the_span() {
        let (events, missing) = merge(3, 8, [evs([3, 4, 5, 6]), evs([5, 6, 7, 8, 9])]);
        assert_eq!(offsets(&events), [3, 4, 5, 6, 7, 8]);
        assert!(missing.is_empty());
    }

    #[test]
    fn merge_names_every_offset_neither_part_had() {
        let (events, missing) = merge(1, 10, [evs([2, 3]), evs([6, 7])]);
        assert_eq!(offsets(&events), [2, 3, 6, 7]);
        assert_eq!(missing, [(1, 1), (4, 5), (8, 10)]);
        let (events, missing) = merge(1, 3, [Vec::new(), Vec::new()]);
        assert!(events.is_empty());
        assert_eq!(missing, [(1, 3)]);
    }

    #[test]
    fn contiguity_is_every_offset_of_the_range_in_order() {
        assert!(contiguous_from(&evs([4, 5, 6]), 4, 6));
        assert!(!contiguous_from(&evs([4, 6]), 4, 6));
        assert!(!contiguous_from(&evs([5, 6]), 4, 6));
        assert!(!contiguous_from(&evs([4, 5]), 4, 6));
        assert!(contiguous_from(&[], 4, 3));
    }

    #[test]
    fn the_contiguous_tail_stops_at_the_newest_gap() {
        assert_eq!(
            offsets(&contiguous_tail(evs([1, 2, 4, 5, 6]), 6)),
            [4, 5, 6]
        );
        assert_eq!(offsets(&contiguous_tail(evs([1, 2, 3]), 3)), [1, 2, 3]);
        assert!(contiguous_tail(evs([1, 2, 3]), 4).is_empty());
    }
}
