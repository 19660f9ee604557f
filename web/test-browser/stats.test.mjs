// The case statistics report in headless Chromium: a counsellor codes a
// season with `/code` against the real relay (`fluister demo`, which keeps
// a statistics store), and the admin listener's HTML page and SVG charts
// are rendered, checked for their content and accessibility, and saved as
// screenshots to SCREENSHOT_DIR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Proc, SCREENSHOTS, axeViolations, counsellor, demoSuite, openConsole, report, startConsole } from './harness.mjs';

const suite = demoSuite('stats');

/** YYYY-MM, `back` months before this one (UTC). */
function monthBefore(back) {
  const d = new Date();
  d.setUTCDate(1);
  d.setUTCMonth(d.getUTCMonth() - back);
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

test('a coded season renders as an HTML report and SVG charts in Chromium', async () => {
  const sam = await counsellor(suite.setup);
  await sam.event('form');
  const [last, now] = [monthBefore(1), monthBefore(0)];
  // 30 chats last month and 60 this month: type 1 and 2, three age bands.
  const lines = [];
  for (let i = 0; i < 90; i++) {
    const month = i < 30 ? last : now;
    const type = i % 3 === 0 ? 2 : 1;
    const age = [2, 3, 4][i % 3];
    lines.push(`/code 1=1, 2=${age}, 3=${type}, 6=1, month=${month}`);
  }
  for (const line of lines) sam.say(line);
  await sam.stop();
  const counted = sam.lines
    .map((l) => JSON.parse(l))
    .filter((e) => e?.event === 'coded' && e.counted)
    .reduce((sum, e) => sum + e.counted, 0);
  assert.equal(counted, 90, 'every coding counted');

  mkdirSync(SCREENSHOTS, { recursive: true });
  const context = await suite.browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const url = `${suite.setup.adminUrl}/stats/report?from=${last}&to=${now}`;
  const response = await page.goto(url);
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-type'], /text\/html/);
  assert.match(await page.textContent('h1'), new RegExp(`${last} to ${now}`));
  const chart = page.locator('figure svg').first();
  assert.equal(await chart.getAttribute('role'), 'img');
  assert.equal(await page.locator('figure svg rect[fill="url(#hidden-hatch)"]').count() >= 1, true);
  assert.match(await page.textContent('#contacts'), /90/);
  assert.deepEqual(await axeViolations(page), []);
  const htmlShot = join(SCREENSHOTS, 'stats-report-1280x900.png');
  await page.screenshot({ path: htmlShot, fullPage: true });

  const svg = await page.goto(`${suite.setup.adminUrl}/stats/report?from=${last}&to=${now}&format=svg`);
  assert.match(svg.headers()['content-type'], /image\/svg\+xml/);
  const size = await page.evaluate(() => {
    const root = document.documentElement;
    const box = root.getBoundingClientRect();
    return { tag: root.tagName, width: box.width, height: box.height };
  });
  assert.equal(size.tag, 'svg');
  assert.ok(size.width > 300, `the charts have a size: ${size.width}`);
  // An SVG document has no page to scroll: the viewport takes its size.
  await page.setViewportSize({ width: Math.ceil(size.width), height: Math.ceil(size.height) });
  const svgShot = join(SCREENSHOTS, 'stats-charts.png');
  await page.screenshot({ path: svgShot });

  const bad = await page.goto(`${suite.setup.adminUrl}/stats/report?from=2020-13`);
  assert.equal(bad.status(), 400);
  assert.match(await page.textContent('body'), /from "2020-13": use YYYY-MM/);
  report.push({ test: 'stats report', screenshots: [htmlShot, svgShot] });
  await context.close();
});

/** This month's coded chats, from the admin listener's JSON report. */
async function codedThisMonth() {
  const now = monthBefore(0);
  const response = await fetch(`${suite.setup.adminUrl}/stats/report?from=${now}&to=${now}&format=json`);
  const json = await response.json();
  return json.contacts.cells[0][0];
}

test('the console offers the coding form when a chat ends, and its coding is counted', async () => {
  const before = await codedThisMonth();
  const sam = await startConsole(suite.setup);
  const { context, page } = await openConsole(suite.browser, sam.link);
  await page.waitForSelector('[data-codings]:not([hidden])');
  const orgKey = readFileSync(`${suite.setup.orgDir}/org.pub`, 'utf8').trim();
  const young = new Proc(['chat', '--relay', suite.setup.relay, '--org-key', orgKey, '--ca', suite.setup.ca, '--json'], 'young person');
  await young.event('paired');
  const chat = page.locator('[data-chat]').first();
  await chat.locator('[data-message]:not([disabled])').waitFor();
  await chat.locator('[data-end]').click();
  const form = chat.locator('[data-coding]');
  await form.waitFor({ state: 'visible' });
  await form.getByLabel('Age band').selectOption('13–15');
  await form.getByLabel('Type', { exact: true }).selectOption('Sextortion (threats with images)');
  assert.deepEqual(await axeViolations(page), []);
  const formShot = join(SCREENSHOTS, 'console-coding-1280x800.png');
  await page.screenshot({ path: formShot });
  await chat.locator('[data-coding-save]').click();
  await chat.locator('[data-coded]').waitFor({ state: 'visible' });
  assert.equal(await form.isHidden(), true, 'a chat is coded once');
  await page.waitForFunction(() => /: 1\./.test(document.querySelector('[data-codings-held]')?.textContent ?? ''));
  await page.click('[data-codings-send]');
  await page.waitForFunction(() => /: 0\./.test(document.querySelector('[data-codings-held]')?.textContent ?? ''));
  const after = await codedThisMonth();
  assert.equal(after.n, before.n + 1, 'the coding is in this month\'s count');
  report.push({ test: 'console coding', screenshots: [formShot] });
  await young.stop();
  await context.close();
});
