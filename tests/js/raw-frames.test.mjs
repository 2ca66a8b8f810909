// STOMP framing on the wire, byte by byte, with a bare `ws` socket: frames split across
// WebSocket messages, several frames in one message, binary messages, header escapes,
// a client that offers no subprotocol, and ERROR-then-close on bad input.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { SUBPROTOCOLS, WS_URL, getJson, uniqueId, waitFor, within } from './helpers.mjs';

const sockets = new Set();
after(() => { for (const s of sockets) s.terminate(); });

const esc = (s) => s.replace(/\\/g, '\\\\').replace(/\r/g, '\\r').replace(/\n/g, '\\n').replace(/:/g, '\\c');
const unesc = (s) => s.replace(/\\(.)/g, (_, c) => ({ r: '\r', n: '\n', c: ':', '\\': '\\' }[c]));

/** A frame as bytes; headers are escaped unless the command is CONNECT. */
function frame(command, headers = {}, body = '') {
  const e = command === 'CONNECT' ? String : esc;
  const b = Buffer.from(body);
  const head = [command, ...Object.entries(headers).map(([k, v]) => `${e(k)}:${e(String(v))}`)];
  if (b.length) head.push(`content-length:${b.length}`);
  return Buffer.concat([Buffer.from(head.join('\n') + '\n\n'), b, Buffer.from([0])]);
}

/** A raw socket that parses what arrives into frames (and counts heart-beat EOLs). */
async function open(protocols = SUBPROTOCOLS) {
  const ws = protocols ? new WebSocket(WS_URL, protocols) : new WebSocket(WS_URL);
  sockets.add(ws);
  const conn = { ws, frames: [], closed: null, buf: Buffer.alloc(0), taken: 0 };
  ws.on('message', (data) => {
    conn.buf = Buffer.concat([conn.buf, Buffer.from(data)]);
    for (;;) {
      let pos = 0;
      while (pos < conn.buf.length && (conn.buf[pos] === 10 || conn.buf[pos] === 13)) pos++;
      conn.buf = conn.buf.subarray(pos);
      const sep = conn.buf.indexOf('\n\n');
      if (sep < 0) return;
      const lines = conn.buf.subarray(0, sep).toString().split('\n').map((l) => l.replace(/\r$/, ''));
      const command = lines.shift();
      const headers = {};
      for (const l of lines) {
        const i = l.indexOf(':');
        const k = unesc(l.slice(0, i));
        if (!(k in headers)) headers[k] = command === 'CONNECTED' ? l.slice(i + 1) : unesc(l.slice(i + 1));
      }
      const start = sep + 2;
      const end = headers['content-length'] !== undefined ? start + Number(headers['content-length']) : conn.buf.indexOf(0, start);
      if (end < 0 || conn.buf.length <= end) return;
      assert.equal(conn.buf[end], 0, 'a frame ends with NUL');
      conn.frames.push({ command, headers, body: conn.buf.subarray(start, end).toString() });
      conn.buf = conn.buf.subarray(end + 1);
    }
  });
  ws.on('close', (code, reason) => { conn.closed = { code, reason: String(reason) }; });
  await within(new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); }), 5000, 'WebSocket open');
  conn.next = async (pred = () => true, what = 'a frame') => {
    const f = await waitFor(() => {
      for (let i = conn.taken; i < conn.frames.length; i++) if (pred(conn.frames[i])) { conn.taken = i + 1; return conn.frames[i]; }
      return null;
    }, 5000, what);
    return f;
  };
  conn.send = (...bufs) => ws.send(Buffer.concat(bufs).toString());
  return conn;
}

