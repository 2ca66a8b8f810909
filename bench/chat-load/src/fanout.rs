//! The fan-out scenario: subscribers in rooms, publishers sending timed and numbered messages,
//! optional slow consumers that never read.
//!
//! Each subscriber runs one cheap loop in its own task: read a WebSocket message, scan its
//! header block for `x-t` and `x-seq`, count it in task-local [`SubStats`]. It ends by itself
//! once every publisher's closing message arrived (they follow each publisher's last message in
//! every room), or when told to stop after the drain period; either way its stats come back
//! through its join handle. Publishers are paced (`--rate M`) or closed-loop (`--rate 0`: at
//! most `--window` SENDs outstanding each, until their RECEIPT or, with `--echo`, until they
//! come back on the publisher's own subscription), and close with a receipted DONE message in
//! every room.
//!
//! A RECEIPT says the broker accepted a message, not that it was fanned out: against a server
//! that answers before delivering, a receipt window does not keep subscribers' queues short.
//! `--echo` closes the loop on delivery instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::net::{self, ConnError, Spec};
use crate::report::{Outcome, Slow};
use crate::stats::{Progress, SubStats, Totals};
use crate::wire::{self, DONE, Inbound};
use crate::ws::{Incoming, Ws};
use crate::{Args, Ctx, ProgressLine};

/// How long a publisher waits for one receipt before giving up.
const RECEIPT_WAIT: Duration = Duration::from_secs(30);
/// How often a subscriber adds its count to the shared progress counter (µs).
const FLUSH_US: u64 = 100_000;
/// A slow consumer that sends nothing for this long (once read again) is still connected.
const SLOW_QUIET: Duration = Duration::from_millis(500);
/// How long a connection's close may take at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Slow consumers get a small receive window, so the server's queue for them fills sooner.
const SLOW_RECV_BUFFER: u32 = 16 << 10;

pub async fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let rooms: Arc<[String]> = (0..args.rooms).map(|r| ctx.room_name(r)).collect();
    let conns = connect(args, ctx, &rooms).await?;
    eprintln!(
        "{} subscribers ({} slow) in {} room(s) on {} instance(s), {} publisher(s), connected in {:.2}s",
        args.clients,
        args.slow,
        rooms.len(),
        ctx.urls.len(),
        args.publishers,
        conns.connect_seconds,
    );

    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut subs = JoinSet::new();
    for ws in conns.subscribers {
        subs.spawn(subscribe(
            ws,
            args.publishers,
            ctx.start,
            stop.clone(),
            received.clone(),
        ));
    }
    let progress = ProgressLine::spawn(ctx.start, {
        let (sent, received) = (sent.clone(), received.clone());
        let (mut last_sent, mut last_received) = (0, 0);
        move || {
            let (s, r) = (
                sent.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed),
            );
            let line = format!(
                "sent/s={:>8} deliveries/s={:>9}",
                s - last_sent,
                r - last_received
            );
            (last_sent, last_received) = (s, r);
            line
        }
    });

    let publish_start = Instant::now();
    // Markers for scripts/bench, which reads the servers' CPU time at each: the publishing
    // window, without connecting before it or the closing DONE messages after it.
    println!("PUBLISH start");
    let window = Duration::from_secs_f64(args.duration);
    let end_marker = tokio::spawn(async move {
        tokio::time::sleep(window).await;
        println!("PUBLISH end");
    });
    let published = publish(args, ctx, &rooms, conns.publishers, publish_start, sent).await?;
    // Publishers stop at the deadline; what follows is the DONE round.
    let published_for = publish_start.elapsed().min(window);
    let _ = end_marker.await;
    // Subscribers end by themselves once every DONE arrived; the drain bounds the wait.
    let (totals, subscribers_closed) =
        collect(subs, &stop, Duration::from_secs_f64(args.drain)).await;
    progress.stop().await;

    let slow = check_slow(conns.slow).await;
    for e in &published.errors {
        eprintln!("chat-load: publisher failed: {e}");
    }
    if subscribers_closed > 0 {
        eprintln!("chat-load: the server closed {subscribers_closed} subscriber(s)");
    }
    let sent_per_room = &published.sent_per_room;
    Ok(Outcome {
        published: sent_per_room.iter().sum(),
        expected: sent_per_room
            .iter()
            .zip(&conns.in_room)
            .map(|(s, n)| s * n)
            .sum(),
        totals,
        published_for,
        connections: (args.clients + args.slow + args.publishers) as u64,
        connect_seconds: conns.connect_seconds,
        slow,
        connect_errors: 0,
        dropped: published.errors.len() as u64 + subscribers_closed,
    })
}

