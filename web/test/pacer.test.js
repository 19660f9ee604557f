// The sender's pacing rule of §8.1, on a clock the test moves.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Pacer } from '../src/pacer.js';

function pacer() {
  const clock = { ms: 0, timers: [] };
  const sent = [];
  const p = new Pacer({
    send: (f) => sent.push(f),
    now: () => clock.ms,
    setTimer: (fn, ms) => {
      const t = { fn, at: clock.ms + ms };
      clock.timers.push(t);
      return t;
    },
    clearTimer: (t) => (clock.timers = clock.timers.filter((x) => x !== t)),
  });
  const advance = (ms) => {
    clock.ms += ms;
    for (const t of clock.timers.filter((x) => x.at <= clock.ms)) {
      clock.timers = clock.timers.filter((x) => x !== t);
      t.fn();
    }
  };
  return { p, sent, advance };
}

const forward = (n) => ({ type: 'FORWARD', chat: 1, n });

test('64 FORWARD frames go at once, then 32 a second', () => {
  const { p, sent, advance } = pacer();
  for (let i = 0; i < 100; i++) p.push(forward(i));
  assert.equal(sent.length, 64);
  advance(500);
  assert.equal(sent.length, 80);
  advance(500);
  assert.equal(sent.length, 96);
  advance(200);
  assert.equal(sent.length, 100);
  assert.deepEqual(sent.map((f) => f.n), [...Array(100).keys()], 'in order');
});

test('an END waits behind the messages before it', () => {
  const { p, sent, advance } = pacer();
  for (let i = 0; i < 70; i++) p.push(forward(i));
  p.push({ type: 'END', chat: 1, reason: 'user_ended' });
  assert.equal(sent.at(-1).type, 'FORWARD');
  advance(1000);
  assert.equal(sent.at(-1).type, 'END');
  assert.equal(sent.length, 71);
});

test('other frames: 40 at once, then 5 a second; clear drops what waits', () => {
  const { p, sent, advance } = pacer();
  for (let i = 0; i < 45; i++) p.push({ type: 'PROOF', solution: new Uint8Array(8) });
  assert.equal(sent.length, 40);
  advance(1000);
  assert.equal(sent.length, 45);
  p.push({ type: 'PROOF', solution: new Uint8Array(8) });
  p.clear();
  advance(5000);
  assert.equal(sent.length, 45);
});

test('at the end, what waits goes at once', () => {
  const { p, sent } = pacer();
  for (let i = 0; i < 70; i++) p.push(forward(i));
  p.push({ type: 'END', chat: 1, reason: 'user_ended' });
  p.sendAll();
  assert.equal(sent.length, 71);
  assert.equal(sent.at(-1).type, 'END');
});
