//! chat-load: a STOMP load generator for chatcluster.
//!
//! Opens `--clients` subscribers spread round-robin over the `--url`s, puts them in `--rooms`
//! rooms, and has `--publishers` connections (also spread over the URLs) publish at `--rate`
//! messages per second in total with `--body` bytes of content. Every SEND carries its publish
//! time (`x-t`, microseconds since this process started) and a per-publisher sequence number
//! (`x-seq`), so subscribers measure latency, losses, duplicates and order violations. Prints a
//! progress line every second and a results table (and `--json FILE`) at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::stomp::{Command, Frame};
use chat_tests::Client;
use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "STOMP load generator for chatcluster")]
struct Args {
    /// WebSocket URLs of the instances (repeat the flag).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Where publishers connect (repeatable); default: the `--url`s.
    #[arg(long = "publish-url")]
    publish_urls: Vec<String>,
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
}

/// The x-seq publisher id of the closing message each publisher sends with a receipt.
const DONE: u64 = 999_999;

#[derive(Default)]
struct Sub {
    received: u64,
    duplicates: u64,
    reordered: u64,
    latencies_us: Vec<u32>,
    last_seq: HashMap<u64, u64>,
}

fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let start = Instant::now();
    let room_name = |r: usize| format!("load-{}-{r}", std::process::id());

    // Subscribers.
    let subs: Vec<Arc<Mutex<Sub>>> = (0..args.clients).map(|_| Arc::default()).collect();
    let mut in_room = vec![0u64; args.rooms];
    let mut tasks = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        let url = &args.urls[i % args.urls.len()];
        let room = i % args.rooms;
        in_room[room] += 1;
        let mut c = Client::login(url, &format!("load-sub-{i}")).await;
        c.subscribe(
            "0",
            &format!("/topic/room/{}", room_name(room)),
            &[("x-presence", "false")],
        )
        .await;
        let sub = sub.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(f)) = c.next_frame_within(Duration::from_secs(5)).await {
                if f.command != Command::Message {
                    continue;
                }
                let now = micros(start);
                let (Some(t), Some(seq)) = (f.header("x-t"), f.header("x-seq")) else {
                    continue;
                };
                let t: u64 = t.parse().unwrap_or(now);
                let (p, n) = seq.split_once('.').unwrap();
                let (p, n): (u64, u64) = (p.parse().unwrap(), n.parse().unwrap());
                if p == DONE {
                    continue;
                }
                let mut s = sub.lock().unwrap();
                match s.last_seq.get(&p).copied() {
                    Some(last) if n == last => s.duplicates += 1,
                    Some(last) if n < last => s.reordered += 1,
                    _ => {
                        s.last_seq.insert(p, n);
                    }
                }
                s.received += 1;
                s.latencies_us
                    .push(u32::try_from(now.saturating_sub(t)).unwrap_or(u32::MAX));
            }
        }));
    }
    eprintln!(
        "{} subscribers in {} room(s) on {} instance(s)",
        args.clients,
        args.rooms,
        args.urls.len()
    );

    // Publishers.
    let sent_per_room: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.rooms).map(|_| AtomicU64::new(0)).collect());
    let content = "x".repeat(args.body);
    let per_pub_rate = args.rate / args.publishers as f64;
    let deadline = start + Duration::from_secs_f64(args.duration) + start.elapsed();
    let mut pubs = Vec::new();
    for p in 0..args.publishers {
        let pub_urls = if args.publish_urls.is_empty() {
            &args.urls
        } else {
            &args.publish_urls
        };
        let url = pub_urls[p % pub_urls.len()].clone();
        let content = content.clone();
        let sent = sent_per_room.clone();
        let rooms = args.rooms;
        let room_names: Vec<String> = (0..rooms).map(room_name).collect();
        pubs.push(tokio::spawn(async move {
            let mut c = Client::login(&url, &format!("load-pub-{p}")).await;
            let every = (per_pub_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / per_pub_rate));
            let mut next = Instant::now();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let room = (n as usize + p) % rooms;
                let f = Frame::new(Command::Send)
                    .with_header("destination", format!("/app/room/{}", room_names[room]))
                    .with_header("x-t", micros(start).to_string())
                    .with_header("x-seq", format!("{p}.{n}"))
                    .with_body(content.clone());
                c.send_frame(&f).await;
                sent[room].fetch_add(1, Ordering::Relaxed);
                n += 1;
                if let Some(every) = every {
                    next += every;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            // A receipt closes the publisher's stream: everything before it was accepted.
            c.send_with(
                &format!("/app/room/{}", room_names[0]),
                "done",
                &[("x-t", "0"), ("x-seq", &format!("{DONE}.0"))],
            )
            .await;
            n
        }));
    }
    let progress = {
        let subs = subs.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let total: u64 = subs.iter().map(|s| s.lock().unwrap().received).sum();
                eprintln!(
                    "t={:>5.1}s deliveries/s={:>9}",
                    start.elapsed().as_secs_f64(),
                    total - last
                );
                last = total;
            }
        })
    };
    let mut sent_total = 0;
    for p in pubs {
        sent_total += p.await.unwrap();
    }
    let published_for = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    progress.abort();
    for t in &tasks {
        t.abort();
    }

    let mut lat: Vec<u32> = Vec::new();
    let (mut received, mut dups, mut reordered) = (0u64, 0u64, 0u64);
    for s in &subs {
        let s = s.lock().unwrap();
        received += s.received;
        dups += s.duplicates;
        reordered += s.reordered;
        lat.extend(&s.latencies_us);
    }
    let expected: u64 = sent_per_room
        .iter()
        .zip(&in_room)
        .map(|(s, n)| s.load(Ordering::Relaxed) * n)
        .sum();
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        f64::from(lat[i]) / 1000.0
    };
    let rate = received as f64 / published_for.as_secs_f64();
    let lost = expected.saturating_sub(received);
    println!("| metric | value |\n|---|---|");
    println!("| messages published | {sent_total} |");
    println!("| deliveries expected / received | {expected} / {received} |");
    println!("| lost / duplicates / order violations | {lost} / {dups} / {reordered} |");
    println!("| deliveries/s | {rate:.0} |");
    println!(
        "| latency p50 / p90 / p99 / max (ms) | {:.2} / {:.2} / {:.2} / {:.2} |",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "published": sent_total, "expected": expected, "received": received, "lost": lost,
            "duplicates": dups, "order_violations": reordered, "deliveries_per_sec": rate,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
            "args": {"urls": args.urls, "clients": args.clients, "rooms": args.rooms, "publishers": args.publishers,
                     "rate": args.rate, "duration": args.duration, "body": args.body},
        });
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    if lost > 0 || dups > 0 || reordered > 0 {
        std::process::exit(1);
    }
}
