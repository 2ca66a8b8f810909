// The chat page in headless Chromium (Debian's, driven by playwright-core): two people with
// their own browser profiles chat in one room, see each other, and one recovers after a drop.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHAT_URL, uniqueId } from './helpers.mjs';
import { chatLine, dropWhileAnotherWrites, member } from './page.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const SHOTS = process.env.SCREENSHOT_DIR || path.join(tmpdir(), 'chatcluster-screenshots');
const T = 10000; // per-step wait

const profiles = [];
const contexts = [];

/** A browser with a fresh profile of its own; resolves with { page, sent } (sent: STOMP frames it sent). */
async function openBrowser(label) {
  const dir = mkdtempSync(path.join(tmpdir(), `chatcluster-${label}-`));
  profiles.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1200, height: 720 },
  });
  contexts.push(context);
  const page = context.pages()[0] || await context.newPage();
  const sent = [];
  const errors = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => sent.push(String(f.payload))));
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(new Error(m.text())); });
  return { page, sent, errors };
}

async function signIn(page, name) {
  await page.goto(CHAT_URL + '/');
  assert.equal(await page.title(), 'chatcluster');
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForSelector('#status[data-state="connected"]', { timeout: T });
  const serverId = await page.textContent('#server-id');
  assert.ok(serverId && serverId !== '—' && serverId !== '?', `server id shown: ${serverId}`);
  assert.equal(await page.textContent('#user-id'), name);
  return serverId;
}


before(() => mkdirSync(SHOTS, { recursive: true }));

after(async () => {
  await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  for (const d of profiles) rmSync(d, { recursive: true, force: true });
});

