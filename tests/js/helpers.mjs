// Shared helpers of the client tests: the server's address, unique names, and waiting.
import assert from 'node:assert/strict';

export const CHAT_URL = (process.env.CHAT_URL || '').replace(/\/+$/, '');
assert.ok(CHAT_URL, 'set CHAT_URL to the running chat-server, e.g. http://127.0.0.1:8080');
export const WS_URL = CHAT_URL.replace(/^http/, 'ws') + '/ws';
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

/** Rejects `p` if it has not settled within `ms`. */
export function within(p, ms, what) {
  let t;
  const timeout = new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms); });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

export async function getJson(path, init) {
  const res = await fetch(CHAT_URL + path, init);
  const body = await res.json();
  return { status: res.status, body };
}
