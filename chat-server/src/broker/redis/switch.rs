//! Listening to the sentinels' `+switch-master` announcements (Sentinel mode only): one
//! subscriber connection per sentinel address, and on a switch of our master name the data
//! and subscriber connections move to the new master at once instead of waiting for fred to
//! notice the old one is gone (a frozen or partitioned master keeps its TCP connections
//! open for fred's unresponsive timeout) or for fred's next reconnect attempt.
//!
//! What it keeps true: a switch moves a connection only while it is up and not already on
//! the new master, so the three sentinels' announcements of one switch cause one reconnect
//! per connection, and a connection that fred is already re-establishing (it asks the
//! sentinels itself) is left to fred; the `+switch-master` SUBSCRIBE is retried until it
//! succeeds, after which fred re-subscribes it on every reconnect to that sentinel.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{Config as FredConfig, ReconnectPolicy, ServerConfig};
use tracing::{debug, info, warn};

use super::{RedisBackend, unavailable};
use crate::broker::BackendError;

/// The channel sentinels announce a new master on.
const SWITCH_CHANNEL: &str = "+switch-master";

/// How often a sentinel whose SUBSCRIBE failed is asked again.
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(1);

/// A `+switch-master` message: `<master-name> <old-ip> <old-port> <new-ip> <new-port>`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Switch<'a> {
    pub(super) master: &'a str,
    pub(super) new_host: &'a str,
    pub(super) new_port: u16,
}

impl Switch<'_> {
    /// Parses a `+switch-master` payload; `None` if it is not of that form.
    pub(super) fn parse(payload: &str) -> Option<Switch<'_>> {
        let mut words = payload.split_ascii_whitespace();
        let master = words.next()?;
        let (_old_host, _old_port) = (words.next()?, words.next()?);
        let new_host = words.next()?;
        let new_port = words.next()?.parse().ok()?;
        if words.next().is_some() {
            return None;
        }
        Some(Switch {
            master,
            new_host,
            new_port,
        })
    }
}

/// A subscriber connection to the sentinel at `host:port` (not yet connected).
pub(super) fn sentinel_watcher(
    host: &str,
    port: u16,
    password: Option<String>,
) -> Result<SubscriberClient, BackendError> {
    let config = FredConfig {
        server: ServerConfig::new_centralized(host, port),
        password,
        fail_fast: false,
        ..FredConfig::default()
    };
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.unresponsive.max_timeout = Some(Duration::from_secs(3));
            c.unresponsive.interval = Duration::from_millis(500);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(2);
            // Only +switch-master arrives here: a handful of messages per failover.
            p.broadcast_channel_capacity = 64;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2));
    builder
        .build_subscriber_client()
        .map_err(|e| unavailable(&e))
}

/// Whether `client` is up and connected to a server other than `host:port`.
fn connected_elsewhere<C: ClientLike>(client: &C, host: &str, port: u16) -> bool {
    client.is_connected()
        && !client
            .active_connections()
            .iter()
            .any(|s| &*s.host == host && s.port == port)
}

impl RedisBackend {
    /// Watches one sentinel for `+switch-master` of `master` until the backend stops.
    pub(super) async fn watch_switches(self: Arc<Self>, watcher: SubscriberClient, master: String) {
        drop(watcher.connect());
        drop(watcher.manage_subscriptions());
        let mut rx = watcher.message_rx();
        let mut retry = tokio::time::interval(RESUBSCRIBE_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let subscribed = watcher
                .tracked_channels()
                .iter()
                .any(|c| &**c == SWITCH_CHANNEL);
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = retry.tick(), if !subscribed => {
                    if let Err(e) = watcher.subscribe(SWITCH_CHANNEL).await {
                        debug!(error = %e, "could not subscribe to +switch-master yet");
                    }
                }
                msg = rx.recv() => match msg {
                    Ok(m) if &*m.channel == SWITCH_CHANNEL => {
                        if let Some(payload) = m.value.as_str() {
                            self.on_switch(&master, &payload).await;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        let _ = watcher.quit().await;
    }

    /// Moves the data and subscriber connections to the new master of a switch of `master`.
    async fn on_switch(&self, master: &str, payload: &str) {
        let Some(switch) = Switch::parse(payload) else {
            warn!(payload, "ignored a malformed +switch-master");
            return;
        };
        if switch.master != master {
            return;
        }
        let (host, port) = (switch.new_host, switch.new_port);
        let on_new_master = self.client.is_connected()
            && self
                .client
                .active_connections()
                .iter()
                .any(|s| &*s.host == host && s.port == port);
        if !on_new_master {
            // Whatever the command connection is doing (up on the old master, or fred
            // reconnecting to it), no WAIT in flight can speak for the new master.
            self.connection_moving();
        }
        let data = connected_elsewhere(&self.client, host, port);
        let sub = connected_elsewhere(&self.pubsub.sub, host, port);
        if !data && !sub {
            return;
        }
        info!(
            new_master = %format!("{host}:{port}"),
            "sentinels switched master: reconnecting"
        );
        // Both at once; fred asks the sentinels for the master again on each.
        let (d, s) = tokio::join!(
            async {
                if data {
                    self.client.force_reconnection().await
                } else {
                    Ok(())
                }
            },
            async {
                if sub {
                    self.pubsub.sub.force_reconnection().await
                } else {
                    Ok(())
                }
            }
        );
        for e in [d.err(), s.err()].into_iter().flatten() {
            warn!(error = %e, "reconnecting after +switch-master failed; fred keeps trying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_message_gives_the_master_name_and_the_new_address() {
        assert_eq!(
            Switch::parse("mymaster 10.0.0.1 6379 10.0.0.2 6380"),
            Some(Switch {
                master: "mymaster",
                new_host: "10.0.0.2",
                new_port: 6380
            })
        );
    }

    #[test]
    fn a_malformed_switch_message_is_rejected() {
        for bad in [
            "",
            "mymaster",
            "mymaster 10.0.0.1 6379 10.0.0.2",
            "mymaster 10.0.0.1 6379 10.0.0.2 port",
            "mymaster 10.0.0.1 6379 10.0.0.2 6380 extra",
            "mymaster 10.0.0.1 6379 10.0.0.2 70000",
        ] {
            assert_eq!(Switch::parse(bad), None, "{bad:?}");
        }
    }
}
