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
export { SUBPROTOCOLS, uniqueId, waitFor, within } from './stomp-client.mjs';

export async function getJson(path, init) {
  return getJsonAt(CHAT_URL, path, init);
}

/** Like getJson, against the chat-server at `baseUrl` (http://host:port). */
export async function getJsonAt(baseUrl, path, init) {
  const res = await fetch(baseUrl.replace(/\/+$/, '') + path, init);
  const body = await res.json();
  return { status: res.status, body };
}
