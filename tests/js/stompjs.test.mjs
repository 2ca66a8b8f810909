// The chat server with a real STOMP client: @stomp/stompjs 7 over the `ws` package.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CHAT_URL, WS_URL, getJson, uniqueId, waitFor, within } from './helpers.mjs';
import { connectClient } from './stomp-client.mjs';

const clients = new Set();

/** Connects a stompjs Client as `login`; resolves with { client, connected } once CONNECTED. */
function connect(login, extraHeaders = {}) {
  return connectClient(WS_URL, { login, ...extraHeaders }, clients, login);
}

/** Subscribes and records every MESSAGE; `next(pred)` waits for the first unseen match. */
function record(client, destination, headers = {}) {
  const messages = [];
  let taken = 0;
  const sub = client.subscribe(destination, (m) => messages.push(m), headers);
  return {
    sub,
    messages,
    /** The next message (after those already taken) that satisfies `pred`. */
    async next(pred = () => true, what = 'a message') {
      const m = await waitFor(() => {
        for (let i = taken; i < messages.length; i++) {
          if (pred(messages[i], JSON.parse(messages[i].body))) { taken = i + 1; return messages[i]; }
        }
        return null;
      }, 5000, `${what} on ${destination}`);
      return { frame: m, body: JSON.parse(m.body) };
    },
  };
}

/** Publishes with a receipt and resolves when the RECEIPT arrives. */
function publishWithReceipt(client, params) {
  const receipt = uniqueId('r');
  const got = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  client.publish({ ...params, headers: { ...(params.headers || {}), receipt } });
  return within(got, 5000, `RECEIPT ${receipt}`);
}

after(async () => {
  await Promise.all([...clients].map((c) => c.deactivate().catch(() => {})));
});

function assertRoomEvent(frame, body, { room, subscription, type, senderId, content }) {
  assert.equal(frame.command, 'MESSAGE');
  assert.equal(frame.headers.destination, `/topic/room/${room}`);
  assert.equal(frame.headers.subscription, subscription);
  assert.ok(frame.headers['message-id'], 'message-id header');
  assert.match(frame.headers['content-type'], /^application\/json/);
  assert.equal(frame.headers['x-offset'], String(body.offset));
  assert.ok(frame.headers['x-epoch'], 'x-epoch header');
  assert.equal(frame.headers['x-epoch'], body.epoch);
  assert.equal(body.roomId, room);
  assert.equal(body.type, type);
  assert.equal(body.sender.id, senderId);
  assert.equal(typeof body.sender.name, 'string');
  assert.ok(body.id, 'event id');
  assert.ok(Number.isInteger(body.offset) && body.offset >= 1, `offset ${body.offset}`);
  assert.ok(!Number.isNaN(Date.parse(body.sentAt)), `sentAt ${body.sentAt}`);
  assert.ok(body.serverId, 'serverId');
  if (content !== undefined) assert.equal(body.content, content);
}