/// Every connection of a fan-out run, subscribed.
struct Connections {
    subscribers: Vec<Ws>,
    /// Subscribers per room.
    in_room: Vec<u64>,
    /// Time to open and subscribe the subscribers.
    connect_seconds: f64,
    slow: Vec<Ws>,
    publishers: Vec<Ws>,
}

async fn connect(args: &Args, ctx: &Ctx, rooms: &[String]) -> anyhow::Result<Connections> {
    let connect_start = Instant::now();
    let subscribers = open(
        args,
        ctx,
        (0..args.clients).map(|i| Spec {
            index: i,
            target: ctx.urls[i % ctx.urls.len()].clone(),
            login: format!("load-sub-{i}"),
            room: Some(rooms[i % rooms.len()].clone()),
            presence: args.presence,
            recv_buffer: None,
        }),
    )
    .await?;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let mut in_room = vec![0u64; rooms.len()];
    for i in 0..subscribers.len() {
        in_room[i % rooms.len()] += 1;
    }
    let slow = open(
        args,
        ctx,
        (0..args.slow).map(|j| Spec {
            index: args.clients + j,
            target: ctx.urls[j % ctx.urls.len()].clone(),
            login: format!("load-slow-{j}"),
            room: Some(rooms[0].clone()),
            presence: false,
            recv_buffer: Some(SLOW_RECV_BUFFER),
        }),
    )
    .await?;
    let mut publishers = open(
        args,
        ctx,
        (0..args.publishers).map(|p| Spec {
            index: args.clients + args.slow + p,
            target: ctx.publish_urls[p % ctx.publish_urls.len()].clone(),
            login: format!("load-pub-{p}"),
            room: None,
            presence: false,
            recv_buffer: None,
        }),
    )
    .await?;
    if args.echo {
        for ws in &mut publishers {
            for (r, room) in rooms.iter().enumerate() {
                net::subscribe(ws, r, room, false).await?;
            }
        }
    }
    Ok(Connections {
        subscribers,
        in_room,
        connect_seconds,
        slow,
        publishers,
    })
}

/// What all publishers did together.
struct PublishTotals {
    sent_per_room: Vec<u64>,
    errors: Vec<ConnError>,
}

