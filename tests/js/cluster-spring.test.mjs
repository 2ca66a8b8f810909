// The Spring drop-in's acceptance: the four Spring front-end layouts, each on two chat-server
// instances clustered through one Redis and configured by environment settings only, driven by
// @stomp/stompjs with Spring DTO bodies. Layouts 1 and 2 connect over sockjs-client
// (`new SockJS(url + '/ws')`, as Spring pages do), layouts 3 and 4 over a raw WebSocket:
//   1. `/app/chat.sendMessage` with the room in the body's `chatRoomId` → `/topic/chatroom/{room}`
//   2. `/pub/chat/message/{room}` → `/sub/chat/{room}`
//   3. `/app/chat.sendMessage` with `@SendTo("/topic/public")`: one fixed room, `public`
//   4. `/app/room/{room}/message` and `/app/room/{room}/join` → `/topic/room/{room}`
// For each: a sender on instance A, subscribers on A and B; the DTO's own fields arrive live on
// both, through recovery (a reconnect with `x-since-offset` + `x-epoch`), through `x-history`
// and in REST history; envelope names in the body are ignored (the sender is the
// authenticated login); each MESSAGE carries its own subscription's destination. A join SEND
// is a chat message; a JOIN-typed body without content (the classic demo's `chat.addUser`) is
// a presence announcement: receipted, nothing published, the connection stays open.
// Needs CHAT_URL_A and CHAT_URL_B (layouts 1 and 2) and CHAT_URL_C and CHAT_URL_D (layouts 3
// and 4: `/app/chat.sendMessage` cannot name both a body field and a fixed room on one
// instance); scripts/client-tests starts all four on one Redis. A pair not set skips its tests.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import SockJS from 'sockjs-client';
import {
  connectClient, connectSockJs, publishReceipted, subscribeRecorded, uniqueId, waitFor, within,
} from './stomp-client.mjs';

const urlOf = (name) => (process.env[name] || '').replace(/\/+$/, '');
const URL_A = urlOf('CHAT_URL_A');
const URL_B = urlOf('CHAT_URL_B');
const URL_C = urlOf('CHAT_URL_C');
const URL_D = urlOf('CHAT_URL_D');

const clients = new Set();
after(async () => {
  await Promise.all([...clients].map((c) => c.deactivate().catch(() => {})));
});

/** Connects `login` to the instance at `baseUrl` over SockJS or a raw WebSocket. */
async function connect(baseUrl, login, transport) {
  const what = `${login} at ${baseUrl} over ${transport}`;
  const connected = transport === 'sockjs'
    ? await connectSockJs(`${baseUrl}/ws`, { login }, clients, what)
    : await connectClient(`${baseUrl.replace(/^http/, 'ws')}/ws`, { login }, clients, what);
  assert.equal(connected.client.webSocket instanceof SockJS, transport === 'sockjs', `${what}: the transport asked for`);
  return connected.client;
}

async function history(baseUrl, path) {
  const res = await fetch(baseUrl + path);
  return { status: res.status, body: await res.json() };
}

/**
 * The Spring DTO a layout's page sends: its own fields next to `content`, plus envelope names
 * a client must not be able to set.
 */
function springDto(room, content, messageType = 'TALK') {
  return {
    chatRoomId: room,
    senderNickname: 'ann',
    content,
    messageType,
    meta: { n: [1, 2.5, 'é'] },
    sender: { id: 'evil' },
    offset: 99,
    id: 'x',
  };
}

/** Asserts that event `e` (a MESSAGE body or a REST history event) is `content` from `login`
 * with the DTO's own fields as sent and no envelope name taken from the body. */
function assertSpringEvent(e, room, login, content, messageType = 'TALK') {
  assert.equal(e.content, content);
  assert.equal(e.type, 'CHAT');
  assert.equal(e.roomId, room, 'the envelope\'s room');
  assert.equal(e.sender.id, login, 'the sender is the authenticated login, not the body\'s');
  assert.notEqual(e.offset, 99, 'the offset is the room\'s, not the body\'s');
  assert.notEqual(e.id, 'x', 'the id is the server\'s, not the body\'s');
  assert.deepEqual(
    { chatRoomId: e.chatRoomId, senderNickname: e.senderNickname, messageType: e.messageType, meta: e.meta },
    { chatRoomId: room, senderNickname: 'ann', messageType, meta: { n: [1, 2.5, 'é'] } },
    'the DTO\'s own fields, as sent',
  );
}

/**
 * One layout, end to end on two instances: `send(room, kind)` is the SEND destination of a
 * message (`kind` is 'join' for the first one, 'message' after), `subscribe(room)` the
 * SUBSCRIBE destination; `room` is null for a layout that names a fixed room.
 */