describe('@stomp/stompjs against chat-server', () => {
  test('CONNECTED carries the contract headers', async () => {
    const login = uniqueId('conn');
    const { client, connected } = await connect(login);
    assert.equal(connected.headers.version, '1.2');
    assert.ok(connected.headers.session, 'session');
    assert.ok(connected.headers.server, 'server');
    assert.match(connected.headers['heart-beat'], /^\d+,\d+$/);
    assert.ok(connected.headers['x-server-id'], 'x-server-id');
    assert.equal(connected.headers['user-name'], login);
    assert.equal(connected.headers['x-user-id'], login);
    await client.deactivate();
    assert.equal(client.connected, false);
  });

  test('room: join, send with receipt, own and others\' messages, offsets, history, presence, leave', async () => {
    const room = uniqueId('room');
    const created = await getJson('/api/rooms', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ id: room }),
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const epoch = created.body.epoch;
    assert.ok(epoch, 'a new room has an epoch');
    assert.equal((await getJson('/api/rooms', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ id: room }),
    })).status, 409, 'creating it twice is a conflict');

    const aliceId = uniqueId('alice');
    const bobId = uniqueId('bob');
    const alice = (await connect(aliceId)).client;
    const bob = (await connect(bobId)).client;

    const a = record(alice, `/topic/room/${room}`, { id: 'sub-0' });
    const aJoin = await a.next((m, b) => b.type === 'JOIN' && b.sender.id === aliceId, 'alice JOIN');
    assertRoomEvent(aJoin.frame, aJoin.body, { room, subscription: 'sub-0', type: 'JOIN', senderId: aliceId });
    assert.equal(aJoin.body.epoch, epoch);

    const b = record(bob, `/topic/room/${room}`, { id: 'sub-7' });
    await b.next((m, body) => body.type === 'JOIN' && body.sender.id === bobId, 'bob sees his JOIN');
    await a.next((m, body) => body.type === 'JOIN' && body.sender.id === bobId, 'alice sees bob JOIN');

    // Alice sends with a receipt and a custom header; both see it, with her identity as sender.
    await publishWithReceipt(alice, {
      destination: `/app/room/${room}`,
      body: JSON.stringify({ content: 'hello from alice', type: 'CHAT' }),
      headers: { 'content-type': 'application/json', 'x-trace': 'abc123' },
    });
    const own = await a.next((m, body) => body.type === 'CHAT', 'alice own message');
    assertRoomEvent(own.frame, own.body, { room, subscription: 'sub-0', type: 'CHAT', senderId: aliceId, content: 'hello from alice' });
    assert.equal(own.frame.headers['x-trace'], 'abc123', 'a SEND\'s custom header is carried to MESSAGE');
    const atBob = await b.next((m, body) => body.type === 'CHAT', 'bob gets alice message');
    assertRoomEvent(atBob.frame, atBob.body, { room, subscription: 'sub-7', type: 'CHAT', senderId: aliceId, content: 'hello from alice' });
    assert.equal(atBob.body.id, own.body.id);
    assert.equal(atBob.body.offset, own.body.offset);

    // Bob sends plain text to the /topic destination; alice gets it.
    await publishWithReceipt(bob, { destination: `/topic/room/${room}`, body: 'plain text from bob' });
    const fromBob = await a.next((m, body) => body.type === 'CHAT' && body.sender.id === bobId, 'alice gets bob message');
    assertRoomEvent(fromBob.frame, fromBob.body, { room, subscription: 'sub-0', type: 'CHAT', senderId: bobId, content: 'plain text from bob' });

    // Everything alice saw: contiguous offsets from 1 in one epoch.
    const seen = a.messages.map((m) => JSON.parse(m.body));
    assert.deepEqual(seen.map((e) => e.offset), [1, 2, 3, 4]);
    assert.deepEqual(seen.map((e) => e.type), ['JOIN', 'JOIN', 'CHAT', 'CHAT']);
    assert.ok(seen.every((e) => e.epoch === epoch));
    const ids = new Set(a.messages.map((m) => m.headers['message-id']));
    assert.equal(ids.size, 4, 'message-ids are distinct');

    // REST agrees: history, room info, presence.
    const hist = await getJson(`/api/rooms/${room}/messages?since=0&limit=100`);
    assert.equal(hist.status, 200);
    assert.equal(hist.body.roomId, room);
    assert.equal(hist.body.epoch, epoch);
    assert.equal(hist.body.lastOffset, 4);
    assert.deepEqual(hist.body.messages.map((e) => [e.offset, e.type, e.sender.id, e.content]),
      seen.map((e) => [e.offset, e.type, e.sender.id, e.content]));
    const latest = await getJson(`/api/rooms/${room}/messages?limit=2`);
    assert.deepEqual(latest.body.messages.map((e) => e.offset), [3, 4]);
    const pres = await getJson(`/api/rooms/${room}/presence`);
    assert.equal(pres.status, 200);
    assert.deepEqual(pres.body.members.map((m) => m.userId).sort(), [aliceId, bobId].sort());
    for (const m of pres.body.members) {
      assert.ok(m.sessionId && m.serverId && m.name, JSON.stringify(m));
    }
    const rooms = await getJson('/api/rooms');
    const info = rooms.body.rooms.find((r) => r.id === room);
    assert.ok(info, 'the room is listed');
    assert.equal(info.lastOffset, 4);
    assert.equal(info.epoch, epoch);

    // Bob leaves: alice sees LEAVE, presence drops him.
    b.sub.unsubscribe();
    const leave = await a.next((m, body) => body.type === 'LEAVE', 'bob LEAVE');
    assertRoomEvent(leave.frame, leave.body, { room, subscription: 'sub-0', type: 'LEAVE', senderId: bobId });
    assert.equal(leave.body.offset, 5);
    const pres2 = await getJson(`/api/rooms/${room}/presence`);
    assert.deepEqual(pres2.body.members.map((m) => m.userId), [aliceId]);

    await bob.deactivate();
    await alice.deactivate();
    const pres3 = await waitFor(async () => {
      const p = await getJson(`/api/rooms/${room}/presence`);
      return p.body.members.length === 0 && p;
    }, 5000, 'an empty room after both disconnect');
    assert.deepEqual(pres3.body.members, []);
  });

  test('recovery: x-since-offset replays the gap, x-history gives the latest, a stale epoch says x-recovered:false', async () => {
    const room = uniqueId('recover');
    const writerId = uniqueId('writer');
    const writer = (await connect(writerId)).client;
    for (let i = 1; i <= 5; i++) {
      await publishWithReceipt(writer, { destination: `/app/room/${room}`, body: JSON.stringify({ content: `m${i}` }) });
    }
    const hist = await getJson(`/api/rooms/${room}/messages?limit=10`);
    assert.equal(hist.status, 200, 'SEND made the room');
    assert.deepEqual(hist.body.messages.map((e) => e.content), ['m1', 'm2', 'm3', 'm4', 'm5']);
    const { epoch } = hist.body;
    const off = (c) => hist.body.messages.find((e) => e.content === c).offset;

    const readerId = uniqueId('reader');
    const reader = (await connect(readerId)).client;

    // Replay everything after m2, then live, with no gap and no duplicate.
    const r1 = record(reader, `/topic/room/${room}`, { id: 'since', 'x-since-offset': String(off('m2')), 'x-epoch': epoch, 'x-presence': 'false' });
    await r1.next((m, b) => b.content === 'm5', 'replay up to m5');
    await publishWithReceipt(writer, { destination: `/app/room/${room}`, body: JSON.stringify({ content: 'm6' }) });
    await r1.next((m, b) => b.content === 'm6', 'live m6');
    const r1Events = r1.messages.map((m) => JSON.parse(m.body));
    assert.deepEqual(r1Events.map((e) => e.content), ['m3', 'm4', 'm5', 'm6']);
    assert.deepEqual(r1Events.map((e) => e.offset), [off('m2') + 1, off('m2') + 2, off('m2') + 3, off('m2') + 4]);
    r1.sub.unsubscribe();

    // The last 2 messages first.
    const r2 = record(reader, `/topic/room/${room}`, { id: 'hist', 'x-history': '2', 'x-presence': 'false' });
    await r2.next((m, b) => b.content === 'm6', 'history up to m6');
    assert.deepEqual(r2.messages.map((m) => JSON.parse(m.body).content), ['m5', 'm6']);
    r2.sub.unsubscribe();

    // An epoch the room never had: one SYSTEM message with x-recovered:false, nothing partial.
    const r3 = record(reader, `/topic/room/${room}`, { id: 'stale', 'x-since-offset': '1', 'x-epoch': 'not-the-epoch', 'x-presence': 'false' });
    const sys = await r3.next(() => true, 'x-recovered:false');
    assert.equal(sys.frame.headers['x-recovered'], 'false');
    assert.equal(sys.body.type, 'SYSTEM');
    assert.equal(sys.frame.headers['x-epoch'], epoch);
    await publishWithReceipt(writer, { destination: `/app/room/${room}`, body: JSON.stringify({ content: 'm7' }) });
    await r3.next((m, b) => b.content === 'm7', 'live m7 after x-recovered:false');
    assert.equal(r3.messages.length, 2, 'nothing replayed: the SYSTEM message, then live');

    await reader.deactivate();
    await writer.deactivate();
  });

  test('direct messages between two clients', async () => {
    const aliceId = uniqueId('dm-alice');
    const bobId = uniqueId('dm-bob');
    const alice = (await connect(aliceId)).client;
    const bob = (await connect(bobId)).client;
    const inboxA = record(alice, '/user/queue/messages', { id: 'dm' });
    const inboxB = record(bob, '/user/queue/messages', { id: 'dm' });
    // Subscriptions are in place once a receipted frame after them comes back.
    await Promise.all([alice, bob].map((c) => {
      const receipt = uniqueId('sync');
      const p = new Promise((r) => c.watchForReceipt(receipt, r));
      c.subscribe(`/topic/room/${uniqueId('sync')}`, () => {}, { receipt, 'x-presence': 'false' });
      return within(p, 5000, 'sync receipt');
    }));

    await publishWithReceipt(bob, { destination: `/app/user/${aliceId}`, body: JSON.stringify({ content: 'psst alice', type: 'CHAT' }) });
    const got = await inboxA.next(() => true, 'DM at alice');
    assert.equal(got.frame.headers.subscription, 'dm');
    assert.equal(got.body.content, 'psst alice');
    assert.equal(got.body.sender.id, bobId);
    assert.equal(got.body.to, aliceId);
    assert.ok(got.body.id && got.body.sentAt && got.body.serverId && got.body.type, JSON.stringify(got.body));

    await publishWithReceipt(alice, { destination: `/app/user/${bobId}`, body: 'hi bob' });
    const back = await inboxB.next(() => true, 'DM at bob');
    assert.equal(back.body.content, 'hi bob');
    assert.equal(back.body.sender.id, aliceId);
    assert.equal(back.body.to, bobId);
    assert.equal(inboxA.messages.length, 1, 'alice got only the one DM to her');

    await Promise.all([alice.deactivate(), bob.deactivate()]);
  });

  test('a bad frame gets ERROR with a message header', async () => {
    const { client } = await connect(uniqueId('bad'));
    const error = new Promise((resolve) => { client.onStompError = resolve; });
    client.publish({ destination: '/app/room/not a valid room!', body: 'x' });
    const frame = await within(error, 5000, 'ERROR frame');
    assert.ok(frame.headers.message, 'ERROR has a message header');
    await client.deactivate();
  });
});

test('CHAT_URL is reachable', async () => {
  const res = await fetch(CHAT_URL + '/healthz');
  assert.equal(res.status, 200);
});
