//! Reading rooms' history from Redis: a room's position and a slice of its Stream in one script
//! (so the two agree), creating empty rooms, and listing the rooms still alive.

use async_trait::async_trait;
use fred::prelude::*;

use super::{RedisBackend, unavailable};
use crate::broker::{BackendError, History, HistoryPage, RoomInfo, Slice, new_epoch};

/// Rooms the REST listing shows at most.
const MAX_ROOMS: usize = 1000;

/// The read script's arguments for `slice`: mode, start ID, count.
fn read_args(slice: Slice) -> Vec<String> {
    let (mode, start, count) = match slice {
        Slice::Info => ("info", "-".to_owned(), 0),
        Slice::After { after, limit } => ("after", format!("{}-0", after.saturating_add(1)), limit),
        Slice::Last { count } => ("last", "+".to_owned(), count),
    };
    vec![mode.to_owned(), start, count.to_string()]
}

#[async_trait]
impl History for RedisBackend {
    /// `{epoch, last, first, records...}` for one room, from one script.
    async fn read(&self, room: &str, slice: Slice) -> Result<HistoryPage, BackendError> {
        let keys = vec![self.keys.room_meta(room), self.keys.room_log(room)];
        let out: Vec<Value> = self
            .eval_raw(&self.scripts.read, keys, read_args(slice))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut it = out.into_iter();
        let epoch = it.next().and_then(|v| v.as_string()).unwrap_or_default();
        let last = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let first = it.next().and_then(|v| v.as_u64()).unwrap_or(last + 1);
        let mut events = Vec::new();
        for v in it {
            if let Some(raw) = v.as_str() {
                events.push(Self::parse_record(&raw)?);
            }
        }
        // The script reads the newest ones backwards.
        if matches!(slice, Slice::Last { .. }) {
            events.reverse();
        }
        Ok(HistoryPage {
            info: RoomInfo {
                id: room.to_owned(),
                epoch,
                last_offset: last,
                first_offset: first,
            },
            events,
        })
    }

    async fn create_room(&self, room: &str) -> Result<bool, BackendError> {
        let args = vec![
            self.keys.prefix.clone(),
            room.to_owned(),
            new_epoch(),
            self.ttl.clone(),
        ];
        let n: i64 = self.eval(&self.scripts.create, args).await?;
        Ok(n == 1)
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>, BackendError> {
        let args = vec![self.keys.prefix.clone(), MAX_ROOMS.to_string()];
        let out: Vec<Value> = self.eval(&self.scripts.rooms, args).await?;
        let mut rooms: Vec<RoomInfo> = out
            .chunks(4)
            .filter_map(|c| match c {
                [id, epoch, last, first] => Some(RoomInfo {
                    id: id.as_string()?,
                    epoch: epoch.as_string()?,
                    last_offset: last.as_u64()?,
                    first_offset: first.as_u64()?,
                }),
                _ => None,
            })
            .collect();
        rooms.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rooms)
    }
}
