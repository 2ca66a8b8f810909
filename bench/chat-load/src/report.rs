//! The results of a run: a markdown table on stdout and, with `--json FILE`, a JSON document
//! whose key names are shared with the Socket.IO peer's script (`bench/socketio/load.mjs`):
//! keep them exactly. Every mode writes every key; what a mode does not measure is zero.

use std::time::Duration;

use serde::Serialize;

use crate::stats::Totals;
use crate::{Args, Mode};

/// Slow consumers and how many of them the server dropped.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Slow {
    pub clients: u64,
    pub disconnected: u64,
}

/// What a run measured, in any mode (what a mode does not measure stays zero).
#[derive(Debug, Default)]
pub struct Outcome {
    pub published: u64,
    pub expected: u64,
    pub totals: Totals,
    pub published_for: Duration,
    pub connections: u64,
    pub connect_seconds: f64,
    pub slow: Slow,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Connections the server ended (or that failed) while they should have stayed.
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct Json<'a> {
    tool: &'static str,
    mode: Mode,
    published: u64,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    order_violations: u64,
    deliveries_per_sec: f64,
    latency_ms: Latency,
    connections: u64,
    connect_seconds: f64,
    connects_per_sec: f64,
    publish_seconds: f64,
    slow: Slow,
    connect_errors: u64,
    dropped: u64,
    args: &'a Args,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.totals.received)
    }

    /// Nothing lost, duplicated or reordered, and no connection failed.
    pub fn is_clean(&self) -> bool {
        self.lost() == 0
            && self.totals.duplicates == 0
            && self.totals.reordered == 0
            && self.connect_errors == 0
            && self.dropped == 0
    }

    fn deliveries_per_sec(&self) -> f64 {
        per_sec(
            self.totals.received as f64,
            self.published_for.as_secs_f64(),
        )
    }

    fn connects_per_sec(&self) -> f64 {
        per_sec(self.connections as f64, self.connect_seconds)
    }

    fn latency(&self) -> Latency {
        let t = &self.totals;
        Latency {
            p50: t.latency_ms(0.5),
            p90: t.latency_ms(0.9),
            p99: t.latency_ms(0.99),
            max: t.latency_ms(1.0),
        }
    }

    /// The markdown table.
    pub fn table(&self, mode: Mode) -> String {
        let mut rows = vec![
            ("connections".to_owned(), self.connections.to_string()),
            (
                "connect time (s) / connects/s".to_owned(),
                format!(
                    "{:.2} / {:.0}",
                    self.connect_seconds,
                    self.connects_per_sec()
                ),
            ),
        ];
        if mode == Mode::Fanout {
            let l = self.latency();
            let t = &self.totals;
            rows.extend([
                ("messages published".into(), self.published.to_string()),
                (
                    "deliveries expected / received".into(),
                    format!("{} / {}", self.expected, t.received),
                ),
                (
                    "lost / duplicates / order violations".into(),
                    format!("{} / {} / {}", self.lost(), t.duplicates, t.reordered),
                ),
                (
                    "deliveries/s".into(),
                    format!("{:.0}", self.deliveries_per_sec()),
                ),
                (
                    "latency p50 / p90 / p99 / max (ms)".into(),
                    format!("{:.2} / {:.2} / {:.2} / {:.2}", l.p50, l.p90, l.p99, l.max),
                ),
            ]);
            if self.slow.clients > 0 {
                rows.push((
                    "slow consumers / disconnected by the server".into(),
                    format!("{} / {}", self.slow.clients, self.slow.disconnected),
                ));
            }
        }
        rows.push((
            "connect errors / dropped".into(),
            format!("{} / {}", self.connect_errors, self.dropped),
        ));
        let mut out = String::from("| metric | value |\n|---|---|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        out
    }

    /// The JSON document.
    pub fn json(&self, mode: Mode, args: &Args) -> serde_json::Result<String> {
        let t = &self.totals;
        serde_json::to_string_pretty(&Json {
            tool: "chat-load",
            mode,
            published: self.published,
            expected: self.expected,
            received: t.received,
            lost: self.lost(),
            duplicates: t.duplicates,
            order_violations: t.reordered,
            deliveries_per_sec: self.deliveries_per_sec(),
            latency_ms: self.latency(),
            connections: self.connections,
            connect_seconds: self.connect_seconds,
            connects_per_sec: self.connects_per_sec(),
            publish_seconds: self.published_for.as_secs_f64(),
            slow: self.slow,
            connect_errors: self.connect_errors,
            dropped: self.dropped,
            args,
        })
    }
}

fn per_sec(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_json_has_the_keys_the_peer_script_shares() {
        let args = Args::parse_from(["chat-load", "--url", "ws://127.0.0.1:1/ws"]);
        let o = Outcome {
            published: 10,
            expected: 30,
            connections: 3,
            connect_seconds: 0.5,
            ..Outcome::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&o.json(Mode::Fanout, &args).unwrap()).unwrap();
        for key in [
            "tool",
            "mode",
            "published",
            "expected",
            "received",
            "lost",
            "duplicates",
            "order_violations",
            "deliveries_per_sec",
            "latency_ms",
            "connections",
            "connect_seconds",
            "connects_per_sec",
            "slow",
            "args",
            "connect_errors",
            "dropped",
            "publish_seconds",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(v["latency_ms"].get(key).is_some(), "{key} missing: {v}");
        }
        assert_eq!(v["tool"], "chat-load");
        assert_eq!(v["mode"], "fanout");
        assert_eq!(v["lost"], 30);
        assert_eq!(v["connects_per_sec"], 6.0);
        assert_eq!(
            v["slow"],
            serde_json::json!({"clients": 0, "disconnected": 0})
        );
        assert_eq!(v["args"]["clients"], 100);
        assert!(v["args"].get("json").is_none(), "{v}");
        assert!(!o.is_clean());
    }
}
