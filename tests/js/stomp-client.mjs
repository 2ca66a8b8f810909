// The @stomp/stompjs client every test connects with, over the `ws` package (the STOMP
// subprotocols offered) or over sockjs-client as Spring pages do: 10 s heart-beats both ways,
// and no reconnect (a test fails rather than reconnect behind its back). Needs no server
// address at import time, so cluster.test.mjs, which talks to two instances, can use it too.
import { Client } from '@stomp/stompjs';
import SockJS from 'sockjs-client';
import WebSocket from 'ws';

export const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

/** A fresh id that no other test run uses: [A-Za-z0-9_.-] only. */
export function uniqueId(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Resolves with the value `fn` returns once it is truthy; rejects after `ms`. */
export async function waitFor(fn, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves when the RECEIPT for a frame sent by `send(receiptId)` arrives (within 5 s). */
export function withReceipt(client, what, send) {
  const receipt = uniqueId('r');
  const got = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  send(receipt);
  return within(got, 5000, `RECEIPT for ${what}`);
}

/**
 * Subscribes with a receipt and records every MESSAGE (parsed body next to the frame);
 * resolves once the RECEIPT is back, i.e. the subscription is in place.
 */
export async function subscribeRecorded(client, destination, headers = {}) {
  const messages = [];
  let sub;
  await withReceipt(client, `SUBSCRIBE ${destination}`, (receipt) => {
    sub = client.subscribe(destination, (frame) => messages.push({ frame, body: JSON.parse(frame.body) }),
      { ...headers, receipt });
  });
  return {
    sub,
    messages,
    /** Waits until `pred` holds for some recorded message and returns the first such. */
    find: (pred, what) => waitFor(() => messages.find((m) => pred(m.body, m.frame)), 5000, `${what} on ${destination}`),
  };
}

/** SENDs `body` to `destination` and resolves once its RECEIPT is back. */
export function publishReceipted(client, destination, body) {
  return withReceipt(client, `SEND ${destination}`, (receipt) => client.publish({ destination, body, headers: { receipt } }));
}

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
  return connectOver(() => new WebSocket(wsUrl, SUBPROTOCOLS), connectHeaders, clients, what, 5000);
}

/**
 * Like connectClient, over sockjs-client at `sockJsUrl` (http://host:port/ws) with the
 * transport it picks itself, as `new SockJS('/ws')` in a Spring page does (10 s: SockJS first
 * asks /info).
 */
export function connectSockJs(sockJsUrl, connectHeaders, clients, what) {
  return connectOver(() => new SockJS(sockJsUrl), connectHeaders, clients, what, 10000);
}

function connectOver(webSocketFactory, connectHeaders, clients, what, ms) {
  return within(new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory,
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
  }), ms, `CONNECTED for ${what}`);
}
