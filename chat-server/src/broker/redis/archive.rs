//! The archive Stream `P:archive` and its consumer group `archivers`, as the archiver uses them
//! (see `crate::archive`). The publish scripts add to the Stream (`lua/common.lua`); this reads
//! new entries for this instance, takes over entries another instance left pending too long,
//! and acknowledges and deletes stored ones, so the Stream holds only unarchived records.
//!
//! No command here blocks on Redis (no `BLOCK`): the archiver shares the command connection
//! with publishing, and polls instead.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};

use super::RedisBackend;
use crate::archive::{ArchiveError, ArchiveQueue, Entry, QueueStats};

const GROUP: &str = "archivers";

/// Acknowledges and deletes the ids in ARGV[2..] of Stream KEYS[1] for group ARGV[1], together:
/// an entry acknowledged but left in the Stream would count as unarchived forever.
const ACK: &str = "local ids = {unpack(ARGV, 2)}\n\
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))\n\
return redis.call('XDEL', KEYS[1], unpack(ids))";

/// Ids per ACK script: well under Lua's limit on `unpack`.
const ACK_CHUNK: usize = 1000;

fn redis_error(e: &Error) -> ArchiveError {
    ArchiveError::Redis(e.to_string())
}

impl RedisBackend {
    fn archive_key(&self) -> String {
        format!("{}:archive", self.keys.prefix)
    }

    fn archive_lost_key(&self) -> String {
        format!("{}:archive:lost", self.keys.prefix)
    }

    async fn stream_command(&self, name: &'static str, args: Vec<String>) -> Result<Value, Error> {
        let cmd = CustomCommand::new_static(name, ClusterHash::Random, false);
        self.client.custom(cmd, args).await
    }
}

/// A Stream entry `[id, [field, value, ...] | nil]`; `None` if it is not one.
fn entry(v: Value) -> Option<Entry> {
    let mut parts = match v {
        Value::Array(parts) => parts.into_iter(),
        _ => return None,
    };
    let id = parts.next()?.as_string()?;
    let record = match parts.next() {
        Some(Value::Array(fields)) => {
            let mut fields = fields.into_iter();
            let mut found = None;
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                if k.as_string().as_deref() == Some("r") {
                    found = v.as_string();
                }
            }
            found
        }
        Some(Value::Map(map)) => map
            .inner()
            .into_iter()
            .find(|(k, _)| k.as_str() == Some("r"))
            .and_then(|(_, v)| v.as_string()),
        _ => None,
    };
    Some(Entry { id, record })
}

fn entries(v: Value) -> Vec<Entry> {
    match v {
        Value::Array(items) => items.into_iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// XREADGROUP's reply for one Stream: `[[name, entries]]` (RESP2) or `{name: entries}` (RESP3).
fn read_reply(v: Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => entries(pair.remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().flat_map(entries).collect(),
        _ => Vec::new(),
    }
}

#[async_trait]
impl ArchiveQueue for RedisBackend {
    async fn prepare(&self) -> Result<(), ArchiveError> {
        // From "0": records added before the group existed are archived too.
        let created = self
            .stream_command(
                "XGROUP",
                vec![
                    "CREATE".into(),
                    self.archive_key(),
                    GROUP.into(),
                    "0".into(),
                    "MKSTREAM".into(),
                ],
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(redis_error(&e)),
        }
    }

    async fn read_new(&self, count: usize) -> Result<Vec<Entry>, ArchiveError> {
        let reply = self
            .stream_command(
                "XREADGROUP",
                vec![
                    "GROUP".into(),
                    GROUP.into(),
                    self.keys.server_id.clone(),
                    "COUNT".into(),
                    count.to_string(),
                    "STREAMS".into(),
                    self.archive_key(),
                    ">".into(),
                ],
            )
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(read_reply(reply))
    }

    async fn claim(
        &self,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<Entry>), ArchiveError> {
        let reply = self
            .stream_command(
                "XAUTOCLAIM",
                vec![
                    self.archive_key(),
                    GROUP.into(),
                    self.keys.server_id.clone(),
                    min_idle.as_millis().to_string(),
                    cursor.to_owned(),
                    "COUNT".into(),
                    count.to_string(),
                ],
            )
            .await
            .map_err(|e| redis_error(&e))?;
        // [next cursor, entries, deleted ids]: the deleted ones left the pending list already.
        let mut parts = match reply {
            Value::Array(parts) => parts.into_iter(),
            _ => return Err(ArchiveError::Redis("unexpected XAUTOCLAIM reply".into())),
        };
        let next = parts
            .next()
            .and_then(|c| c.as_string())
            .unwrap_or_else(|| "0-0".into());
        Ok((next, parts.next().map(entries).unwrap_or_default()))
    }

    async fn ack(&self, ids: &[String]) -> Result<(), ArchiveError> {
        let script = Script::from_lua(ACK);
        for chunk in ids.chunks(ACK_CHUNK) {
            let mut args = Vec::with_capacity(chunk.len() + 1);
            args.push(GROUP.to_owned());
            args.extend(chunk.iter().cloned());
            let _: i64 = self
                .eval_raw(&script, vec![self.archive_key()], args)
                .await
                .map_err(|e| redis_error(&e))?;
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, ArchiveError> {
        let key = self.archive_key();
        let waiting: u64 = self.client.xlen(&key).await.map_err(|e| redis_error(&e))?;
        let head = self
            .stream_command(
                "XRANGE",
                vec![key, "-".into(), "+".into(), "COUNT".into(), "1".into()],
            )
            .await
            .map_err(|e| redis_error(&e))?;
        // Entry ids are "<ms of Redis time>-<n>".
        let oldest_ms = entries(head)
            .first()
            .and_then(|e| e.id.split('-').next()?.parse::<i64>().ok());
        let lost: Option<u64> = self
            .client
            .get(self.archive_lost_key())
            .await
            .map_err(|e| redis_error(&e))?;
        let offset = self.clock.redis_offset();
        let redis_now = (offset != i64::MIN).then(|| {
            i64::try_from(self.millis())
                .unwrap_or(i64::MAX)
                .saturating_add(offset)
        });
        let oldest_age = match (oldest_ms, redis_now) {
            (Some(oldest), Some(now)) => {
                Duration::from_millis(u64::try_from(now.saturating_sub(oldest)).unwrap_or(0))
            }
            _ => Duration::ZERO,
        };
        Ok(QueueStats {
            waiting,
            oldest_age,
            lost: lost.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn an_xreadgroup_reply_gives_its_entries_and_trimmed_ones_without_a_record() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("chat:archive"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("r"), s("{}")])]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        assert_eq!(
            read_reply(reply),
            [
                Entry {
                    id: "1-0".into(),
                    record: Some("{}".into())
                },
                Entry {
                    id: "2-0".into(),
                    record: None
                },
            ]
        );
        assert!(read_reply(Value::Null).is_empty());
    }
}