/// Runs every publisher for `--duration` from `start`, then waits for their closing receipts.
async fn publish(
    args: &Args,
    ctx: &Ctx,
    rooms: &Arc<[String]>,
    publishers: Vec<Ws>,
    start: Instant,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<PublishTotals> {
    let deadline = start + Duration::from_secs_f64(args.duration);
    let pace = if args.rate > 0.0 {
        Pace::Every(Duration::from_secs_f64(args.publishers as f64 / args.rate))
    } else {
        Pace::Window {
            size: args.window,
            echo: args.echo,
        }
    };
    let body: Arc<str> = "x".repeat(args.body).into();
    let mut pubs = JoinSet::new();
    for (p, ws) in publishers.into_iter().enumerate() {
        let publisher = Publisher {
            p: p as u64,
            rooms: rooms.clone(),
            body: body.clone(),
            start: ctx.start,
            deadline,
            pace,
            sent: sent.clone(),
        };
        pubs.spawn(publisher.run(ws));
    }
    let mut totals = PublishTotals {
        sent_per_room: vec![0; rooms.len()],
        errors: Vec::new(),
    };
    while let Some(joined) = pubs.join_next().await {
        let r = joined.map_err(|e| anyhow::anyhow!("a publisher task failed: {e}"))?;
        for (total, n) in totals.sent_per_room.iter_mut().zip(&r.sent) {
            *total += n;
        }
        totals.errors.extend(r.error);
    }
    Ok(totals)
}

/// Adds up the subscribers' stats as they end, stopping the rest after `drain`; the totals and
/// how many the server closed.
async fn collect(
    mut subs: JoinSet<SubOutcome>,
    stop: &CancellationToken,
    drain: Duration,
) -> (Totals, u64) {
    let drain_until = tokio::time::Instant::now() + drain;
    let mut totals = Totals::default();
    let mut closed = 0u64;
    loop {
        let next = if stop.is_cancelled() {
            Some(subs.join_next().await)
        } else {
            tokio::time::timeout_at(drain_until, subs.join_next())
                .await
                .ok()
        };
        let joined = match next {
            Some(Some(joined)) => joined,
            Some(None) => break,
            // Time is up: the rest stop now and hand back what they have.
            None => {
                stop.cancel();
                continue;
            }
        };
        match joined {
            Ok(o) => {
                totals.add(&o.stats);
                closed += u64::from(o.closed);
            }
            Err(e) => eprintln!("chat-load: a subscriber task failed: {e}"),
        }
    }
    stop.cancel();
    (totals, closed)
}

/// Opens `specs`; any failure fails the run (a missing subscriber would skew every count).
async fn open(
    args: &Args,
    ctx: &Ctx,
    specs: impl Iterator<Item = Spec>,
) -> anyhow::Result<Vec<Ws>> {
    let results = net::open_all(
        ctx.dialer,
        specs.collect(),
        args.connect_concurrency,
        Arc::default(),
    )
    .await;
    let (ok, failed) = net::successes(results);
    if failed.count > 0 {
        anyhow::bail!("{failed}");
    }
    Ok(ok)
}

/// What a subscriber task hands back.
struct SubOutcome {
    stats: SubStats,
    /// The server ended the connection (ERROR or close) before the run did.
    closed: bool,
}

/// One subscriber's receive loop (the hot path: no lock, no allocation per message).
async fn subscribe(
    mut ws: Ws,
    publishers: usize,
    start: Instant,
    stop: CancellationToken,
    received: Arc<AtomicU64>,
) -> SubOutcome {
    let mut stats = SubStats::new(publishers);
    let mut closed = false;
    let (mut flushed, mut last_flush) = (0u64, 0u64);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // Reading first: while messages flow the stop signal is not even polled.
        let msg = tokio::select! {
            biased;
            msg = ws.next() => msg,
            () = &mut stopped => break,
        };
        let Ok(Incoming::Data(bytes)) = msg else {
            closed = true;
            break;
        };
        match wire::classify(bytes) {
            Inbound::Message {
                t: Some(t),
                seq: Some((p, n)),
            } => {
                if p == DONE {
                    if stats.done(n) == Progress::AllDone {
                        break;
                    }
                    continue;
                }
                let now = crate::micros(start);
                stats.record(p, n, t, now);
                if now.saturating_sub(last_flush) >= FLUSH_US {
                    received.fetch_add(stats.received - flushed, Ordering::Relaxed);
                    (flushed, last_flush) = (stats.received, now);
                }
            }
            Inbound::Error { message } => {
                eprintln!("chat-load: a subscriber got ERROR: {message}");
                closed = true;
                break;
            }
            _ => {}
        }
    }
    received.fetch_add(stats.received - flushed, Ordering::Relaxed);
    if !closed {
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.close()).await;
    }
    SubOutcome { stats, closed }
}

/// How a publisher spaces its SENDs.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// One SEND per interval, without receipts (catching up in a burst when late).
    Every(Duration),
    /// As fast as acknowledgements come back, with at most `size` outstanding: RECEIPTs, or
    /// with `echo` the publisher's own messages on its subscriptions.
    Window { size: usize, echo: bool },
}

struct Publisher {
    p: u64,
    rooms: Arc<[String]>,
    body: Arc<str>,
    start: Instant,
    deadline: Instant,
    pace: Pace,
    /// Shared progress counter, added to once per batch.
    sent: Arc<AtomicU64>,
}

/// What a publisher did: SENDs per room, and what stopped it early, if anything.
struct Published {
    sent: Vec<u64>,
    error: Option<ConnError>,
}

impl Publisher {
    async fn run(self, mut ws: Ws) -> Published {
        let mut sent = vec![0u64; self.rooms.len()];
        let mut window = Window::default();
        let mut result = match self.pace {
            Pace::Every(every) => self.paced(&mut ws, every, &mut sent).await,
            Pace::Window { size, echo } => {
                let ack = if echo {
                    Ack::Echo(self.p)
                } else {
                    Ack::Receipt
                };
                self.windowed(&mut ws, size, ack, &mut sent, &mut window)
                    .await
            }
        };
        // The receipts still due: the closing messages', and the SENDs' in receipt mode.
        let mut receipts = match self.pace {
            Pace::Window { echo: false, .. } => window,
            _ => Window::default(),
        };
        if result.is_ok() {
            result = self.close(&mut ws, &mut receipts).await;
        }
        if result.is_ok() {
            let _ = tokio::time::timeout(CLOSE_WAIT, ws.close()).await;
        }
        Published {
            sent,
            error: result.err(),
        }
    }

