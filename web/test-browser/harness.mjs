// What the browser tests run against: the real relay (`fluister demo`,
// which serves the page on loopback and pins WebTransport to its
// certificate), real counsellors (`fluister counsellor --json`), Debian's
// Chromium driven by playwright-core, a TCP proxy that can cut the page's
// connection, and axe-core. Everything listens on 127.0.0.1.
import { spawn, execFileSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createServer, connect as tcpConnect } from 'node:net';
import { createSocket } from 'node:dgram';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, afterEach, before } from 'node:test';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
export const BIN = process.env.FLUISTER_BIN ?? '';
export const SCREENSHOTS = process.env.SCREENSHOT_DIR ?? join(process.cwd(), 'screenshots');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** A port free on both TCP and UDP (the relay takes one number for both). */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port } = /** @type {any} */ (server.address());
        server.close(() => resolve(port));
      });
    });
    const udpFree = await new Promise((resolve) => {
      const socket = createSocket('udp4');
      socket.once('error', () => resolve(false));
      socket.bind(port, '127.0.0.1', () => socket.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
}

/** A child process whose stdout lines (JSON or text) can be awaited. */
/** Every process the tests started and that still runs. */
const running = new Set();

/**
 * Stops every process still running: a test that failed half-way must not
 * leave one behind, or node (and the `cargo test` waiting for it) never
 * exits.
 */
export function stopAll() {
  return Promise.all([...running].map((p) => p.stop()));
}

/** Stops every counsellor still running; the relay stays. */
export function stopCounsellors() {
  return Promise.all([...running].filter((p) => p.isCounsellor).map((p) => p.stop()));
}

export class Proc {
  constructor(args, label) {
    this.label = label;
    this.child = spawn(BIN, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    running.add(this);
    this.child.once('exit', () => running.delete(this));
    this.lines = [];
    this.waiters = [];
    this.stderr = '';
    this.child.stderr.on('data', (d) => (this.stderr += d));
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => !w());
    });
  }

  /** The first line (from `from` on) that `match` accepts, within `ms`. */
  waitFor(match, ms = 20000, from = 0) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = from; i < this.lines.length; i++) {
          let value = this.lines[i];
          try {
            value = JSON.parse(value);
          } catch {
            // a text line
          }
          if (match(value)) {
            clearTimeout(timer);
            resolve(value);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        reject(new Error(`${this.label}: nothing matched in ${ms} ms; lines: ${this.lines.slice(-15).join('\n')}\nstderr: ${this.stderr.slice(-2000)}`));
      }, ms);
      if (!check()) this.waiters.push(check);
    });
  }

  /** An event of `fluister counsellor --json`. */
  event(name, fields = {}, ms = 20000) {
    return this.waitFor((e) => e?.event === name && Object.entries(fields).every(([k, v]) => e[k] === v), ms);
  }

  say(line) {
    this.child.stdin.write(`${line}\n`);
  }

  /**
   * Ends the process the way a person would: a counsellor by the end of
   * its input (it signs out and closes its connection), a relay by
   * SIGTERM (it drains). Killed if it takes too long.
   */
  stop() {
    if (this.child.exitCode !== null) return Promise.resolve();
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    // A console ignores the end of its input (Enter makes a new link);
    // SIGTERM signs it out.
    const now = this.label.includes('relay') || this.label === 'demo' || this.isConsole;
    const term = setTimeout(() => this.child.kill('SIGTERM'), now ? 0 : 5000);
    const kill = setTimeout(() => this.child.kill('SIGKILL'), 10000);
    return exited.then(() => {
      clearTimeout(term);
      clearTimeout(kill);
    });
  }
}

/** `fluister demo` on free ports, and what it printed. */
export async function startDemo() {
  const [relay, admin, page] = [await freePort(), await freePort(), await freePort()];
  const demo = new Proc(
    ['demo', '--listen', `127.0.0.1:${relay}`, '--admin-listen', `127.0.0.1:${admin}`, '--page-listen', `127.0.0.1:${page}`],
    'demo',
  );
  const counsellorLine = await demo.waitFor((l) => typeof l === 'string' && l.includes(' counsellor --relay '));
  const identity = counsellorLine.match(/--identity (\S+)/)[1];
  const ca = counsellorLine.match(/--ca (\S+)/)[1];
  const orgDir = ca.replace(/\/relay-cert\.pem$/, '');
  const pageUrl = (await demo.waitFor((l) => typeof l === 'string' && /^\s*http:\/\/127\.0\.0\.1:\d+\/$/.test(l))).trim();
  return { demo, relay: `127.0.0.1:${relay}`, identity, ca, orgDir, pageUrl, pagePort: page, adminUrl: `http://127.0.0.1:${admin}` };
}

/** A second counsellor of the demo's organisation. */
export function addCounsellor(setup, name) {
  const identity = join(setup.orgDir, 'counsellors', `${name}.identity`);
  if (!existsSync(identity)) execFileSync(BIN, ['org', 'add-counsellor', '--dir', setup.orgDir, '--name', name, '--days', '1']);
  return identity;
}