function layout({ name, urls, transport, fixedRoom, send, subscribe }) {
  const [urlA, urlB] = urls;
  const skip = urlA && urlB ? false : 'set the URLs of its pair of instances (scripts/client-tests does)';
  test(`${name} works across two clustered instances over ${transport}: DTO fields live, recovered, in x-history and REST history`, { skip }, async () => {
    const room = fixedRoom ?? uniqueId('spring');
    const dest = subscribe(room);
    const tag = uniqueId('m'); // the fixed room is shared by every run on this Redis
    const content = (i) => `${tag} ${i}`;
    const senderLogin = uniqueId('ann');
    const sender = await connect(urlA, senderLogin, transport);
    const atA = await subscribeRecorded(await connect(urlA, uniqueId('amy'), transport), dest, { id: 'sub-0', 'x-presence': 'false' });
    const bobLogin = uniqueId('bob');
    const bob = await connect(urlB, bobLogin, transport);
    const atB = await subscribeRecorded(bob, dest, { id: 'sub-0', 'x-presence': 'false' });
    const mine = (s) => s.messages.filter((m) => m.body.type === 'CHAT' && m.body.content.startsWith(tag));

    // Live, on both instances: the first message through the layout's first SEND destination.
    await publishReceipted(sender, send(room, 'join'), JSON.stringify(springDto(room, content(1), 'JOIN')));
    for (const s of [atA, atB]) {
      const m = await s.find((b) => b.content === content(1), 'the first message');
      assert.equal(m.frame.headers.destination, dest, 'the subscription\'s own destination');
      assertSpringEvent(m.body, room, senderLogin, content(1), 'JOIN');
    }
    const first = atB.messages.find((m) => m.body.content === content(1));
    const { offset, epoch } = first.body;
    assert.equal(first.frame.headers['x-offset'], String(offset));
    assert.equal(first.frame.headers['x-epoch'], epoch);

    // Bob drops; two messages go by; Bob reconnects to B and recovers exactly those.
    await bob.deactivate();
    for (const i of [2, 3]) {
      await publishReceipted(sender, send(room, 'message'), JSON.stringify(springDto(room, content(i))));
    }
    await waitFor(() => mine(atA).length === 3, 5000, 'three messages live on A');
    const bobAgain = await connect(urlB, bobLogin, transport);
    const recovered = await subscribeRecorded(bobAgain, dest, {
      id: 'sub-1', 'x-presence': 'false', 'x-since-offset': String(offset), 'x-epoch': epoch,
    });
    await waitFor(() => mine(recovered).length === 2, 5000, 'the two missed messages replayed on B');
    for (const [i, m] of mine(recovered).entries()) {
      assert.equal(m.frame.headers.destination, dest);
      assert.notEqual(m.frame.headers['x-recovered'], 'false', 'a replay, not a reload notice');
      assertSpringEvent(m.body, room, senderLogin, content(i + 2));
    }
    // Live again after the replay.
    await publishReceipted(sender, send(room, 'message'), JSON.stringify(springDto(room, content(4))));
    const live = await recovered.find((b) => b.content === content(4), 'the live message after recovery');
    assertSpringEvent(live.body, room, senderLogin, content(4));
    assert.deepEqual(mine(recovered).map((m) => m.body.content), [2, 3, 4].map(content), 'no gap, no duplicate');

    // x-history on the other instance: the last four, each with its fields.
    const withHistory = await subscribeRecorded(await connect(urlA, uniqueId('cat'), transport), dest, {
      id: 'sub-0', 'x-presence': 'false', 'x-history': '4',
    });
    await waitFor(() => mine(withHistory).length === 4, 5000, 'x-history: 4');
    for (const [i, m] of mine(withHistory).entries()) {
      assert.equal(m.frame.headers.destination, dest);
      assertSpringEvent(m.body, room, senderLogin, content(i + 1), i === 0 ? 'JOIN' : 'TALK');
    }

    // REST history from B.
    const hist = await history(urlB, `/api/rooms/${room}/messages?since=${offset - 1}`);
    assert.equal(hist.status, 200, JSON.stringify(hist.body));
    const events = hist.body.messages.filter((e) => e.type === 'CHAT' && e.content.startsWith(tag));
    assert.deepEqual(events.map((e) => e.content), [1, 2, 3, 4].map(content));
    for (const [i, e] of events.entries()) assertSpringEvent(e, room, senderLogin, content(i + 1), i === 0 ? 'JOIN' : 'TALK');
  });
}

