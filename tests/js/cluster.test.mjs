// Two chat-server instances clustered through one Redis, with real @stomp/stompjs clients on
// `ws`: a client on each instance, room fan-out with contiguous offsets, a direct message across
// instances, and cluster-wide presence.
// Needs CHAT_URL_A and CHAT_URL_B (http://host:port of two instances on the same Redis);
// scripts/client-tests starts them. Without them this file skips itself. CHAT_SERVER_ID_A and
// CHAT_SERVER_ID_B, when set, are the ids the instances must report.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connectClient, publishReceipted, subscribeRecorded } from './stomp-client.mjs';

const URL_A = (process.env.CHAT_URL_A || '').replace(/\/+$/, '');
const URL_B = (process.env.CHAT_URL_B || '').replace(/\/+$/, '');

if (!URL_A || !URL_B) {
  test('cluster: two instances on one Redis', { skip: 'set CHAT_URL_A and CHAT_URL_B (scripts/client-tests does)' }, () => {});
} else {
  // Imported only here: helpers.mjs insists on a server address at import time.
  const { getJsonAt, uniqueId, waitFor, wsUrlOf } = await import('./helpers.mjs');

  const clients = new Set();
  after(async () => {
    await Promise.all([...clients].map((c) => c.deactivate().catch(() => {})));
  });

  /** Connects a stompjs Client as `login` to the instance at `baseUrl`; resolves once CONNECTED. */
  const connect = (baseUrl, login) => connectClient(wsUrlOf(baseUrl), { login }, clients, `${login} at ${baseUrl}`);

  const subscribe = subscribeRecorded;
  const publish = publishReceipted;

  describe('cluster: two chat-server instances on one Redis', () => {
    let ann; let bob; let annServer; let bobServer;

    test('ann on instance A and bob on instance B see different x-server-id', async () => {
      const a = await connect(URL_A, 'ann');
      const b = await connect(URL_B, 'bob');
      ann = a.client;
      bob = b.client;
      annServer = a.connected.headers['x-server-id'];
      bobServer = b.connected.headers['x-server-id'];
      assert.ok(annServer, 'x-server-id from A');
      assert.ok(bobServer, 'x-server-id from B');
      assert.notEqual(annServer, bobServer, 'the two URLs are two instances');
      if (process.env.CHAT_SERVER_ID_A) assert.equal(annServer, process.env.CHAT_SERVER_ID_A);
      if (process.env.CHAT_SERVER_ID_B) assert.equal(bobServer, process.env.CHAT_SERVER_ID_B);
      assert.equal(a.connected.headers['user-name'], 'ann');
      assert.equal(b.connected.headers['user-name'], 'bob');
    });

    test('room fan-out: 20 + 20 messages from two instances reach both, once each, with contiguous offsets', async () => {
      assert.ok(ann && bob, 'connected by the first test');
      const room = uniqueId('cluster-room');
      const dest = `/topic/room/${room}`;
      const subAnn = await subscribe(ann, dest, { id: 'room', 'x-presence': 'false' });
      const subBob = await subscribe(bob, dest, { id: 'room', 'x-presence': 'false' });

      // Each client sends its 20 in sequence, each SEND waiting for its RECEIPT; the two senders
      // run at the same time so that the instances interleave.
      const sendAll = async (client, who) => {
        for (let i = 1; i <= 20; i++) {
          await publish(client, `/app/room/${room}`, JSON.stringify({ content: `${who}-${i}`, type: 'CHAT' }));
        }
      };
      await Promise.all([sendAll(ann, 'ann'), sendAll(bob, 'bob')]);

      const expected = [...Array.from({ length: 20 }, (_, i) => `ann-${i + 1}`), ...Array.from({ length: 20 }, (_, i) => `bob-${i + 1}`)].sort();
      const chats = (s) => s.messages.filter((m) => m.body.type === 'CHAT');
      for (const [name, s] of [['ann', subAnn], ['bob', subBob]]) {
        await waitFor(() => chats(s).length >= 40, 5000, `40 messages at ${name}`);
      }
      // Anything duplicated would arrive right behind the rest.
      await new Promise((r) => setTimeout(r, 300));

      const orders = [];
      for (const [name, s] of [['ann', subAnn], ['bob', subBob]]) {
        const got = chats(s);
        assert.equal(got.length, 40, `${name} got exactly 40 chat messages`);
        assert.deepEqual(got.map((m) => m.body.content).sort(), expected, `${name} got each message once`);
        assert.equal(new Set(got.map((m) => m.body.id)).size, 40, `${name}: 40 distinct event ids`);
        const offsets = got.map((m) => Number(m.frame.headers['x-offset']));
        for (let i = 1; i < offsets.length; i++) {
          assert.equal(offsets[i], offsets[i - 1] + 1, `${name}: x-offset contiguous and increasing: ${offsets.join(',')}`);
        }
        for (const m of got) {
          assert.equal(m.frame.headers.destination, dest);
          assert.equal(m.frame.headers.subscription, 'room');
          assert.equal(m.frame.headers['x-offset'], String(m.body.offset));
          assert.equal(m.frame.headers['x-epoch'], m.body.epoch);
          assert.equal(m.body.roomId, room);
          assert.equal(m.body.sender.id, m.body.content.split('-')[0], 'the sender is the authenticated user');
          // The instance that accepted the SEND stamps the event.
          assert.equal(m.body.serverId, m.body.sender.id === 'ann' ? annServer : bobServer);
        }
        orders.push(got.map((m) => `${m.body.offset}:${m.body.id}`));
      }
      assert.deepEqual(orders[0], orders[1], 'both clients see the same events at the same offsets');
      // A client's own messages keep their order.
      const annSeen = chats(subAnn).map((m) => m.body.content);
      assert.deepEqual(annSeen.filter((c) => c.startsWith('ann-')), Array.from({ length: 20 }, (_, i) => `ann-${i + 1}`));
      assert.deepEqual(annSeen.filter((c) => c.startsWith('bob-')), Array.from({ length: 20 }, (_, i) => `bob-${i + 1}`));

      // Both instances serve the same history.
      const last = chats(subAnn).at(-1).body.offset;
      for (const base of [URL_A, URL_B]) {
        const hist = await getJsonAt(base, `/api/rooms/${room}/messages?since=0&limit=100`);
        assert.equal(hist.status, 200, JSON.stringify(hist.body));
        assert.equal(hist.body.lastOffset, last, `lastOffset via ${base}`);
        const chatHist = hist.body.messages.filter((e) => e.type === 'CHAT');
        assert.deepEqual(chatHist.map((e) => `${e.offset}:${e.id}`), orders[0], `history via ${base}`);
      }

      subAnn.sub.unsubscribe();
      subBob.sub.unsubscribe();
    });

    test('direct message from ann on A reaches bob on B', async () => {
      assert.ok(ann && bob, 'connected by the first test');
      const inbox = await subscribe(bob, '/user/queue/messages', { id: 'dm' });
      const content = `psst ${uniqueId('dm')}`;
      await publish(ann, '/app/user/bob', JSON.stringify({ content, type: 'CHAT' }));
      const got = await inbox.find((b) => b.content === content, 'the DM from ann');
      assert.equal(got.frame.headers.subscription, 'dm');
      assert.equal(got.body.sender.id, 'ann');
      assert.equal(got.body.to, 'bob');
      assert.equal(got.body.serverId, annServer, 'stamped by the instance ann is on');
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(inbox.messages.filter((m) => m.body.content === content).length, 1, 'delivered once');
      inbox.sub.unsubscribe();
    });

    test('presence across instances: GET /api/rooms/{room}/presence on A lists ann (A) and bob (B)', async () => {
      assert.ok(ann && bob, 'connected by the first test');
      const room = uniqueId('cluster-presence');
      const dest = `/topic/room/${room}`;
      const atAnn = await subscribe(ann, dest, { id: 'pres' });
      const atBob = await subscribe(bob, dest, { id: 'pres' });
      // Bob's JOIN on B reaches ann on A (ann joined before bob subscribed: he sees only his own).
      const bobJoin = await atAnn.find((b) => b.type === 'JOIN' && b.sender.id === 'bob', 'bob JOIN at ann');
      assert.equal(bobJoin.body.serverId, bobServer);
      await atBob.find((b) => b.type === 'JOIN' && b.sender.id === 'bob', 'bob own JOIN');

      const members = (base) => getJsonAt(base, `/api/rooms/${room}/presence`).then((r) => {
        assert.equal(r.status, 200, JSON.stringify(r.body));
        return r.body.members.map((m) => ({ userId: m.userId, serverId: m.serverId })).sort((x, y) => x.userId.localeCompare(y.userId));
      });
      const want = [{ userId: 'ann', serverId: annServer }, { userId: 'bob', serverId: bobServer }];
      assert.deepEqual(await members(URL_A), want, 'presence via A');
      assert.deepEqual(await members(URL_B), want, 'presence via B');

      // Bob leaves on B: ann on A sees LEAVE, presence on A drops him.
      atBob.sub.unsubscribe();
      await atAnn.find((b) => b.type === 'LEAVE' && b.sender.id === 'bob', 'bob LEAVE at ann');
      assert.deepEqual(await members(URL_A), [{ userId: 'ann', serverId: annServer }], 'presence via A after bob left');
      atAnn.sub.unsubscribe();
      await waitFor(async () => (await members(URL_B)).length === 0, 5000, 'an empty room after both left');
    });
  });
}