test('two people chat in one room through the page', { timeout: 90000 }, async () => {
  const aliceName = uniqueId('alice');
  const bobName = uniqueId('bob');
  const room = uniqueId('web');
  const alice = await openBrowser('alice');
  const bob = await openBrowser('bob');

  await signIn(alice.page, aliceName);
  // Alice creates the room with the page's form and is in it.
  await alice.page.fill('#new-room', room);
  await alice.page.click('#create-room');
  await alice.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${aliceName}"]`, { timeout: T });
  assert.equal(await alice.page.textContent('#room-title'), `# ${room}`);
  await alice.page.waitForSelector(`#rooms li.active[data-room-id="${room}"]`, { timeout: T });

  // Bob signs in, finds the room in the list and joins it.
  await signIn(bob.page, bobName);
  await bob.page.click(`#rooms li[data-room-id="${room}"] button`, { timeout: T });
  await bob.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${bobName}"]`, { timeout: T });
  // Bob's history (x-history) includes Alice's earlier JOIN.
  await bob.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${aliceName}"]`, { timeout: T });

  // Presence: each sees the other (and themselves).
  await alice.page.waitForSelector(member(bobName), { timeout: T });
  await bob.page.waitForSelector(member(aliceName), { timeout: T });
  assert.match(await bob.page.textContent(member(bobName)), /\(you\)/);
  await alice.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${bobName}"]`, { timeout: T });

  // Messages both ways, sent with Enter.
  await alice.page.fill('#message-input', 'Hi Bob, welcome!');
  await alice.page.press('#message-input', 'Enter');
  await bob.page.waitForSelector(chatLine('Hi Bob, welcome!'), { timeout: T });
  await alice.page.waitForSelector(`${chatLine('Hi Bob, welcome!')}.mine`, { timeout: T });
  assert.equal(await alice.page.inputValue('#message-input'), '', 'the input is cleared after sending');

  await bob.page.fill('#message-input', 'Thanks Alice 👋 — ünïcödé');
  await bob.page.press('#message-input', 'Enter');
  await alice.page.waitForSelector(chatLine('Thanks Alice 👋 — ünïcödé'), { timeout: T });
  assert.equal(await alice.page.getAttribute(chatLine('Thanks Alice 👋 — ünïcödé'), 'data-sender'), bobName);

  // User content is text, never markup.
  const evil = '<img src=x onerror="window.__pwned=1"><b>bold?</b>';
  await bob.page.fill('#message-input', evil);
  await bob.page.press('#message-input', 'Enter');
  await alice.page.waitForSelector(chatLine(evil), { timeout: T });
  assert.equal(await alice.page.locator('#messages img, #messages b').count(), 0);
  assert.equal(await alice.page.evaluate(() => window.__pwned), undefined);

  // Bob drops off (his socket closes while reconnects are held back); Alice writes meanwhile.
  // When Bob is back, his page re-subscribes from the last offset it saw and shows the message once.
  const bobSentBefore = bob.sent.length;
  await dropWhileAnotherWrites({
    dropped: bob.page, droppedName: bobName, writer: alice.page, text: 'said while Bob was away', timeout: T,
  });
  const resub = bob.sent.slice(bobSentBefore).find((f) => f.startsWith('SUBSCRIBE') && f.includes(`destination:/topic/room/${room}`));
  assert.ok(resub, 'the page re-subscribed after reconnecting');
  assert.match(resub, /\nx-since-offset:\d+\n/);
  assert.match(resub, /\nx-epoch:[^\n]+\n/);
  await alice.page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${bobName}"] ~ li[data-type="JOIN"][data-sender="${bobName}"]`, { timeout: T });

  // Bob's view: offsets strictly increasing, no duplicates, and the same lines as Alice's.
  const offsets = async (page) => page.$$eval('#messages li[data-offset]', (lis) => lis.map((li) => Number(li.dataset.offset)));
  const bobOffsets = await offsets(bob.page);
  for (let i = 1; i < bobOffsets.length; i++) assert.ok(bobOffsets[i] > bobOffsets[i - 1], `offsets ${bobOffsets}`);
  await bob.page.waitForFunction((n) => document.querySelectorAll('#messages li[data-offset]').length >= n,
    (await offsets(alice.page)).length, { timeout: T });
  assert.deepEqual(await offsets(bob.page), await offsets(alice.page));
  await alice.page.waitForSelector(member(bobName), { timeout: T });

  // What a person sees.
  await bob.page.fill('#message-input', 'back again');
  await bob.page.press('#message-input', 'Enter');
  await alice.page.waitForSelector(chatLine('back again'), { timeout: T });
  await alice.page.screenshot({ path: path.join(SHOTS, 'alice.png') });
  await bob.page.screenshot({ path: path.join(SHOTS, 'bob.png') });

  // A direct message: click Bob in presence, the input is prefilled with /msg bob.
  await alice.page.click(member(bobName));
  assert.equal(await alice.page.inputValue('#message-input'), `/msg ${bobName} `);
  await alice.page.type('#message-input', 'just for you');
  await alice.page.press('#message-input', 'Enter');
  await bob.page.waitForSelector(`#messages li.dm:text-is(${JSON.stringify(`✉ ${aliceName} → you: just for you`)})`, { timeout: T });
  await alice.page.waitForSelector(`#messages li.dm:text-is(${JSON.stringify(`✉ you → ${bobName}: just for you`)})`, { timeout: T });
  assert.equal(await alice.page.locator('#messages li[data-type="CHAT"]:has-text("just for you")').count(), 0, 'not posted to the room');

  // Idle past the server's heart-beat timeout (1.5 x 10 s): the page's heart-beats keep it connected.
  const aliceSentBefore = alice.sent.length;
  await alice.page.waitForTimeout(16500);
  const idle = alice.sent.slice(aliceSentBefore);
  assert.ok(idle.some((f) => f === '\n'), `the page sent heart-beats: ${JSON.stringify(idle)}`);
  assert.ok(!idle.some((f) => f.startsWith('CONNECT')), 'and did not have to reconnect');
  assert.equal(await alice.page.getAttribute('#status', 'data-state'), 'connected');

  assert.deepEqual(alice.errors.map(String), [], 'no errors in Alice\'s page');
  assert.deepEqual(bob.errors.map(String), [], 'no errors in Bob\'s page');
});
