// Shared steps of the chat page tests in Chromium (browser.test.mjs, browser-sockjs.test.mjs):
// selectors of what the page shows, and a drop-and-recover scene.

/** The room line of a CHAT message with exactly `content`. */
export const chatLine = (content) => `#messages li[data-type="CHAT"]:has(.content:text-is(${JSON.stringify(content)}))`;
/** A person in the presence list. */
export const member = (id) => `#presence [data-user-id="${id}"]`;

/** Types `text` into the message input and sends it with Enter. */
export async function say(page, text) {
  await page.fill('#message-input', text);
  await page.press('#message-input', 'Enter');
}

/**
 * `dropped` loses its transport while its reconnects are held back; `writer` sees it leave and
 * says `text` meanwhile; then `dropped` may reconnect, and resolves once it shows `text`.
 */
export async function dropWhileAnotherWrites({ dropped, droppedName, writer, text, timeout }) {
  await dropped.evaluate(() => {
    /* global app */
    const c = app.client;
    const open = c.open.bind(c);
    window.__hold = true;
    c.open = () => { if (window.__hold) { c.retryTimer = setTimeout(() => c.open(), 50); } else { c.open = open; open(); } };
    c.ws.close();
  });
  await dropped.waitForSelector('#status[data-state="reconnecting"]', { timeout });
  await writer.waitForSelector(`#messages li[data-type="LEAVE"][data-sender="${droppedName}"]`, { timeout });
  await say(writer, text);
  await writer.waitForSelector(chatLine(text), { timeout });
  await dropped.evaluate(() => { window.__hold = false; });
  await dropped.waitForSelector('#status[data-state="connected"]', { timeout });
  await dropped.waitForSelector(chatLine(text), { timeout });
}
