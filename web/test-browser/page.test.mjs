// The young person's page in headless Chromium against the real relay and
// real counsellors (see harness.mjs). Run by tests/web_library.rs with
// FLUISTER_BIN set; screenshots go to SCREENSHOT_DIR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  Proc,
  SCREENSHOTS,
  addCounsellor,
  axeViolations,
  counsellor,
  cuttableProxy,
  freePort,
  newPage,
  report,
  screen,
  screenshots,
  demoSuite,
} from './harness.mjs';

const suite = demoSuite('page');

/** Types a line on the page and sends it. */
async function type(page, text) {
  await page.fill('[data-message]', text);
  await page.keyboard.press('Enter');
}

/** The status mark of my `n`th message (1-based). */
function mark(page, n) {
  return page.locator(`[data-messages] li.mine >> nth=${n - 1} >> .status`);
}

test('a chat both ways over WebTransport: queue, verified counsellor, delivered marks, a transfer, quick exit', async () => {
  const sam = await counsellor(suite.setup, suite.setup.identity, 'Demo counsellor');
  sam.say('/away');
  await sam.event('status', { available: false });
  const { context, page } = await newPage(suite.browser);
  await page.goto(suite.setup.pageUrl);
  await screen(page, 'choose');
  const axe = { choose: await axeViolations(page) };
  const shots = await screenshots(page, 'choose');

  await page.check('[data-topics] input >> nth=1');
  await page.click('[data-choose-form] button[type=submit]');
  await screen(page, 'wait');
  await page.waitForFunction(() => /1|volgende/.test(document.querySelector('[data-queue]')?.textContent ?? ''));
  const queueText = await page.textContent('[data-queue]');
  axe.wait = await axeViolations(page);
  shots.push(...(await screenshots(page, 'wait')));

  sam.say('/available');
  await screen(page, 'chat');
  const verified = await page.textContent('[data-verified]');
  assert.match(verified, /Demo counsellor/);
  assert.match(verified, /geverifieerd door Fluister demo/);
  const paired = await sam.event('ready');

  await type(page, 'hallo vanuit de browser');
  const got = await sam.event('message');
  assert.equal(got.text, 'hallo vanuit de browser');
  await page.waitForFunction(() => document.querySelector('[data-messages] li.mine .status')?.getAttribute('data-status') === 'delivered');
  sam.say('hoi, ik ben er');
  await page.waitForSelector('[data-messages] li.theirs >> text=hoi, ik ben er');
  await sam.event('delivered');
  const transport = await page.evaluate(() => document.body.dataset.transport);
  assert.equal(transport, 'webtransport');
  axe.chat = await axeViolations(page);
  shots.push(...(await screenshots(page, 'chat')));

  // A transfer to a colleague: the page names the new counsellor.
  // Noor is signed in once WELCOME came, but available only once the relay
  // has her STATUS: wait until Sam sees her so, or the transfer is refused.
  const noor = await counsellor(suite.setup, addCounsellor(suite.setup, 'Noor'), 'Noor');
  await sam.event('colleague', { name: 'Noor', presence: 'available' });
  sam.say(`/transfer @${paired.chat} Noor`);
  await sam.event('ended', { reason: 'transferred' });
  await page.waitForFunction(() => /Noor/.test(document.querySelector('[data-verified]')?.textContent ?? ''));
  assert.match(await page.textContent('[data-verified]'), /Je praat nu met Noor, geverifieerd door Fluister demo/);
  await noor.event('ready');
  noor.say('ik ben Noor');
  await page.waitForSelector('[data-messages] li.theirs >> text=ik ben Noor');
  shots.push(...(await screenshots(page, 'transferred')));

  // Quick exit, by the Escape key.
  const chatUrl = page.url();
  await page.keyboard.press('Escape');
  await page.waitForURL('https://www.google.com/**');
  await noor.event('ended');
  const storage = await context.newPage();
  await storage.goto(suite.setup.pageUrl);
  const left = await storage.evaluate(async () => ({
    local: localStorage.length,
    session: sessionStorage.length,
    indexedDB: (await indexedDB.databases()).length,
    caches: (await caches.keys()).length,
    serviceWorkers: (await navigator.serviceWorker.getRegistrations()).length,
  }));
  assert.deepEqual(left, { local: 0, session: 0, indexedDB: 0, caches: 0, serviceWorkers: 0 });
  assert.deepEqual(await context.cookies(), []);
  await page.goBack().catch(() => {});
  assert.notEqual(page.url(), chatUrl, 'Back must not return to the chat');
  assert.equal(await page.locator('[data-screen="chat"]').count(), 0);
  assert.deepEqual(page.errors, []);
  for (const [name, violations] of Object.entries(axe)) assert.deepEqual(violations, [], `axe on ${name}`);
  report.push({ test: 'webtransport', transport, queue: queueText, verified, axe, screenshots: shots, storageAfterExit: left });
  await context.close();
  await sam.stop();
  await noor.stop();
});

