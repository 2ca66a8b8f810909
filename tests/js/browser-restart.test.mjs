// The chat page across a server restart: the server's SIGTERM closes the socket with 1012, the page
// reconnects by itself to the new instance, asks to recover from its last offset and epoch, is
// told the history is gone (in-memory server: a new epoch), and reloads the room.
// Needs CHAT_SERVER_BIN (scripts/client-tests sets it): this test runs servers of its own.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { uniqueId, waitFor } from './helpers.mjs';

const BIN = process.env.CHAT_SERVER_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const T = 15000;

const children = new Set();
let context;
let profile;

after(async () => {
  if (context) await context.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  for (const c of children) c.kill('SIGKILL');
});

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Starts chat-server on `port` as `serverId` and waits for /healthz. */
async function startServer(port, serverId) {
  const child = spawn(BIN, [], {
    env: { ...process.env, CHAT_LISTEN_ADDR: `127.0.0.1:${port}`, CHAT_SERVER_ID: serverId, CHAT_SHUTDOWN_GRACE_SECS: '2' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => { children.delete(child); resolve({ code, signal }); }));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`chat-server exited at start: ${stderr}`);
    try { return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok; } catch { return false; }
  }, 10000, `chat-server ${serverId} healthy`);
  return child;
}

test('the page reconnects after a restart (close 1012) and reloads a room whose history is gone',
  { skip: !BIN && 'set CHAT_SERVER_BIN to run servers of this test', timeout: 90000 }, async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const name = uniqueId('carol');
    const room = uniqueId('restart');
    let server = await startServer(port, 'instance-a');

    profile = mkdtempSync(path.join(tmpdir(), 'chatcluster-restart-'));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, args: ARGS, headless: true });
    const page = context.pages()[0] || await context.newPage();
    const sent = [];
    page.on('websocket', (ws) => ws.on('framesent', (f) => sent.push(String(f.payload))));
    await page.addInitScript(() => {
      // Every status the page shows, to see what it said while the server was away.
      window.__statusLog = [];
      document.addEventListener('DOMContentLoaded', () => {
        const s = document.getElementById('status');
        new MutationObserver(() => window.__statusLog.push(s.textContent)).observe(s, { childList: true, characterData: true, subtree: true });
      });
    });

    await page.goto(url + '/');
    await page.fill('#name', name);
    await page.click('#connect');
    await page.waitForSelector('#status[data-state="connected"]', { timeout: T });
    assert.equal(await page.textContent('#server-id'), 'instance-a');
    await page.fill('#new-room', room);
    await page.press('#new-room', 'Enter');
    await page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${name}"]`, { timeout: T });
    await page.fill('#message-input', 'before the restart');
    await page.press('#message-input', 'Enter');
    await page.waitForSelector('#messages li[data-type="CHAT"]:has-text("before the restart")', { timeout: T });

    // Graceful stop: the page is told to reconnect (1012) and keeps trying while nothing listens.
    server.kill('SIGTERM');
    const exit = await server.exited;
    assert.equal(exit.code, 0, `chat-server exits cleanly on SIGTERM (${JSON.stringify(exit)})`);
    await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: T });
    const log = await page.evaluate(() => window.__statusLog);
    assert.ok(log.some((s) => s.includes('server restarting')), `the page saw close code 1012: ${JSON.stringify(log)}`);

    const sentBefore = sent.length;
    server = await startServer(port, 'instance-b');
    await page.waitForSelector('#status[data-state="connected"]', { timeout: T });
    assert.equal(await page.textContent('#server-id'), 'instance-b');

    // It asked to recover from where it was...
    const resub = await waitFor(() => sent.slice(sentBefore).find((f) => f.startsWith('SUBSCRIBE') && f.includes(`/topic/room/${room}`)), T, 'resubscribe');
    assert.match(resub, /\nx-since-offset:2\n/);
    assert.match(resub, /\nx-epoch:[^\n]+\n/);
    // ...was told it can't (a new server, a new epoch), and now shows the room as it is.
    await page.waitForSelector('#messages li[data-testid="notice"]:has-text("could not be recovered")', { timeout: T });
    await page.waitForSelector(`#messages li[data-type="JOIN"][data-sender="${name}"][data-offset="1"]`, { timeout: T });
    assert.equal(await page.locator('#messages li[data-type="CHAT"]:has-text("before the restart")').count(), 0);
    await page.fill('#message-input', 'after the restart');
    await page.press('#message-input', 'Enter');
    await page.waitForSelector('#messages li[data-type="CHAT"][data-offset="2"]:has-text("after the restart")', { timeout: T });
    await page.waitForSelector(`#presence [data-user-id="${name}"]`, { timeout: T });

    server.kill('SIGTERM');
    await server.exited;
  });
