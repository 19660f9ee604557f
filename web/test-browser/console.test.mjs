// The counsellor's console (`fluister console`) in headless Chromium, with
// young people on their page, against the real relay (`fluister demo`).
// Run by tests/web_library.rs with FLUISTER_BIN set; screenshots go to
// SCREENSHOT_DIR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  SCREENSHOTS,
  addCounsellor,
  axeViolations,
  cuttableProxy,
  freePort,
  newPage,
  openConsole,
  report,
  screen,
  startConsole,
  demoSuite,
} from './harness.mjs';

const suite = demoSuite('console');

/**
 * A young person on their page who chose topic `nth` and started a chat;
 * with `cuttable`, over WebSocket through a proxy that can cut them off.
 */
async function youngPerson(nth = 1, cuttable = false) {
  const { context, page } = await newPage(suite.browser);
  const proxy = cuttable ? await cuttableProxy(suite.setup.pagePort) : null;
  await page.goto(proxy ? `http://127.0.0.1:${proxy.port}/?transport=websocket` : suite.setup.pageUrl);
  await screen(page, 'choose');
  await page.check(`[data-topics] input >> nth=${nth}`);
  await page.click('[data-choose-form] button[type=submit]');
  return { context, page, proxy };
}

/** The console's panel of chat `n`. */
const panel = (page, n) => page.locator(`[data-chat="${n}"]`);

/** Waits until chat `n` in the console can take messages. */
async function ready(page, n) {
  await page.waitForSelector(`[data-chat="${n}"] [data-message]:not([disabled])`);
}

/** Types and sends a reply in chat `n` of the console. */
async function reply(page, n, text) {
  await panel(page, n).locator('[data-message]').fill(text);
  await panel(page, n).locator('[data-message]').press('Enter');
}

/** Types and sends a line on the young person's page. */
async function say(page, text) {
  await page.fill('[data-message]', text);
  await page.keyboard.press('Enter');
}

async function shot(page, name, width, height) {
  await page.setViewportSize({ width, height });
  const path = join(SCREENSHOTS, `console-${name}-${width}x${height}.png`);
  await page.screenshot({ path });
  return path;
}