    fn frame(&self, n: u64, sent: &mut [u64], receipt: Option<u64>) -> String {
        let room = (n as usize + self.p as usize) % self.rooms.len();
        sent[room] += 1;
        wire::Send {
            room: &self.rooms[room],
            t: crate::micros(self.start),
            publisher: self.p,
            n,
            receipt,
            body: &self.body,
        }
        .encode()
    }

    async fn paced(&self, ws: &mut Ws, every: Duration, sent: &mut [u64]) -> Result<(), ConnError> {
        let mut n = 0u64;
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Ok(());
            }
            let first = n;
            while next <= now {
                ws.feed(&self.frame(n, sent, None));
                n += 1;
                next += every;
            }
            ws.flush().await?;
            self.sent.fetch_add(n - first, Ordering::Relaxed);
            tokio::time::sleep_until(next.min(self.deadline).into()).await;
        }
    }

    async fn windowed(
        &self,
        ws: &mut Ws,
        size: usize,
        ack: Ack,
        sent: &mut [u64],
        window: &mut Window,
    ) -> Result<(), ConnError> {
        // Refill in batches (half a window) so each write carries several frames.
        let refill_below = size - (size / 2).max(1);
        let mut n = 0u64;
        while Instant::now() < self.deadline {
            if window.outstanding() <= refill_below {
                let first = n;
                while window.outstanding() < size {
                    let id = window.next_id();
                    let receipt = (ack == Ack::Receipt).then_some(id);
                    ws.feed(&self.frame(n, sent, receipt));
                    n += 1;
                }
                ws.flush().await?;
                self.sent.fetch_add(n - first, Ordering::Relaxed);
            }
            window.wait_one(ws, ack).await?;
        }
        Ok(())
    }

    /// Sends the closing message to every room and waits for every receipt still due.
    async fn close(&self, ws: &mut Ws, receipts: &mut Window) -> Result<(), ConnError> {
        for room in self.rooms.iter() {
            let done = wire::Send {
                room,
                t: crate::micros(self.start),
                publisher: DONE,
                n: self.p,
                receipt: Some(receipts.next_id()),
                body: "done",
            };
            ws.feed(&done.encode());
        }
        ws.flush().await?;
        while receipts.outstanding() > 0 {
            receipts.wait_one(ws, Ack::Receipt).await?;
        }
        Ok(())
    }
}

/// What acknowledges a publisher's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// Its RECEIPT (the server answers in order).
    Receipt,
    /// A message of publisher `p` arriving on its own subscriptions (delivered in order).
    Echo(u64),
}

/// Frames a publisher sent that need acknowledging, and the acknowledgements it got.
#[derive(Debug, Default)]
struct Window {
    asked: u64,
    got: u64,
}

impl Window {
    fn next_id(&mut self) -> u64 {
        self.asked += 1;
        self.asked
    }

    fn outstanding(&self) -> usize {
        usize::try_from(self.asked - self.got).unwrap_or(usize::MAX)
    }

    /// Reads until the next acknowledgement; ERROR or the end of the connection is an error.
    async fn wait_one(&mut self, ws: &mut Ws, ack: Ack) -> Result<(), ConnError> {
        let acks = |f: &Inbound<'_>| match (ack, f) {
            (Ack::Receipt, Inbound::Receipt { .. }) => true,
            (Ack::Echo(p), Inbound::Message { seq, .. }) => seq.is_some_and(|(q, _)| q == p),
            _ => false,
        };
        tokio::time::timeout(RECEIPT_WAIT, net::expect(ws, acks))
            .await
            .unwrap_or(Err(ConnError::Timeout(RECEIPT_WAIT)))?;
        self.got += 1;
        Ok(())
    }
}

/// Reads every slow consumer now: one the server dropped ends (after whatever was buffered);
/// one still connected goes quiet once caught up.
async fn check_slow(slow: Vec<Ws>) -> Slow {
    let clients = slow.len() as u64;
    let mut set = JoinSet::new();
    for mut ws in slow {
        set.spawn(async move {
            loop {
                match tokio::time::timeout(SLOW_QUIET, ws.next()).await {
                    Err(_) => return false,
                    Ok(Ok(Incoming::Closed) | Err(_)) => return true,
                    Ok(Ok(Incoming::Data(_))) => {}
                }
            }
        });
    }
    let mut disconnected = 0;
    while let Some(r) = set.join_next().await {
        disconnected += u64::from(r.unwrap_or(false));
    }
    Slow {
        clients,
        disconnected,
    }
}
