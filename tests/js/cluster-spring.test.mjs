// Spring front-ends' destination layouts on two chat-server instances clustered through one
// Redis, driven by @stomp/stompjs with Spring DTO bodies: the room named in the body
// (`/app/chat.sendMessage` with `chatRoomId`, subscribers on `/topic/chatroom/{room}`) and the
// `/pub/chat/message/{room}` → `/sub/chat/{room}` layout. Each MESSAGE carries the destination
// its own subscription used, and the DTO's own fields arrive as sent.
// Needs CHAT_URL_A and CHAT_URL_B of two instances configured with both layouts (and the
// default one); scripts/client-tests starts them so. Without them this file skips itself.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connectClient, publishReceipted, subscribeRecorded, uniqueId } from './stomp-client.mjs';

const URL_A = (process.env.CHAT_URL_A || '').replace(/\/+$/, '');
const URL_B = (process.env.CHAT_URL_B || '').replace(/\/+$/, '');

if (!URL_A || !URL_B) {
  test('spring layouts on two instances', { skip: 'set CHAT_URL_A and CHAT_URL_B (scripts/client-tests does)' }, () => {});
} else {
  const { getJsonAt, wsUrlOf } = await import('./helpers.mjs');
  const clients = new Set();
  after(async () => {
    await Promise.all([...clients].map((c) => c.deactivate().catch(() => {})));
  });
  const connect = async (baseUrl, login) =>
    (await connectClient(wsUrlOf(baseUrl), { login }, clients, `${login} at ${baseUrl}`)).client;

  /** The one CHAT message `s` recorded, once it is there; checks its envelope. */
  const chatAt = async (s, destination, sender) => {
    const m = await s.find((b) => b.type === 'CHAT', 'a CHAT message');
    assert.equal(m.frame.headers.destination, destination, 'the subscription\'s own destination');
    assert.equal(m.body.sender.id, sender, 'the sender is the authenticated user, not the body');
    return m;
  };

  describe('spring destination layouts across two clustered instances', () => {
    test('/app/chat.sendMessage with chatRoomId in the body reaches /topic/chatroom/{room} on both instances', async () => {
      const room = uniqueId('spring1');
      const ann = await connect(URL_A, 'spring-ann');
      const bob = await connect(URL_B, 'spring-bob');
      const dest = `/topic/chatroom/${room}`;
      const atAnn = await subscribeRecorded(ann, dest, { id: 'sub-0', 'x-presence': 'false' });
      const atBob = await subscribeRecorded(bob, dest, { id: 'sub-0', 'x-presence': 'false' });
      const dto = { chatRoomId: room, senderNickname: 'spring-bob', content: 'hi from B', messageType: 'TALK', meta: { n: [1, 2.5, 'é'] } };
      await publishReceipted(bob, '/app/chat.sendMessage', JSON.stringify(dto));
      for (const s of [atAnn, atBob]) {
        const m = await chatAt(s, dest, 'spring-bob');
        assert.equal(m.body.roomId, room);
        assert.equal(m.body.content, 'hi from B');
        assert.deepEqual(
          { chatRoomId: m.body.chatRoomId, senderNickname: m.body.senderNickname, messageType: m.body.messageType, meta: m.body.meta },
          { chatRoomId: room, senderNickname: 'spring-bob', messageType: 'TALK', meta: { n: [1, 2.5, 'é'] } },
        );
      }
      const hist = await getJsonAt(URL_A, `/api/rooms/${room}/messages`);
      assert.equal(hist.status, 200, JSON.stringify(hist.body));
      assert.equal(hist.body.messages.at(-1).messageType, 'TALK', 'history keeps the DTO fields');
    });

    test('/pub/chat/message/{room} reaches /sub/chat/{room} and /topic/room/{room}, each with its own destination', async () => {
      const room = uniqueId('spring2');
      const ann = await connect(URL_A, 'ann2');
      const bob = await connect(URL_B, 'bob2');
      const sub = await subscribeRecorded(bob, `/sub/chat/${room}`, { id: 'sub-0', 'x-presence': 'false' });
      const classic = await subscribeRecorded(bob, `/topic/room/${room}`, { id: 'sub-1', 'x-presence': 'false' });
      const dto = { roomId: 'not-this-one', sender: 'mallory', message: 'hello', content: 'hello', type: 'CHAT' };
      await publishReceipted(ann, `/pub/chat/message/${room}`, JSON.stringify(dto));
      for (const [s, dest] of [[sub, `/sub/chat/${room}`], [classic, `/topic/room/${room}`]]) {
        const m = await chatAt(s, dest, 'ann2');
        assert.equal(m.body.roomId, room, 'the envelope\'s room, not the body\'s');
        assert.equal(m.body.message, 'hello', 'the DTO\'s own field');
      }
      assert.equal(sub.messages.length, 1);
      assert.equal(classic.messages.length, 1);
    });
  });
}
