// The chat server's SockJS endpoint with the real sockjs-client (1.6, from npm) under
// @stomp/stompjs, as Spring front-ends connect: `webSocketFactory: () => new SockJS(url)`.
// Each transport is forced in turn; under Node, sockjs-client drives xhr with `http`, the
// websocket with faye-websocket and eventsource with the `eventsource` package.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@stomp/stompjs';
import SockJS from 'sockjs-client';
import { CHAT_URL, getJson, uniqueId, waitFor, within } from './helpers.mjs';

const SOCKJS_URL = `${CHAT_URL}/ws`;
const clients = new Set();

after(async () => {
  await Promise.all([...clients].map((c) => c.deactivate().catch(() => {})));
});

/** A stompjs Client over SockJS forced to `transport` (all, as Spring pages do, when
 * undefined); resolves once CONNECTED (10 s). */
function connect(transport, login) {
  const sockets = [];
  return within(new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: () => {
        const s = new SockJS(SOCKJS_URL, null, transport ? { transports: [transport] } : {});
        sockets.push(s);
        return s;
      },
      connectHeaders: { login },
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      reconnectDelay: 0,
      onConnect: (connected) => resolve({ client, connected, sockets }),
      onStompError: (frame) => reject(new Error(`ERROR frame: ${frame.headers.message} ${frame.body}`)),
      onWebSocketClose: (ev) => reject(new Error(`SockJS closed before CONNECTED: ${ev.code} ${ev.reason}`)),
    });
    clients.add(client);
    client.activate();
  }), 10000, `CONNECTED over ${transport} for ${login}`);
}

/** Subscribes with a receipt; resolves with the recorded messages once the RECEIPT came. */
async function subscribe(client, destination, id) {
  const messages = [];
  const receipt = uniqueId('sub');
  const got = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  client.subscribe(destination, (m) => messages.push(m), { id, receipt });
  await within(got, 5000, `RECEIPT for SUBSCRIBE ${id}`);
  return messages;
}

const TRANSPORTS = ['websocket', 'xhr-streaming', 'xhr-polling', 'eventsource'];

describe('sockjs-client under @stomp/stompjs against chat-server', () => {
  test('info answers as the SockJS protocol says', async () => {
    const info = await getJson('/ws/info');
    assert.equal(info.status, 200);
    assert.equal(info.body.websocket, true);
    assert.equal(info.body.cookie_needed, false);
    assert.deepEqual(info.body.origins, ['*:*']);
    assert.equal(typeof info.body.entropy, 'number');
  });

  test('left to choose, as `new SockJS(\'/ws\')` is, sockjs-client takes the websocket transport', async () => {
    const { client, connected, sockets } = await connect(undefined, uniqueId('spring'));
    assert.equal(connected.headers.version, '1.2');
    assert.equal(sockets[0].transport, 'websocket');
    await client.deactivate();
  });

  for (const transport of TRANSPORTS) {
    test(`over ${transport}: connect, subscribe, send with a receipt, the room's MESSAGE arrives, disconnect`, async () => {
      const room = uniqueId('sockjs');
      const aliceId = uniqueId('alice');
      const bobId = uniqueId('bob');
      const alice = await connect(transport, aliceId);
      const bob = await connect(transport, bobId);
      assert.equal(alice.connected.headers.version, '1.2');
      assert.equal(alice.connected.headers['user-name'], aliceId);
      assert.equal(alice.sockets[0].transport, transport, 'the forced transport is the one in use');

      const atAlice = await subscribe(alice.client, `/topic/room/${room}`, 'a0');
      const atBob = await subscribe(bob.client, `/topic/room/${room}`, 'b0');

      const receipt = uniqueId('r');
      const receipted = new Promise((resolve) => alice.client.watchForReceipt(receipt, resolve));
      const content = `hello over ${transport} \u00e9\u4e16 "quoted"\nline`;
      alice.client.publish({
        destination: `/app/room/${room}`,
        body: JSON.stringify({ content, type: 'CHAT' }),
        headers: { 'content-type': 'application/json', receipt },
      });
      await within(receipted, 5000, `RECEIPT ${receipt}`);

      const chat = (ms) => ms.map((m) => ({ m, b: JSON.parse(m.body) })).find(({ b }) => b.type === 'CHAT');
      const mine = await waitFor(() => chat(atAlice), 5000, 'alice gets her own message');
      const theirs = await waitFor(() => chat(atBob), 5000, 'bob gets alice\'s message');
      for (const [got, sub] of [[mine, 'a0'], [theirs, 'b0']]) {
        assert.equal(got.m.command, 'MESSAGE');
        assert.equal(got.m.headers.subscription, sub);
        assert.equal(got.m.headers.destination, `/topic/room/${room}`);
        assert.equal(got.b.content, content);
        assert.equal(got.b.sender.id, aliceId);
      }
      assert.equal(mine.b.id, theirs.b.id);

      for (const { client, sockets } of [alice, bob]) {
        const closed = new Promise((resolve) => sockets[0].addEventListener('close', resolve));
        await client.deactivate();
        await within(closed, 5000, 'the SockJS socket closes');
        assert.equal(client.connected, false);
      }
    });
  }
});