/** `fluister counsellor --json`, signed in. */
export async function counsellor(setup, identity = setup.identity, label = 'counsellor') {
  const proc = new Proc(['counsellor', '--relay', setup.relay, '--identity', identity, '--ca', setup.ca, '--json'], label);
  proc.isCounsellor = true;
  await proc.event('connected');
  return proc;
}

/** A TCP proxy to `port` whose connections can all be cut at once. */
export async function cuttableProxy(port) {
  const sockets = new Set();
  let holding = false;
  const server = createServer((client) => {
    if (holding) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: /** @type {any} */ (server.address()).port,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    /** Cuts every connection and refuses new ones until `release()`. */
    hold: () => {
      holding = true;
      for (const s of sockets) s.destroy();
    },
    release: () => {
      holding = false;
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** The consoles' temporary folders: gone when the test run ends. */
const consoleFolders = new Set();
process.once('exit', () => {
  for (const folder of consoleFolders) rmSync(folder, { recursive: true, force: true });
});

/**
 * `fluister console` on a free loopback port, signed in, with the one-time
 * link it printed. Its canned replies live in a fresh temporary folder.
 */
export async function startConsole(setup, identity = setup.identity, label = 'console', args = []) {
  const port = await freePort();
  const folder = mkdtempSync(join(tmpdir(), 'fluister-console-'));
  consoleFolders.add(folder);
  const replies = join(folder, 'replies.txt');
  const proc = new Proc(
    ['console', '--relay', setup.relay, '--identity', identity, '--ca', setup.ca, '--listen', `127.0.0.1:${port}`, '--replies', replies, ...args],
    label,
  );
  proc.isCounsellor = true;
  proc.isConsole = true;
  const link = (await proc.waitFor((l) => typeof l === 'string' && /\?token=[0-9a-f]{64}$/.test(l.trim()))).trim();
  return { proc, link, port, origin: `http://127.0.0.1:${port}`, replies };
}

/** A console's page in a browser context of its own, signed in. */
export async function openConsole(browser, link, viewport = { width: 1280, height: 800 }) {
  // A Dutch helpline's counsellor: the page follows the browser's language.
  const context = await browser.newContext({ viewport, locale: 'nl-NL' });
  const page = await context.newPage();
  watchErrors(page);
  await page.goto(link);
  await page.waitForSelector('[data-link][data-state="online"]');
  return { context, page };
}

/** Collects the page's errors, and CSP refusals, in `page.errors`. */
function watchErrors(page) {
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.on('console', (m) => {
    if (process.env.DEBUG_PAGE) console.error('page:', m.type(), m.text());
    if (m.type() === 'error' && /Content.Security.Policy|Refused/i.test(m.text())) page.errors.push(m.text());
  });
}

/** Headless Chromium as the machine has it; QUIC left on for WebTransport. */
export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A page at phone size, with the exit URL answered locally (no network). */
export async function newPage(browser, exitUrl = 'https://www.google.com/') {
  const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
  await context.route(`${exitUrl}**`, (route) => route.fulfill({ contentType: 'text/html', body: '<title>exit</title><p>elsewhere</p>' }));
  const page = await context.newPage();
  watchErrors(page);
  return { context, page };
}

export async function screen(page, name, ms = 20000) {
  await page.waitForSelector(`[data-screen="${name}"]:not([hidden])`, { timeout: ms });
}

/** axe-core's serious and critical violations on the page as it is. */
export async function axeViolations(page) {
  await page.evaluate(AXE);
  const results = await page.evaluate(() => /** @type {any} */ (window).axe.run(document, { resultTypes: ['violations'] }));
  return results.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

/** Screenshots of the page at phone and desktop size, named by screen. */
export async function screenshots(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const paths = [];
  for (const [width, height] of [
    [360, 740],
    [1280, 800],
  ]) {
    await page.setViewportSize({ width, height });
    const path = join(SCREENSHOTS, `${name}-${width}x${height}.png`);
    await page.screenshot({ path, fullPage: false });
    paths.push(path);
  }
  await page.setViewportSize({ width: 360, height: 740 });
  return paths;
}

/** The results each test records, printed at the end for the closing note. */
export const report = [];

/**
 * The hooks of a test file: `fluister demo` and Chromium before its tests,
 * every counsellor stopped after each (one that failed half-way must not
 * stay signed in: the next test's young person would be paired with it),
 * and at the end everything stopped and the report written to
 * `report-NAME.json` and printed. `suite.setup` and `suite.browser` are
 * there once the tests run.
 */
export function demoSuite(name) {
  const suite = { setup: null, browser: null };
  before(async () => {
    suite.setup = await startDemo();
    suite.browser = await launch();
  });
  afterEach(() => stopCounsellors());
  after(async () => {
    await suite.browser?.close();
    await suite.setup?.demo.stop();
    await stopAll();
    mkdirSync(SCREENSHOTS, { recursive: true });
    writeFileSync(join(SCREENSHOTS, `report-${name}.json`), `${JSON.stringify(report, null, 2)}\n`);
    for (const line of report) console.log(`# ${JSON.stringify(line)}`);
  });
  return suite;
}