describe('STOMP framing with a bare WebSocket', () => {
  test('a CONNECT split across three messages; SUBSCRIBE and two SENDs in one', async () => {
    const login = uniqueId('raw');
    const room = uniqueId('rawroom');
    const c = await open();
    assert.equal(c.ws.protocol, 'v12.stomp');
    const connect = frame('CONNECT', { 'accept-version': '1.2', host: 'localhost', login, 'heart-beat': '0,0' });
    c.send(connect.subarray(0, 5));
    await new Promise((r) => setTimeout(r, 30));
    c.send(connect.subarray(5, 20));
    await new Promise((r) => setTimeout(r, 30));
    c.send(connect.subarray(20));
    const connected = await c.next((f) => f.command === 'CONNECTED', 'CONNECTED');
    assert.equal(connected.headers.version, '1.2');
    assert.match(connected.headers['heart-beat'], /^\d+,\d+$/, "the server's own sx,sy (with our 0,0: none either way)");

    const odd = 'a:b\\c\nd';
    c.send(
      frame('SUBSCRIBE', { id: 's:1', destination: `/topic/room/${room}`, receipt: 'sub' }),
      frame('SEND', { destination: `/app/room/${room}`, receipt: 'one', 'content-type': 'application/json', 'x-odd': odd },
        JSON.stringify({ content: 'first ✓', type: 'CHAT' })),
      Buffer.from('\n\n'), // heart-beat EOLs between frames
      frame('SEND', { destination: `/app/room/${room}`, receipt: 'two' }, 'second\0with a NUL inside'),
    );
    for (const r of ['sub', 'one', 'two']) await c.next((f) => f.command === 'RECEIPT' && f.headers['receipt-id'] === r, `RECEIPT ${r}`);
    const join = await c.next((f) => f.command === 'MESSAGE' && JSON.parse(f.body).type === 'JOIN', 'JOIN');
    assert.equal(join.headers.subscription, 's:1', 'the subscription id comes back escaped and intact');
    const first = await c.next((f) => f.command === 'MESSAGE' && JSON.parse(f.body).type === 'CHAT', 'first');
    const second = await c.next((f) => f.command === 'MESSAGE' && JSON.parse(f.body).type === 'CHAT', 'second');
    assert.equal(JSON.parse(first.body).content, 'first ✓');
    assert.equal(first.headers['x-odd'], odd, 'a header with : \\ and newline survives escaping');
    assert.equal(JSON.parse(second.body).content, 'second\0with a NUL inside');
    assert.deepEqual([join, first, second].map((f) => Number(f.headers['x-offset'])), [1, 2, 3]);
    c.send(frame('DISCONNECT', { receipt: 'bye' }));
    await c.next((f) => f.command === 'RECEIPT' && f.headers['receipt-id'] === 'bye', 'RECEIPT bye');
    await waitFor(() => c.closed, 5000, 'close after DISCONNECT');
  });

  test('a SEND body split across messages, sent as binary', async () => {
    const room = uniqueId('rawbin');
    const c = await open();
    c.ws.send(frame('CONNECT', { 'accept-version': '1.2', host: 'localhost', login: uniqueId('bin') }));
    await c.next((f) => f.command === 'CONNECTED', 'CONNECTED');
    c.ws.send(frame('SUBSCRIBE', { id: '0', destination: `/topic/room/${room}`, 'x-presence': 'false', receipt: 'sub' }));
    await c.next((f) => f.command === 'RECEIPT', 'RECEIPT sub');
    const send = frame('SEND', { destination: `/app/room/${room}`, receipt: 'r' }, 'ü'.repeat(3000));
    c.ws.send(send.subarray(0, 1000));
    c.ws.send(send.subarray(1000, 1001)); // in the middle of a two-byte character
    c.ws.send(send.subarray(1001));
    await c.next((f) => f.command === 'RECEIPT', 'RECEIPT r');
    const m = await c.next((f) => f.command === 'MESSAGE', 'MESSAGE');
    const ev = JSON.parse(m.body);
    assert.equal(ev.content, 'ü'.repeat(3000));
    assert.equal(ev.offset, 1, 'x-presence:false publishes no JOIN');
    const pres = await getJson(`/api/rooms/${room}/presence`);
    assert.deepEqual(pres.body.members, []);
  });

  test('a client that offers no subprotocol still speaks STOMP', async () => {
    const c = await open(null);
    c.send(frame('CONNECT', { 'accept-version': '1.2', host: 'localhost', login: uniqueId('noproto') }));
    const f = await c.next(() => true, 'CONNECTED');
    assert.equal(f.command, 'CONNECTED');
  });

  test('bad input: ERROR with a message header, then the connection closes; others are unaffected', async () => {
    const bystander = await open();
    bystander.send(frame('CONNECT', { 'accept-version': '1.2', host: 'localhost', login: uniqueId('ok') }));
    await bystander.next((f) => f.command === 'CONNECTED', 'CONNECTED');

    const cases = [
      ['a frame before CONNECT', [frame('SEND', { destination: '/app/room/x' }, 'hi')]],
      ['a bad login', [frame('CONNECT', { 'accept-version': '1.2', host: 'localhost', login: 'not valid!' })]],
      ['an unknown command', [frame('CONNECT', { 'accept-version': '1.2', host: 'h', login: uniqueId('u') }), Buffer.from('FROB\n\n\0')]],
      ['a bad room id', [frame('CONNECT', { 'accept-version': '1.2', host: 'h', login: uniqueId('u') }),
        frame('SUBSCRIBE', { id: '1', destination: '/topic/room/no spaces' })]],
      ['a SUBSCRIBE without id', [frame('CONNECT', { 'accept-version': '1.2', host: 'h', login: uniqueId('u') }),
        frame('SUBSCRIBE', { destination: '/topic/room/fine' })]],
      ['an unknown destination', [frame('CONNECT', { 'accept-version': '1.2', host: 'h', login: uniqueId('u') }),
        frame('SEND', { destination: '/queue/elsewhere' }, 'x')]],
      // Over the 64 KiB frame limit but within the WebSocket message limit (which is 4 KiB higher).
      ['a frame over 64 KiB', [frame('CONNECT', { 'accept-version': '1.2', host: 'h', login: uniqueId('u') }),
        frame('SEND', { destination: '/app/room/big' }, 'x'.repeat(66000))]],
    ];
    for (const [what, bufs] of cases) {
      const c = await open();
      for (const b of bufs) c.ws.send(b);
      const err = await c.next((f) => f.command === 'ERROR', `ERROR for ${what}`);
      assert.ok(err.headers.message, `${what}: ERROR has a message header`);
      await waitFor(() => c.closed, 5000, `close after ERROR for ${what}`);
    }

    bystander.send(frame('SUBSCRIBE', { id: 'x', destination: `/topic/room/${uniqueId('still')}`, receipt: 'alive' }));
    await bystander.next((f) => f.command === 'RECEIPT' && f.headers['receipt-id'] === 'alive', 'the bystander is unaffected');
  });
});
