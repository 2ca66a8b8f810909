// The Socket.IO peer of chat-server for the benchmark: Socket.IO 4 on a plain `http`
// server, WebSocket transport only, clustered through Redis with @socket.io/redis-adapter
// (node-redis 4 clients, as in the adapter's README).
//
// Env: PORT (listens on 127.0.0.1 only), REDIS_URL (redis://127.0.0.1:6379), SERVER_ID.
// Protocol:
//   join    (room, ack)                  -> socket.join(room); ack()
//   publish ({room, t, seq, body}, ack)  -> io.to(room).emit('message', {room, t, seq, body,
//                                           serverId, ts}); ack()   (the ack is the receipt)
// GET /healthz -> 200 "ok" once both Redis clients are ready (503 otherwise).
import http from 'node:http';
import { createClient } from 'redis';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';

const PORT = Number(process.env.PORT ?? 3000);
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const SERVER_ID = process.env.SERVER_ID ?? `sio-${process.pid}`;
const HOST = '127.0.0.1';

const log = (msg) => process.stderr.write(`[${SERVER_ID}] ${msg}\n`);

const pubClient = createClient({ url: REDIS_URL });
const subClient = pubClient.duplicate();
for (const [name, c] of [['pub', pubClient], ['sub', subClient]]) {
  // Without a listener node-redis' 'error' event would kill the process; it reconnects itself.
  c.on('error', (e) => log(`redis ${name} client: ${e.message}`));
}
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') {
    const ready = pubClient.isReady && subClient.isReady;
    res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' });
    res.end(ready ? 'ok' : 'redis not ready');
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
});

const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  adapter: createAdapter(pubClient, subClient),
});

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    if (typeof room === 'string') socket.join(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('publish', (m, ack) => {
    if (m !== null && typeof m === 'object' && typeof m.room === 'string') {
      io.to(m.room).emit('message', {
        room: m.room,
        t: m.t,
        seq: m.seq,
        body: m.body,
        serverId: SERVER_ID,
        ts: Date.now(),
      });
    }
    if (typeof ack === 'function') ack();
  });
});

httpServer.listen(PORT, HOST, () => {
  log(`socket.io listening on http://${HOST}:${httpServer.address().port} redis=${REDIS_URL} pid=${process.pid}`);
});

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: closing`);
  setTimeout(() => process.exit(0), 5000).unref();
  try {
    await io.close(); // disconnects the clients, closes the adapter and the http server
  } catch (e) {
    log(`close: ${e.message}`);
  }
  await Promise.allSettled([pubClient.quit(), subClient.quit()]);
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
