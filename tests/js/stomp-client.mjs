// The @stomp/stompjs client every test connects with, over the `ws` package: the STOMP
// subprotocols offered, 10 s heart-beats both ways, and no reconnect (a test fails rather than
// reconnect behind its back). Needs no server address at import time, so cluster.test.mjs,
// which talks to two instances, can use it too.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

export const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

/** Rejects `p` if it has not settled within `ms`. */
export function within(p, ms, what) {
  let t;
  const timeout = new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms); });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/**
 * Connects a Client to `wsUrl` with `connectHeaders`; resolves with { client, connected } once
 * CONNECTED (within 5 s). The client is added to `clients`, for the test file to deactivate.
 */
export function connectClient(wsUrl, connectHeaders, clients, what) {
  return within(new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: () => new WebSocket(wsUrl, SUBPROTOCOLS),
      connectHeaders,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      reconnectDelay: 0,
      onConnect: (connected) => resolve({ client, connected }),
      onStompError: (frame) => reject(new Error(`ERROR frame: ${frame.headers.message} ${frame.body}`)),
      onWebSocketClose: (ev) => reject(new Error(`socket closed before CONNECTED: ${ev.code} ${ev.reason}`)),
    });
    clients.add(client);
    client.activate();
  }), 5000, `CONNECTED for ${what}`);
}
