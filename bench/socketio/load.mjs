// socketio-load: the Socket.IO mirror of chatcluster's `chat-load` (bench/chat-load),
// reporting the same figures against bench/socketio/server.mjs.
//
// --mode fanout (default): `--clients` subscribers spread round-robin over the `--url`s, subscriber
// i in room i % R; `--publishers` sockets spread over the `--publish-url`s (default: the `--url`s)
// publish for `--duration` seconds at `--rate` messages/s in total (0: as fast as possible, each
// publisher keeping at most `--window` publishes awaiting their ack). Publisher p sends its n-th
// message, seq "p.n", to room (n + p) % R with `t` = its publish time in µs (one process clock).
// Subscribers measure latency, duplicates and order violations per publisher; lost = expected -
// received. Waits 2 s for stragglers, prints a markdown table (and `--json FILE`), exits 1 on any
// loss, duplicate or order violation.
// --mode idle: open `--clients` connections, join, print `READY connections=N`, hold `--hold`
// seconds, disconnect, report connects/s. --mode connect: the same with no hold.
import { parseArgs } from 'node:util';
import { writeFileSync } from 'node:fs';
import { io } from 'socket.io-client';

const USAGE = `usage: node load.mjs --url URL [--url URL ...] [--publish-url URL ...] [--clients N]
  [--rooms R] [--publishers P] [--rate M] [--window W] [--duration S] [--body B] [--json FILE]
  [--mode fanout|idle|connect] [--hold S] [--connect-concurrency C]`;

