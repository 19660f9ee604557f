// The driver over stand-in links: it says HELLO on the first link,
// reports the transport, and after a lost link reconnects and resumes.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { backoff, startChat } from '../src/driver.js';

/** A link the test plays the relay on. */
function fakeLink(kind = 'websocket') {
  const link = {
    kind,
    sent: [],
    send: (frame) => link.sent.push(frame),
    close: (code) => void (link.closedWith = code),
    onFrame: (h) => void (link.frame = h),
    onClose: (h) => void (link.end = h),
  };
  return link;
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 5));

/** A chat over stand-in links; `links` and `events` record what happened. */
function started(options = {}) {
  const links = [];
  const events = [];
  const chat = startChat({
    orgKey: new Uint8Array(32),
    connect: async () => {
      const link = fakeLink(links.length === 0 ? 'webtransport' : 'websocket');
      links.push(link);
      return link;
    },
    solve: async () => new Uint8Array(8),
    onEvent: (e) => events.push(e),
    sleep: async () => {},
    ...options,
  });
  return { chat, links, events };
}

test('reconnect delays double up to 8 s with at most half again of jitter', () => {
  assert.equal(backoff(0, () => 0), 500);
  assert.equal(backoff(1, () => 0), 1000);
  assert.equal(backoff(10, () => 0), 8000);
  assert.equal(backoff(10, () => 0.999), 11996);
});

test('the driver connects, reports the transport, joins, and resumes on a new link after a loss', async () => {
  const { chat, links, events } = started();
  await settle();
  const [first] = links;
  assert.deepEqual(first.sent, [{ type: 'HELLO', version: 1, role: 'client' }]);
  first.frame({ type: 'WELCOME', version: 1, role: 'client', topics: 0, languages: ['nl'], powDifficulty: 0, powChallenge: new Uint8Array(16) });
  chat.join(null, 'nl');
  await settle();
  assert.equal(first.sent.at(-1).type, 'JOIN');
  first.frame({ type: 'JOINED', resume: new Uint8Array(32).fill(4) });
  first.frame({ type: 'QUEUED', position: 1, estimatedWaitSecs: null });
  first.end({ code: null }); // lost, no close
  await settle();
  const second = links[1];
  assert.deepEqual(second.sent, [{ type: 'RESUME', capability: new Uint8Array(32).fill(4) }]);
  second.frame({ type: 'QUEUED', position: 1, estimatedWaitSecs: null });
  assert.deepEqual(
    events.map((e) => e.event),
    ['transport', 'connected', 'queued', 'reconnecting', 'transport', 'resumed', 'queued'],
  );
  assert.deepEqual(events.filter((e) => e.event === 'transport').map((e) => e.transport), ['webtransport', 'websocket']);
  chat.end();
  assert.equal(second.closedWith, 'NO_ERROR');
  assert.equal(events.at(-1).event, 'ended');
  assert.equal(events.at(-1).reason, 'left_queue');
});

test('a relay that closes with a stop code ends the chat without reconnecting', async () => {
  const { links, events } = started();
  await settle();
  links[0].end({ code: 'UNSUPPORTED_VERSION' });
  await settle();
  assert.equal(links.length, 1, 'no reconnect');
  assert.deepEqual(events.at(-1), { event: 'error', v: 1, message: 'the relay closed the connection', fatal: true, code: 'unsupported_version' });
});

test('an unreachable relay is given up after its attempts', async () => {
  let tries = 0;
  const connect = async () => {
    tries++;
    throw new Error('refused');
  };
  const { events } = started({ connect, maxAttempts: 3 });
  await settle();
  assert.equal(tries, 4);
  assert.equal(events.at(-1).code, 'unreachable');
});

test('a relay restarting ends the wait with relay_shutdown, not an error', async () => {
  const { links, events } = started();
  await settle();
  links[0].end({ code: 'SHUTTING_DOWN' });
  await settle();
  assert.deepEqual(events.at(-1), { event: 'ended', v: 1, reason: 'relay_shutdown' });
  assert.equal(links.length, 1);
});

test('a relay that drains (leaves its cluster) is left for another, where the wait resumes', async () => {
  const { chat, links, events } = started();
  await settle();
  const [first] = links;
  first.frame({ type: 'WELCOME', version: 1, role: 'client', topics: 0, languages: ['nl'], powDifficulty: 0, powChallenge: new Uint8Array(16) });
  chat.join(null, 'nl');
  await settle();
  first.frame({ type: 'JOINED', resume: new Uint8Array(32).fill(4) });
  first.end({ code: 'DRAINING' });
  await settle();
  assert.equal(links.length, 2, 'a new link, through the page to the next relay');
  assert.deepEqual(links[1].sent[0], { type: 'RESUME', capability: new Uint8Array(32).fill(4) });
  assert.ok(!events.some((e) => e.event === 'error' || e.event === 'ended'), JSON.stringify(events));
  chat.end();
});