describe('the Spring layouts, each on two clustered instances', () => {
  layout({
    name: 'layout 1, @MessageMapping("/chat.sendMessage") with chatRoomId in the body to /topic/chatroom/{room},',
    urls: [URL_A, URL_B],
    transport: 'sockjs',
    send: () => '/app/chat.sendMessage',
    subscribe: (room) => `/topic/chatroom/${room}`,
  });
  layout({
    name: 'layout 2, /pub/chat/message/{room} to /sub/chat/{room},',
    urls: [URL_A, URL_B],
    transport: 'sockjs',
    send: (room) => `/pub/chat/message/${room}`,
    subscribe: (room) => `/sub/chat/${room}`,
  });
  layout({
    name: 'layout 3, /app/chat.sendMessage with @SendTo("/topic/public"),',
    urls: [URL_C, URL_D],
    transport: 'websocket',
    fixedRoom: 'public',
    send: () => '/app/chat.sendMessage',
    subscribe: () => '/topic/public',
  });
  layout({
    name: 'layout 4, /app/room/{room}/join then /app/room/{room}/message to /topic/room/{room},',
    urls: [URL_C, URL_D],
    transport: 'websocket',
    send: (room, kind) => `/app/room/${room}/${kind}`,
    subscribe: (room) => `/topic/room/${room}`,
  });
});

describe('two layouts meeting in one room', () => {
  test('/pub/chat/message/{room} reaches /sub/chat/{room} and /topic/room/{room}, each with its own destination, the body\'s roomId ignored', { skip: URL_A && URL_B ? false : 'set CHAT_URL_A and CHAT_URL_B' }, async () => {
    const room = uniqueId('spring2');
    const ann = await connect(URL_A, 'ann2', 'websocket');
    const bob = await connect(URL_B, 'bob2', 'websocket');
    const sub = await subscribeRecorded(bob, `/sub/chat/${room}`, { id: 'sub-0', 'x-presence': 'false' });
    const classic = await subscribeRecorded(bob, `/topic/room/${room}`, { id: 'sub-1', 'x-presence': 'false' });
    const dto = { roomId: 'not-this-one', sender: 'mallory', message: 'hello', content: 'hello', type: 'CHAT' };
    await publishReceipted(ann, `/pub/chat/message/${room}`, JSON.stringify(dto));
    for (const [s, dest] of [[sub, `/sub/chat/${room}`], [classic, `/topic/room/${room}`]]) {
      const m = await s.find((b) => b.type === 'CHAT', 'a CHAT message');
      assert.equal(m.frame.headers.destination, dest, 'the subscription\'s own destination');
      assert.equal(m.body.sender.id, 'ann2', 'the sender is the authenticated user, not the body');
      assert.equal(m.body.roomId, room, 'the envelope\'s room, not the body\'s');
      assert.equal(m.body.message, 'hello', 'the DTO\'s own field');
    }
    assert.equal(sub.messages.length, 1);
    assert.equal(classic.messages.length, 1);
  });
});

describe('a Spring join SEND', () => {
  test('the classic demo\'s addUser body, typed JOIN without content, is receipted, publishes nothing, and the connection goes on', { skip: URL_C && URL_D ? false : 'set CHAT_URL_C and CHAT_URL_D' }, async () => {
    const room = uniqueId('join');
    const watcher = await subscribeRecorded(await connect(URL_D, uniqueId('dan'), 'websocket'), `/topic/room/${room}`, { id: 'sub-0', 'x-presence': 'false' });
    // The callicoder-style `chat.addUser` body: presence comes from the SUBSCRIBE here.
    const eve = await connect(URL_C, uniqueId('eve'), 'websocket');
    let stompError = null;
    eve.onStompError = (f) => { stompError = f; };
    await publishReceipted(eve, `/app/room/${room}/join`, JSON.stringify({ sender: 'eve', type: 'JOIN' }));
    // The same connection then posts a chat message and a DTO join (a chat message of its own).
    await publishReceipted(eve, `/app/room/${room}/message`, JSON.stringify({ content: 'eve is here', type: 'CHAT' }));
    const ann = await connect(URL_C, uniqueId('ann'), 'websocket');
    await publishReceipted(ann, `/app/room/${room}/join`, JSON.stringify({ content: 'ann joined', messageType: 'JOIN' }));
    await watcher.find((b) => b.type === 'CHAT' && b.content === 'ann joined', 'the join DTO');
    const chats = watcher.messages.filter((x) => x.body.type === 'CHAT').map((x) => x.body.content);
    assert.deepEqual(chats, ['eve is here', 'ann joined'], 'the announcement posted nothing');
    assert.equal(watcher.messages.find((x) => x.body.content === 'ann joined').body.messageType, 'JOIN');
    assert.equal(stompError, null, 'no ERROR for the announcement');
    assert.equal(eve.connected, true, 'the announcing connection stays open');
  });
});