test('a young person and the console chat both ways, with unread and delivered marks and a new-chat cue', async () => {
  const sam = await startConsole(suite.setup, suite.setup.identity, 'console Sam');
  const { context: samContext, page: console_ } = await openConsole(suite.browser, sam.link);
  assert.match(await console_.textContent('[data-pseudonym]'), /Demo counsellor/);
  const axe = { idle: await axeViolations(console_) };

  const young = await youngPerson(1, true);
  await screen(young.page, 'chat');
  // The new chat shows at once, with the young person's topic and language.
  await console_.waitForSelector('[data-chat="1"]');
  await console_.waitForFunction(() => /^\(\d+\) /.test(document.title));
  assert.match(await console_.getAttribute('[data-favicon]', 'href'), /circle/);
  const topic = await panel(console_, 1).locator('[data-topic]').textContent();
  assert.ok(topic && topic !== 'Geen onderwerp gekozen', topic);
  assert.match(await panel(console_, 1).locator('[data-elapsed]').textContent(), /loopt \d+:\d\d/);
  await ready(console_, 1);

  // A message while the counsellor looks elsewhere is unread, and marked so.
  await say(young.page, 'hallo, is daar iemand?');
  await panel(console_, 1).locator('li.theirs >> text=hallo, is daar iemand?').waitFor();
  await console_.waitForFunction(() => document.querySelector('[data-chat="1"] [data-unread]')?.textContent === '1');
  const unreadTitle = await console_.title();
  assert.match(unreadTitle, /^\(\d+\) Fluister console$/);
  // Looking at the chat (into its reply box) clears the marks.
  await panel(console_, 1).locator('[data-message]').click();
  await console_.waitForFunction(() => document.querySelector('[data-chat="1"] [data-unread]')?.textContent === '');
  await console_.waitForFunction(() => document.title === 'Fluister console');

  // The counsellor's reply: sent, then delivered; the page shows it.
  await reply(console_, 1, 'Hoi, ik ben er. Vertel maar.');
  await young.page.waitForSelector('[data-messages] li.theirs >> text=Hoi, ik ben er. Vertel maar.');
  await console_.waitForFunction(() => document.querySelector('[data-chat="1"] li.mine .status')?.getAttribute('data-status') === 'delivered');
  assert.equal(await panel(console_, 1).locator('li.mine .status').textContent(), 'afgeleverd');
  // And the young person's own mark.
  await young.page.waitForFunction(() => document.querySelector('[data-messages] li.mine .status')?.getAttribute('data-status') === 'delivered');

  // A canned reply goes into the reply box, to be edited or sent.
  await console_.click('[data-replies] button >> nth=0');
  const canned = await panel(console_, 1).locator('[data-message]').inputValue();
  assert.equal(canned, 'Fijn dat je ons schrijft. Ik ben er voor je.');
  await panel(console_, 1).locator('[data-message]').press('Enter');
  await young.page.waitForSelector(`[data-messages] li.theirs >> text=${canned}`);
  // Editing the list writes the local file, never the relay.
  await console_.click('[data-edit-replies]');
  await console_.fill('[data-replies-text]', 'Eerste antwoord\nTweede antwoord');
  await console_.click('[data-replies-editor] button[type=submit]');
  await console_.waitForSelector('[data-replies] button >> text=Tweede antwoord');
  assert.match(readFileSync(sam.replies, 'utf8'), /^Eerste antwoord\nTweede antwoord$/m);

  axe.chat = await axeViolations(console_);

  // The young person's connection goes away: the console warns, and says
  // when it is back.
  await young.proxy.hold();
  await panel(console_, 1).locator('[data-peer-away]:not([hidden])').waitFor();
  const awayText = await panel(console_, 1).locator('[data-peer-away]').textContent();
  axe.away = await axeViolations(console_);
  young.proxy.release();
  await panel(console_, 1).locator('[data-info] >> text=De jongere is weer verbonden.').waitFor();
  assert.equal(await panel(console_, 1).locator('[data-peer-away]').isHidden(), true);

  // The young person ends; the console says so and keeps the panel until closed.
  await young.page.click('[data-end]');
  await panel(console_, 1).locator('[data-info] >> text=De jongere heeft de chat beëindigd.').waitFor();
  await panel(console_, 1).locator('[data-close]').click();
  await console_.waitForFunction(() => !document.querySelector('[data-chat="1"]'));

  // English too.
  await console_.click('[data-switch-language]');
  await console_.waitForFunction(() => document.documentElement.lang === 'en');
  assert.equal(await console_.textContent('[data-sign-out]'), 'Sign out');
  assert.equal(await console_.textContent('[data-link]'), 'Signed in');
  await console_.click('[data-switch-language]');

  // Nothing kept in the browser.
  const kept = await console_.evaluate(async () => ({
    local: localStorage.length,
    session: sessionStorage.length,
    indexedDB: (await indexedDB.databases()).length,
    caches: (await caches.keys()).length,
  }));
  assert.deepEqual(kept, { local: 0, session: 0, indexedDB: 0, caches: 0 });
  assert.deepEqual(console_.errors, []);
  for (const [name, violations] of Object.entries(axe)) assert.deepEqual(violations, [], `axe on ${name}`);
  report.push({ test: 'console chat', unreadTitle, canned, awayText, axe, storage: kept });
  young.proxy.close();
  await young.context.close();
  await samContext.close();
});

