//! Presence in Redis: who is in a room, on which instance. A presence change and its JOIN or
//! LEAVE event are one script, so they cannot part. This instance also keeps its own sessions'
//! presence, to restore it if it was reaped while alive (see `registry`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;

use super::{RedisBackend, protocol, unavailable};
use crate::broker::{BackendError, Presence};
use crate::model::{EventKind, Member};

/// The presence of this instance's sessions, by (room, session).
#[derive(Debug, Default)]
pub(super) struct LocalPresence(Mutex<HashMap<(String, String), Member>>);

impl LocalPresence {
    fn map(&self) -> MutexGuard<'_, HashMap<(String, String), Member>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every (room, member) held now.
    pub(super) fn snapshot(&self) -> Vec<(String, Member)> {
        self.map()
            .iter()
            .map(|((room, _), member)| (room.clone(), member.clone()))
            .collect()
    }
}

impl RedisBackend {
    /// Runs `script` (join or leave) for `member` in `room`, with the `kind` event; `extra`
    /// follows the append and member arguments. True when the script appended the event (the
    /// presence changed).
    async fn presence_script(
        &self,
        script: &Script,
        kind: EventKind,
        room: &str,
        member: &Member,
        extra: Option<String>,
    ) -> Result<bool, BackendError> {
        let draft = member.event(kind, &self.keys.server_id);
        let mut args = self.append_args(room, Self::body(room, &draft)?);
        args.extend([self.keys.server_id.clone(), member.session_id.clone()]);
        args.extend(extra);
        let r: Option<String> = self.eval(script, args).await?;
        Ok(r.is_some())
    }

    /// Records `member` in `room` in Redis, with its JOIN if it was not there yet.
    pub(super) async fn join_script(
        &self,
        room: &str,
        member: &Member,
    ) -> Result<bool, BackendError> {
        let member_json = serde_json::to_string(member).map_err(|e| protocol(&e))?;
        self.presence_script(
            &self.scripts.join,
            EventKind::Join,
            room,
            member,
            Some(member_json),
        )
        .await
    }
}

#[async_trait]
impl Presence for RedisBackend {
    async fn join(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        self.presence
            .map()
            .insert((room.to_owned(), member.session_id.clone()), member.clone());
        self.join_script(room, member).await
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        self.presence
            .map()
            .remove(&(room.to_owned(), member.session_id.clone()));
        self.presence_script(&self.scripts.leave, EventKind::Leave, room, member, None)
            .await
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, BackendError> {
        let raw: Vec<String> = self
            .client
            .hvals(self.keys.presence(room))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut members: Vec<Member> = raw
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect();
        members.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(members)
    }
}
