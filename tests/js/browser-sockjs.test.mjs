// The chat page in headless Chromium without WebSocket: an init script deletes window.WebSocket
// before the page runs, so the page speaks STOMP over the SockJS protocol's HTTP transports
// (xhr polling and xhr_send). Two people chat, see each other, and one recovers after a drop.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHAT_URL, uniqueId } from './helpers.mjs';
import { chatLine, dropWhileAnotherWrites, member, say } from './page.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const T = 15000; // per-step wait (a dropped SockJS session leaves after the 5 s disconnect delay)

const profiles = [];
const contexts = [];

/** Makes every WebSocket fail before it opens, as behind a proxy that refuses the upgrade. */
function refuseUpgrades() {
  window.WebSocket = class {
    constructor() {
      this.readyState = 0;
      setTimeout(() => { this.readyState = 3; if (this.onclose) this.onclose({ code: 1006, reason: '' }); }, 10);
    }
    send() {}
    close() {}
  };
}

/** A browser without WebSocket (or, with `init`, another page set-up); resolves with
 * { page, sent, sockets, errors }. */
async function openBrowser(label, init = () => { delete window.WebSocket; }) {
  const dir = mkdtempSync(path.join(tmpdir(), `chatcluster-sockjs-${label}-`));
  profiles.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1200, height: 720 },
  });
  contexts.push(context);
  const page = context.pages()[0] || await context.newPage();
  await page.addInitScript(init);
  const sent = []; // STOMP text the page sent through xhr_send
  const sockets = [];
  const errors = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  page.on('request', (r) => {
    if (r.url().endsWith('/xhr_send')) sent.push(...JSON.parse(r.postData() || '[]'));
  });
  page.on('pageerror', (e) => errors.push(e));
  return { page, sent, sockets, errors };
}

async function signIn(page, name) {
  await page.goto(CHAT_URL + '/');
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForSelector('#status[data-state="connected"]', { timeout: T });
  assert.equal(await page.textContent('#user-id'), name);
}


after(async () => {
  await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  for (const d of profiles) rmSync(d, { recursive: true, force: true });
});

test('without WebSocket the page chats over SockJS HTTP transports and recovers after a drop', { timeout: 120000 }, async () => {
  const aliceName = uniqueId('alice');
  const bobName = uniqueId('bob');
  const room = uniqueId('nows');
  const alice = await openBrowser('alice');
  const bob = await openBrowser('bob');

  await signIn(alice.page, aliceName);
  assert.equal(await alice.page.evaluate(() => typeof window.WebSocket), 'undefined');
  await alice.page.fill('#new-room', room);
  await alice.page.click('#create-room');
  await alice.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${aliceName}"]`, { timeout: T });
  await signIn(bob.page, bobName);
  await bob.page.click(`#rooms li[data-room-id="${room}"] button`, { timeout: T });
  await bob.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${bobName}"]`, { timeout: T });

  // Presence both ways.
  await alice.page.waitForSelector(member(bobName), { timeout: T });
  await bob.page.waitForSelector(member(aliceName), { timeout: T });

  // Messages both ways.
  await say(alice.page, 'Hi Bob, over plain HTTP');
  await bob.page.waitForSelector(chatLine('Hi Bob, over plain HTTP'), { timeout: T });
  await say(bob.page, 'Hi Alice 👋 — ünïcödé');
  await alice.page.waitForSelector(chatLine('Hi Alice 👋 — ünïcödé'), { timeout: T });
  assert.ok(alice.sent.some((m) => m.startsWith('CONNECT')), 'CONNECT went through xhr_send');

  // Bob's transport drops while reconnects are held back; Alice writes meanwhile. Back, Bob's
  // page re-subscribes from the last offset it saw and shows the message once.
  const bobSentBefore = bob.sent.length;
  await dropWhileAnotherWrites({
    dropped: bob.page, droppedName: bobName, writer: alice.page, text: 'said while Bob was away', timeout: T,
  });
  assert.equal(await bob.page.locator(chatLine('said while Bob was away')).count(), 1, 'shown once');
  const resub = bob.sent.slice(bobSentBefore).find((f) => f.startsWith('SUBSCRIBE') && f.includes(`destination:/topic/room/${room}`));
  assert.ok(resub, 'the page re-subscribed after reconnecting');
  assert.match(resub, /\nx-since-offset:\d+\n/);
  await alice.page.waitForSelector(member(bobName), { timeout: T });

  await say(bob.page, 'back again');
  await alice.page.waitForSelector(chatLine('back again'), { timeout: T });

  assert.deepEqual(alice.sockets, [], 'no WebSocket was opened');
  assert.deepEqual(bob.sockets, [], 'no WebSocket was opened');
  assert.deepEqual(alice.errors.map(String), [], 'no errors in Alice\'s page');
  assert.deepEqual(bob.errors.map(String), [], 'no errors in Bob\'s page');
});

test('when the WebSocket upgrade fails but HTTP works, the page falls back to SockJS', { timeout: 60000 }, async () => {
  const name = uniqueId('carol');
  const carol = await openBrowser('carol', refuseUpgrades);
  await signIn(carol.page, name);
  assert.ok(carol.sent.some((m) => m.startsWith('CONNECT')), 'CONNECT went through xhr_send');
  await carol.page.fill('#new-room', uniqueId('fallback'));
  await carol.page.click('#create-room');
  await say(carol.page, 'after the fallback');
  await carol.page.waitForSelector(`${chatLine('after the fallback')}.mine`, { timeout: T });
  assert.deepEqual(carol.errors.map(String), [], 'no errors in the page');
});