test('the same chat over WebSocket, and a cut connection resumes with nothing lost', async () => {
  const sam = await counsellor(suite.setup, suite.setup.identity, 'Demo counsellor');
  const proxy = await cuttableProxy(suite.setup.pagePort);
  const { context, page } = await newPage(suite.browser);
  await page.goto(`http://127.0.0.1:${proxy.port}/?transport=websocket`);
  await screen(page, 'choose');
  await page.click('[data-choose-form] button[type=submit]');
  await screen(page, 'chat');
  const paired = await sam.event('ready');
  assert.equal(await page.evaluate(() => document.body.dataset.transport), 'websocket');
  await type(page, 'een');
  assert.equal((await sam.event('message')).text, 'een');
  await page.waitForFunction(() => document.querySelector('[data-messages] li.mine .status')?.getAttribute('data-status') === 'delivered');
  sam.say('twee');
  await page.waitForSelector('[data-messages] li.theirs >> text=twee');

  // Cut mid-chat; both sides write while the page is away.
  const before = sam.lines.length;
  const bannerShown = page.waitForFunction(() => {
    const banner = document.querySelector('[data-banner]');
    return banner && !(/** @type {HTMLElement} */ (banner).hidden) && banner.textContent;
  });
  proxy.cut();
  const banner = await (await bannerShown).jsonValue();
  assert.match(banner, /je plek blijft bewaard/);
  sam.say(`@${paired.chat} drie, terwijl je weg was`);
  await type(page, 'vier, terwijl ik weg was');
  await page.waitForSelector('[data-banner]', { state: 'hidden', timeout: 30000 });
  await page.waitForSelector('[data-messages] li.theirs >> text=drie, terwijl je weg was', { timeout: 30000 });
  const four = await sam.waitFor((e) => e?.event === 'message' && e.text === 'vier, terwijl ik weg was', 30000, before);
  assert.ok(four);
  await page.waitForFunction(
    () => [...document.querySelectorAll('[data-messages] li.mine .status')].every((s) => s.getAttribute('data-status') === 'delivered'),
    undefined,
    { timeout: 30000 },
  );
  assert.equal(await page.evaluate(() => document.body.dataset.transport), 'websocket');
  assert.deepEqual(page.errors, []);
  report.push({ test: 'websocket-and-resume', transport: 'websocket', banner, resumed: true });
  await page.click('[data-end]');
  await sam.event('ended');
  await context.close();
  proxy.close();
  await sam.stop();
});

test('outside opening hours the page says when the chat opens', async () => {
  const [relayPort, pagePort] = [await freePort(), await freePort()];
  const today = new Date();
  const tomorrow = new Date(Date.now() + 86_400_000);
  const day = (d) => d.toISOString().slice(0, 10);
  const days = ['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday'];
  const config = [
    `listen = "127.0.0.1:${relayPort}"`,
    '[admin]',
    'enabled = false',
    '[web]',
    'organisation = "Fluister demo"',
    `org_key = "${'ab'.repeat(32)}"`,
    `loopback_http = "127.0.0.1:${pagePort}"`,
    '[hours]',
    'time_zone = "UTC"',
    ...days.map((d) => `${d} = ["00:00-24:00"]`),
    '[[hours.exceptions]]',
    `date = "${day(today)}"`,
    'open = []',
    '[[hours.exceptions]]',
    `date = "${day(tomorrow)}"`,
    'open = ["09:00-17:00"]',
  ].join('\n');
  const path = join(suite.setup.orgDir, 'closed.toml');
  writeFileSync(path, `${config}\n`);
  const relay = new Proc(['relay', '--config', path], 'closed relay');
  const { context, page } = await newPage(suite.browser);
  for (let i = 0; ; i++) {
    try {
      await page.goto(`http://127.0.0.1:${pagePort}/`);
      break;
    } catch (e) {
      if (i > 50) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await screen(page, 'choose');
  await page.click('[data-choose-form] button[type=submit]');
  await screen(page, 'closed').catch(async (e) => {
    const state = await page
      .evaluate(() => ({
        screens: [...document.querySelectorAll('[data-screen]:not([hidden])')].map((s) => /** @type {HTMLElement} */ (s).dataset.screen),
        banner: document.querySelector('[data-banner]')?.textContent,
        queue: document.querySelector('[data-queue]')?.textContent,
        transport: document.body.dataset.transport,
      }))
      .catch((why) => String(why));
    throw new Error(
      `${e.message}\npage: ${JSON.stringify(state)}\nclosed relay stderr: ${relay.stderr.slice(-2000)}\npage errors: ${page.errors.join('\n')}`,
    );
  });
  const text = await page.textContent('[data-next-open]');
  assert.match(text, /We zijn weer open op/);
  const axe = await axeViolations(page);
  const shots = await screenshots(page, 'closed');
  // And in English, switched on the page.
  await page.click('[data-switch-language]');
  await page.waitForFunction(() => /We open again/.test(document.querySelector('[data-next-open]')?.textContent ?? ''));
  assert.deepEqual(axe, []);
  assert.deepEqual(page.errors, []);
  report.push({ test: 'closed', text, axe, screenshots: shots });
  await context.close();
  await relay.stop();
});
