//! Turning records read from the archive Stream into rows for one INSERT (pure).
//!
//! Keeps true: every entry read ends up either as a row or among the entries to acknowledge
//! without a row (trimmed away, or not a record); a batch holds each (room, epoch, offset) once.

use std::collections::HashSet;

use serde::Deserialize;

/// One entry of the archive Stream: its id and its record (`None`: trimmed before it was read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub record: Option<String>,
}

/// One row of `chat_messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub room: String,
    pub epoch: String,
    pub offset: i64,
    pub id: String,
    /// The record's `sentAt` in ms since the Unix epoch (`None`: absent or not RFC 3339).
    pub sent_at_ms: Option<i64>,
    pub record: String,
}

/// What one read of the Stream becomes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub rows: Vec<Row>,
    /// The Stream ids to acknowledge once the rows are stored: all of them.
    pub ids: Vec<String>,
    /// Entries that carried no readable record (acknowledged without a row).
    pub unreadable: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The fields of a record the table has columns for; the rest stays in the JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    room_id: String,
    epoch: String,
    offset: i64,
    #[serde(default)]
    id: String,
    #[serde(default)]
    sent_at: String,
}

fn unix_ms(rfc3339: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The batch of `entries`, in their order.
pub fn build(entries: Vec<Entry>) -> Batch {
    let mut batch = Batch::default();
    let mut seen = HashSet::new();
    for entry in entries {
        batch.ids.push(entry.id);
        let Some(record) = entry.record else {
            batch.unreadable += 1;
            continue;
        };
        let Ok(key) = serde_json::from_str::<Key>(&record) else {
            batch.unreadable += 1;
            continue;
        };
        if !seen.insert((key.room_id.clone(), key.epoch.clone(), key.offset)) {
            continue;
        }
        batch.rows.push(Row {
            room: key.room_id,
            epoch: key.epoch,
            offset: key.offset,
            id: key.id,
            sent_at_ms: unix_ms(&key.sent_at),
            record,
        });
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, record: Option<&str>) -> Entry {
        Entry {
            id: id.into(),
            record: record.map(str::to_owned),
        }
    }

    #[test]
    fn a_record_becomes_a_row_that_keeps_the_whole_json() {
        let json = r#"{"offset":7,"epoch":"00ff","roomId":"lobby","id":"m1","type":"MESSAGE","sender":{"id":"u","name":"U"},"content":"hi","sentAt":"2026-12-06T17:00:00Z","serverId":"a","mood":"ok"}"#;
        let b = build(vec![entry("1-0", Some(json))]);
        assert_eq!(b.ids, ["1-0"]);
        assert_eq!(b.unreadable, 0);
        assert_eq!(
            b.rows,
            [Row {
                room: "lobby".into(),
                epoch: "00ff".into(),
                offset: 7,
                id: "m1".into(),
                sent_at_ms: Some(1_796_576_400_000),
                record: json.into(),
            }]
        );
    }

    #[test]
    fn trimmed_and_unreadable_entries_are_acknowledged_without_a_row() {
        let good = r#"{"offset":1,"epoch":"e","roomId":"r"}"#;
        let b = build(vec![
            entry("1-0", None),
            entry("2-0", Some("not json")),
            entry("3-0", Some(r#"{"roomId":"r"}"#)),
            entry("4-0", Some(good)),
        ]);
        assert_eq!(b.ids, ["1-0", "2-0", "3-0", "4-0"]);
        assert_eq!(b.unreadable, 3);
        assert_eq!(b.rows.len(), 1);
        assert_eq!(b.rows[0].offset, 1);
    }

    #[test]
    fn a_record_read_twice_in_one_batch_is_one_row() {
        let r = r#"{"offset":3,"epoch":"e","roomId":"r"}"#;
        let b = build(vec![entry("1-0", Some(r)), entry("2-0", Some(r))]);
        assert_eq!(b.rows.len(), 1);
        assert_eq!(b.ids.len(), 2);
    }

    #[test]
    fn no_entries_make_an_empty_batch() {
        assert!(build(Vec::new()).is_empty());
    }
}