function parseCli() {
  let v;
  try {
    ({ values: v } = parseArgs({
      options: {
        url: { type: 'string', multiple: true },
        'publish-url': { type: 'string', multiple: true },
        clients: { type: 'string', default: '100' },
        rooms: { type: 'string', default: '1' },
        publishers: { type: 'string', default: '1' },
        rate: { type: 'string', default: '100' },
        window: { type: 'string', default: '64' },
        duration: { type: 'string', default: '10' },
        body: { type: 'string', default: '100' },
        json: { type: 'string' },
        mode: { type: 'string', default: 'fanout' },
        hold: { type: 'string', default: '10' },
        'connect-concurrency': { type: 'string', default: '200' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    die(`${e.message}\n${USAGE}`);
  }
  if (v.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const num = (name, { int = true, min = 0 } = {}) => {
    const x = Number(v[name]);
    if (!Number.isFinite(x) || x < min || (int && !Number.isInteger(x))) {
      die(`--${name}: expected ${int ? 'an integer' : 'a number'} >= ${min}, got ${v[name]}`);
    }
    return x;
  };
  const a = {
    urls: v.url ?? [],
    publish_urls: v['publish-url'] ?? [],
    clients: num('clients'),
    rooms: num('rooms', { min: 1 }),
    publishers: num('publishers', { min: 1 }),
    rate: num('rate', { int: false }),
    window: num('window', { min: 1 }),
    duration: num('duration', { int: false }),
    body: num('body'),
    json: v.json ?? null,
    mode: v.mode,
    hold: num('hold', { int: false }),
    connect_concurrency: num('connect-concurrency', { min: 1 }),
  };
  if (a.urls.length === 0) die(`--url is required\n${USAGE}`);
  if (!['fanout', 'idle', 'connect'].includes(a.mode)) die(`--mode: fanout, idle or connect, got ${a.mode}`);
  if (a.mode === 'connect') a.hold = 0;
  return a;
}

function die(msg) {
  process.stderr.write(`socketio-load: ${msg}\n`);
  process.exit(2);
}

const T0 = process.hrtime.bigint();
/** Microseconds since this process started: the one clock of every `t` and every receipt. */
const nowUs = () => Number((process.hrtime.bigint() - T0) / 1000n);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fmt = (x, d) => x.toFixed(d);
const progress = (what, value) =>
  process.stderr.write(`t=${fmt(nowUs() / 1e6, 1).padStart(5)}s ${what}=${String(value).padStart(9)}\n`);

const args = parseCli();
const roomName = (r) => `load-${process.pid}-${r}`;

// ---- connections ---------------------------------------------------------------------------

let closing = false;
let dropped = 0;

function connectOne(url) {
  return new Promise((resolve, reject) => {
    const s = io(url, {
      transports: ['websocket'],
      forceNew: true, // one WebSocket per client, never multiplexed
      reconnection: false, // a dropped connection is counted, not silently replaced
      timeout: 20000,
    });
    s.once('connect', () => {
      s.off('connect_error');
      s.on('disconnect', (reason) => {
        if (closing) return;
        dropped += 1;
        if (dropped <= 5) process.stderr.write(`connection dropped: ${reason}\n`);
      });
      resolve(s);
    });
    s.once('connect_error', (e) => {
      s.close();
      reject(e);
    });
  });
}

/** Opens `n` sockets, at most `concurrency` at a time; `setup(i, socket)` runs before it counts. */
async function connectMany(n, urlOf, setup, concurrency) {
  const sockets = new Array(n).fill(null);
  let next = 0;
  let errors = 0;
  let done = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      try {
        const s = await connectOne(urlOf(i));
        sockets[i] = s;
        await setup(i, s);
        done += 1;
      } catch (e) {
        errors += 1;
        if (errors <= 5) process.stderr.write(`connect ${urlOf(i)}: ${e.message}\n`);
      }
    }
  };
  const ticker = setInterval(() => progress('connections', done), 1000);
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  } finally {
    clearInterval(ticker);
  }
  return { sockets, errors };
}

const join = (s, room) => s.timeout(20000).emitWithAck('join', room);

function closeAll(sockets) {
  closing = true;
  for (const s of sockets) if (s) s.disconnect();
}

// ---- results -------------------------------------------------------------------------------

function table(rows) {
  const out = ['| metric | value |', '|---|---|', ...rows.map(([k, v]) => `| ${k} | ${v} |`)];
  process.stdout.write(`${out.join('\n')}\n`);
}

function writeJson(v) {
  if (args.json) writeFileSync(args.json, `${JSON.stringify(v, null, 2)}\n`);
}

// ---- idle / connect ------------------------------------------------------------------------

async function idleOrConnect() {
  const start = nowUs();
  const { sockets, errors } = await connectMany(
    args.clients,
    (i) => args.urls[i % args.urls.length],
    (i, s) => join(s, roomName(i % args.rooms)),
    args.connect_concurrency,
  );
  const connectSeconds = (nowUs() - start) / 1e6;
  const connections = args.clients - errors;
  process.stdout.write(`READY connections=${connections}\n`);
  if (args.hold > 0) {
    const until = Date.now() + args.hold * 1000;
    while (Date.now() < until) {
      await sleep(Math.min(1000, until - Date.now()));
      progress('connections', connections - dropped);
    }
  }
  const stillOpen = connections - dropped;
  closeAll(sockets);
  const cps = connectSeconds > 0 ? connections / connectSeconds : 0;
  table([
    ['connections', connections],
    ['connect errors / dropped while held', `${errors} / ${dropped}`],
    ['connect seconds', fmt(connectSeconds, 2)],
    ['connects/s', fmt(cps, 0)],
  ]);
  writeJson({
    tool: 'socketio-load',
    mode: args.mode,
    connections,
    connect_errors: errors,
    dropped,
    open_at_end_of_hold: stillOpen,
    connect_seconds: connectSeconds,
    connects_per_sec: cps,
    args: jsonArgs(),
  });
  await sleep(200); // let the close frames go out
  return errors > 0 || dropped > 0 ? 1 : 0;
}

function jsonArgs() {
  const { json: _json, ...rest } = args;
  return rest;
}

// ---- fanout --------------------------------------------------------------------------------

// Latencies: 10 µs buckets up to 10 s (the last bucket holds everything above), plus the max.
const BUCKET_US = 10;
const NBUCKETS = 1_000_000;
const hist = new Uint32Array(NBUCKETS + 1);
let maxLatUs = 0;
let received = 0;
let duplicates = 0;
let reordered = 0;

function percentile(q) {
  if (received === 0) return 0;
  if (q >= 1) return maxLatUs / 1000;
  const k = Math.round((received - 1) * q); // the rank chat-load reads from its sorted vector
  let cum = 0;
  for (let b = 0; b <= NBUCKETS; b++) {
    cum += hist[b];
    if (cum > k) return b === NBUCKETS ? maxLatUs / 1000 : Math.min(b * BUCKET_US + BUCKET_US / 2, maxLatUs) / 1000;
  }
  return maxLatUs / 1000;
}

async function fanout() {
  const { clients, rooms, publishers } = args;
  const pubUrls = args.publish_urls.length > 0 ? args.publish_urls : args.urls;
  const inRoom = new Float64Array(rooms);
  for (let i = 0; i < clients; i++) inRoom[i % rooms] += 1;
  // Per subscriber and publisher, the last n seen (-1: none yet).
  const lastSeq = new Int32Array(clients * publishers).fill(-1);

  const onSubscriber = (i, s) => {
    const base = i * publishers;
    s.on('message', (m) => {
      const now = nowUs();
      const seq = m.seq;
      const dot = seq.indexOf('.');
      const k = base + +seq.slice(0, dot);
      const n = +seq.slice(dot + 1);
      const last = lastSeq[k];
      if (n === last) duplicates += 1;
      else if (n < last) reordered += 1;
      else lastSeq[k] = n;
      received += 1;
      const lat = now > m.t ? now - m.t : 0;
      if (lat > maxLatUs) maxLatUs = lat;
      const b = (lat / BUCKET_US) | 0;
      hist[b < NBUCKETS ? b : NBUCKETS] += 1;
    });
    return join(s, roomName(i % rooms));
  };

  const connectStart = nowUs();
  const subs = await connectMany(clients, (i) => args.urls[i % args.urls.length], onSubscriber, args.connect_concurrency);
  const pubs = await connectMany(publishers, (p) => pubUrls[p % pubUrls.length], () => {}, args.connect_concurrency);
  const connectSeconds = (nowUs() - connectStart) / 1e6;
  const connections = clients + publishers - subs.errors - pubs.errors;
  if (subs.errors > 0 || pubs.errors > 0) {
    closeAll([...subs.sockets, ...pubs.sockets]);
    die(`${subs.errors} subscriber(s) and ${pubs.errors} publisher(s) failed to connect`);
  }
  process.stderr.write(`${clients} subscribers in ${rooms} room(s) on ${args.urls.length} instance(s)\n`);

  const sentPerRoom = new Float64Array(rooms);
  const body = 'x'.repeat(args.body);
  const roomNames = Array.from({ length: rooms }, (_, r) => roomName(r));
  const pubStart = nowUs();
  const deadline = pubStart + args.duration * 1e6;
  // Markers for scripts/bench, which reads the servers' CPU time at each.
  process.stdout.write('PUBLISH start\n');
  const endMarker = setTimeout(() => process.stdout.write('PUBLISH end\n'), args.duration * 1000);
  const everyUs = args.rate > 0 ? (1e6 * publishers) / args.rate : 0;

  let lastTotal = 0;
  const ticker = setInterval(() => {
    progress('deliveries/s', received - lastTotal);
    lastTotal = received;
  }, 1000);

  const publisher = (p, s) =>
    new Promise((resolve) => {
      let n = 0;
      let outstanding = 0;
      let finished = false;
      const send = () => {
        const room = (n + p) % rooms;
        s.emit('publish', { room: roomNames[room], t: nowUs(), seq: `${p}.${n}`, body }, onAck);
        sentPerRoom[room] += 1;
        n += 1;
        outstanding += 1;
      };
      const finish = () => {
        finished = true;
        if (outstanding === 0) resolve(n);
      };
      function onAck() {
        outstanding -= 1;
        if (!finished && everyUs === 0) {
          if (nowUs() < deadline) send();
          else finished = true;
        }
        if (finished && outstanding === 0) resolve(n);
      }
      s.on('disconnect', () => resolve(n)); // its acks will never come
      if (everyUs === 0) {
        while (outstanding < args.window && nowUs() < deadline) send();
        if (outstanding === 0) finish();
        return;
      }
      let next = nowUs();
      const tick = () => {
        let now = nowUs();
        // Send what is due; yield every 1024 sends so acks and deliveries are read meanwhile.
        for (let burst = 0; now < deadline && next <= now && burst < 1024; burst++) {
          send();
          next += everyUs;
          now = nowUs();
        }
        if (now >= deadline) finish();
        else if (next <= now) setImmediate(tick);
        else setTimeout(tick, (next - now) / 1000);
      };
      tick();
    });

  const sentCounts = await Promise.all(pubs.sockets.map((s, p) => publisher(p, s)));
  const published = sentCounts.reduce((a, b) => a + b, 0);
  const publishedFor = (nowUs() - pubStart) / 1e6;
  await sleep(2000);
  clearInterval(ticker);
  // The figures are taken now: anything later is not counted, as in chat-load.
  const got = received;
  const dups = duplicates;
  const reord = reordered;
  let expected = 0;
  for (let r = 0; r < rooms; r++) expected += sentPerRoom[r] * inRoom[r];
  const lost = Math.max(0, expected - got);
  const rate = got / publishedFor;
  const lat = { p50: percentile(0.5), p90: percentile(0.9), p99: percentile(0.99), max: percentile(1) };
  closeAll([...subs.sockets, ...pubs.sockets]);
  table([
    ['messages published', published],
    ['deliveries expected / received', `${expected} / ${got}`],
    ['lost / duplicates / order violations', `${lost} / ${dups} / ${reord}`],
    ['deliveries/s', fmt(rate, 0)],
    ['latency p50 / p90 / p99 / max (ms)', [lat.p50, lat.p90, lat.p99, lat.max].map((x) => fmt(x, 2)).join(' / ')],
  ]);
  if (dropped > 0) process.stderr.write(`${dropped} connection(s) dropped during the run\n`);
  writeJson({
    tool: 'socketio-load',
    mode: 'fanout',
    published,
    expected,
    received: got,
    lost,
    duplicates: dups,
    order_violations: reord,
    deliveries_per_sec: rate,
    latency_ms: lat,
    connections,
    connect_seconds: connectSeconds,
    connects_per_sec: connectSeconds > 0 ? connections / connectSeconds : 0,
    publish_seconds: publishedFor,
    dropped,
    args: jsonArgs(),
  });
  await sleep(200); // let the close frames go out
  return lost > 0 || dups > 0 || reord > 0 ? 1 : 0;
}

const code = args.mode === 'fanout' ? await fanout() : await idleOrConnect();
process.exit(code);