test('two young people at once in one console, and a transfer to a second console', async () => {
  const sam = await startConsole(suite.setup, suite.setup.identity, 'console Sam', ['--capacity', '2']);
  const { context: samContext, page: samPage } = await openConsole(suite.browser, sam.link);

  const first = await youngPerson(1);
  await screen(first.page, 'chat');
  await samPage.waitForSelector('[data-chat="1"]');
  const second = await youngPerson(2);
  await screen(second.page, 'chat');
  await samPage.waitForSelector('[data-chat="2"]');
  await ready(samPage, 1);
  await ready(samPage, 2);
  assert.equal(await samPage.locator('[data-chat]').count(), 2);

  // Each line goes to its own chat, both ways.
  await say(first.page, 'ik ben de eerste');
  await say(second.page, 'ik ben de tweede');
  await panel(samPage, 1).locator('li.theirs >> text=ik ben de eerste').waitFor();
  await panel(samPage, 2).locator('li.theirs >> text=ik ben de tweede').waitFor();
  assert.equal(await panel(samPage, 1).locator('li.theirs >> text=ik ben de tweede').count(), 0);
  await reply(samPage, 2, 'antwoord voor twee');
  await second.page.waitForSelector('[data-messages] li.theirs >> text=antwoord voor twee');
  assert.equal(await first.page.locator('[data-messages] li.theirs >> text=antwoord voor twee').count(), 0);
  // Chat 1's message is unread while Sam answers in chat 2, and its mark
  // grows with the next.
  await samPage.waitForFunction(() => document.querySelector('[data-chat="1"] [data-unread]')?.textContent === '1');
  assert.equal(await panel(samPage, 2).locator('[data-unread]').textContent(), '');
  await say(first.page, 'nog iets');
  await samPage.waitForFunction(() => document.querySelector('[data-chat="1"] [data-unread]')?.textContent === '2');
  // Alt+1 goes to chat 1 and clears it.
  await samPage.keyboard.press('Alt+1');
  await samPage.waitForFunction(() => document.querySelector('[data-chat="1"] [data-unread]')?.textContent === '');

  // Noor signs in (now, or the relay would have given her a chat: the
  // least loaded counsellor gets the next) and shows in Sam's list of
  // colleagues with room; Sam hands chat 1 over.
  const noorConsole = await startConsole(suite.setup, addCounsellor(suite.setup, 'Noor'), 'console Noor');
  const { context: noorContext, page: noorPage } = await openConsole(suite.browser, noorConsole.link);
  await samPage.waitForSelector('[data-colleagues] [data-colleague="Noor"] [data-presence="available"]');
  await panel(samPage, 1).locator('[data-transfer-to]').selectOption('Noor');
  await panel(samPage, 1).locator('[data-transfer]').click();
  await first.page.waitForFunction(() => /Noor/.test(document.querySelector('[data-verified]')?.textContent ?? ''));
  assert.match(await first.page.textContent('[data-verified]'), /Je praat nu met Noor, geverifieerd door Fluister demo/);
  await panel(samPage, 1).locator('[data-info] >> text=De chat is doorverbonden.').waitFor();
  await noorPage.waitForSelector('[data-chat="1"]');
  await ready(noorPage, 1);
  await reply(noorPage, 1, 'Hoi, ik ben Noor.');
  await first.page.waitForSelector('[data-messages] li.theirs >> text=Hoi, ik ben Noor.');
  await say(first.page, 'dag Noor');
  await panel(noorPage, 1).locator('li.theirs >> text=dag Noor').waitFor();
  // Chat 2 carried on with Sam.
  await say(second.page, 'ben je er nog?');
  await panel(samPage, 2).locator('li.theirs >> text=ben je er nog?').waitFor();

  const axe = await axeViolations(samPage);
  assert.deepEqual(axe, [], 'axe on two chats');
  assert.deepEqual(samPage.errors, []);
  assert.deepEqual(noorPage.errors, []);
  report.push({ test: 'console transfer', transferredTo: 'Noor', axe });
  for (const c of [first.context, second.context, samContext, noorContext]) await c.close();
});

