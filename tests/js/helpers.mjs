// Shared helpers of the client tests: the server's address, unique names, and waiting (the
// stompjs client itself is in stomp-client.mjs).
import assert from 'node:assert/strict';

export const CHAT_URL = (process.env.CHAT_URL || '').replace(/\/+$/, '');
// cluster.test.mjs talks to two instances, CHAT_URL_A and CHAT_URL_B, and needs no CHAT_URL.
assert.ok(CHAT_URL || process.env.CHAT_URL_A,
  'set CHAT_URL to the running chat-server, e.g. http://127.0.0.1:8080 (or CHAT_URL_A and CHAT_URL_B for cluster.test.mjs)');
/** The WebSocket endpoint of the chat-server at `httpUrl` (http://host:port). */
export function wsUrlOf(httpUrl) {
  return httpUrl.replace(/\/+$/, '').replace(/^http/, 'ws') + '/ws';
}
export const WS_URL = wsUrlOf(CHAT_URL);
export { SUBPROTOCOLS, within } from './stomp-client.mjs';

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

export async function getJson(path, init) {
  return getJsonAt(CHAT_URL, path, init);
}

/** Like getJson, against the chat-server at `baseUrl` (http://host:port). */
export async function getJsonAt(baseUrl, path, init) {
  const res = await fetch(baseUrl.replace(/\/+$/, '') + path, init);
  const body = await res.json();
  return { status: res.status, body };
}