test('away, available and capacity decide who gets the next chat', async () => {
  const sam = await startConsole(suite.setup, suite.setup.identity, 'console Sam');
  const noorConsole = await startConsole(suite.setup, addCounsellor(suite.setup, 'Noor'), 'console Noor');
  const { context: samContext, page: samPage } = await openConsole(suite.browser, sam.link);
  const { context: noorContext, page: noorPage } = await openConsole(suite.browser, noorConsole.link);

  // Sam goes away: the first young person goes to Noor.
  await samPage.click('[data-available]');
  await samPage.waitForSelector('[data-available][aria-pressed="false"]');
  await noorPage.waitForSelector('[data-colleagues] [data-colleague="Demo counsellor"] [data-presence="away"]');
  const one = await youngPerson(1);
  await noorPage.waitForSelector('[data-chat="1"]');
  await screen(one.page, 'chat');
  assert.equal(await samPage.locator('[data-chat]').count(), 0);

  // Noor is full and Sam away: the next one waits, and both consoles count them.
  const two = await youngPerson(2);
  await screen(two.page, 'wait');
  await samPage.waitForFunction(() => [...document.querySelectorAll('[data-queue] .n')].some((n) => n.textContent === '1'));
  await noorPage.waitForFunction(() => [...document.querySelectorAll('[data-queue] .n')].some((n) => n.textContent === '1'));
  // Sam is available again and takes them.
  await samPage.click('[data-available]');
  await samPage.waitForSelector('[data-chat="1"]');
  await screen(two.page, 'chat');
  await samPage.waitForFunction(() => document.querySelector('[data-queue]')?.textContent?.includes('Niemand wacht'));

  // Both are full; Noor takes two at once: the third goes to Noor.
  await noorPage.fill('[data-capacity]', '2');
  await noorPage.press('[data-capacity]', 'Enter');
  await noorPage.locator('[data-capacity]').blur();
  await samPage.waitForSelector('[data-colleagues] [data-colleague="Noor"] [data-presence="available"]');
  const three = await youngPerson(3);
  await noorPage.waitForSelector('[data-chat="2"]');
  await screen(three.page, 'chat');
  assert.equal(await samPage.locator('[data-chat]').count(), 1);
  report.push({ test: 'console routing', away: 'Noor took it', available: 'Sam took it', capacity: 'Noor took the third' });
  for (const c of [one.context, two.context, three.context, samContext, noorContext]) await c.close();
});

test('end-and-block asks first, then closes the young person’s connection', async () => {
  const sam = await startConsole(suite.setup, suite.setup.identity, 'console Sam');
  const { context, page } = await openConsole(suite.browser, sam.link);
  const young = await youngPerson(1);
  await screen(young.page, 'chat');
  await ready(page, 1);
  await say(young.page, 'hallo');
  await panel(page, 1).locator('li.theirs >> text=hallo').waitFor();

  // Cancelled: nothing happens.
  await panel(page, 1).locator('[data-block]').click();
  await page.waitForSelector('[data-confirm-block][open]');
  const axe = await axeViolations(page);
  await page.click('[data-confirm-no]');
  await page.waitForFunction(() => !document.querySelector('[data-confirm-block]')?.hasAttribute('open'));
  await say(young.page, 'nog steeds hier');
  await panel(page, 1).locator('li.theirs >> text=nog steeds hier').waitFor();

  // Confirmed: the chat ends and the young person's connection is closed.
  await panel(page, 1).locator('[data-block]').click();
  await page.click('[data-confirm-yes]');
  await panel(page, 1).locator('[data-info] >> text=Je hebt de chat beëindigd en geblokkeerd.').waitFor();
  await screen(young.page, 'ended');
  const reason = await young.page.textContent('[data-ended-reason]');
  assert.ok(reason && reason.length > 0);
  assert.deepEqual(axe, [], 'axe on the confirmation');
  report.push({ test: 'console block', youngPersonSaw: reason });
  await young.context.close();
  await context.close();
});

/** A raw request to the console, with the headers given. */
function raw(port, path, headers) {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers, method: 'GET' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end();
  });
}

test('the console refuses a request without the token, from a foreign origin, or for a foreign host', async () => {
  const sam = await startConsole(suite.setup, suite.setup.identity, 'console Sam');
  const token = new URL(sam.link).search;
  const host = `127.0.0.1:${sam.port}`;
  const upgrade = { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' };
  const refused = {
    page_without_token: await raw(sam.port, '/', { Host: host }),
    script_without_token: await raw(sam.port, '/app.js', { Host: host }),
    live_without_token: await raw(sam.port, '/live', { Host: host, Origin: sam.origin, ...upgrade }),
    wrong_token: await raw(sam.port, '/?token=' + '0'.repeat(64), { Host: host }),
    foreign_host: await raw(sam.port, `/${token}`, { Host: `rebound.example:${sam.port}` }),
    foreign_origin: await raw(sam.port, `/${token}`, { Host: host, Origin: 'http://evil.example' }),
  };
  assert.deepEqual(refused, {
    page_without_token: 401,
    script_without_token: 401,
    live_without_token: 401,
    wrong_token: 403,
    foreign_host: 403,
    foreign_origin: 403,
  });
  // None of those spent the link: it still opens the console, once.
  const { context, page } = await openConsole(suite.browser, sam.link);
  const again = await context.newPage();
  const second = await again.goto(sam.link);
  assert.equal(second.status(), 403);
  // A page of another origin on the same host (another port: the same
  // site, so the browser sends it the console's cookie) cannot open the
  // live connection.
  const otherPort = await freePort();
  const otherSite = createServer((_, res) => res.end('<!doctype html><title>other</title>')).listen(otherPort, '127.0.0.1');
  const other = await context.newPage();
  await other.goto(`http://127.0.0.1:${otherPort}/`);
  const crossOrigin = await other.evaluate(
    (url) =>
      new Promise((resolve) => {
        const socket = new WebSocket(url);
        socket.onopen = () => resolve('opened');
        socket.onerror = () => resolve('refused');
      }),
    `ws://127.0.0.1:${sam.port}/live`,
  );
  assert.equal(crossOrigin, 'refused');
  otherSite.close();
  // A response never carries a CORS header.
  const response = await page.request.get(`${sam.origin}/app.js`, { headers: { Origin: sam.origin } });
  assert.equal(response.status(), 200);
  assert.equal(response.headers()['access-control-allow-origin'], undefined);
  assert.equal(response.headers()['cache-control'], 'no-store');
  report.push({ test: 'console guard', refused, secondUseOfLink: 403, crossOriginLive: crossOrigin });
  await context.close();
});

test('three chats at once, at 1280×800 and 1920×1080', async () => {
  const sam = await startConsole(suite.setup, suite.setup.identity, 'console Sam', ['--capacity', '3']);
  const { context, page } = await openConsole(suite.browser, sam.link);
  const young = [];
  for (const [i, text] of ['Ik word gedwongen om te dealen.', 'Iemand dreigt mijn foto’s te delen.', 'Thuis gaat het niet goed.'].entries()) {
    const y = await youngPerson(i + 1);
    await screen(y.page, 'chat');
    await ready(page, i + 1);
    await say(y.page, text);
    await panel(page, i + 1).locator(`li.theirs >> text=${text}`).waitFor();
    young.push(y);
  }
  await reply(page, 1, 'Dank je dat je het vertelt. Ben je nu veilig?');
  await panel(page, 1).locator('li.mine .status[data-status="delivered"]').waitFor();
  await reply(page, 3, 'Ik ben er. Wat is er gebeurd?');
  const screenshots = [await shot(page, 'three-chats', 1280, 800), await shot(page, 'three-chats', 1920, 1080)];
  // Narrow: one chat at a time behind tabs.
  screenshots.push(await shot(page, 'three-chats-tabs', 800, 900));
  assert.equal(await page.locator('[role="tab"]').count(), 3);
  await page.click('[data-tab="2"]');
  await page.waitForSelector('[data-chat="2"].active');
  assert.deepEqual(await axeViolations(page), [], 'axe on three chats');
  report.push({ test: 'console screenshots', screenshots });
  for (const y of young) await y.context.close();
  await context.close();
});
