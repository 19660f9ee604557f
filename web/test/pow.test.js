// The proof of work of §8.1: solutions verify, the bit order is bit 7 of
// byte 0 first, and a solver can be stopped.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { leadingZeroBits, powValid, solve } from '../src/pow.js';

test('zero bits count from bit 7 of byte 0', () => {
  assert.equal(leadingZeroBits(Uint8Array.of(0x80)), 0);
  assert.equal(leadingZeroBits(Uint8Array.of(0x01)), 7);
  assert.equal(leadingZeroBits(Uint8Array.of(0x00, 0x40)), 9);
  assert.equal(leadingZeroBits(new Uint8Array(4)), 32);
});

test('a solution at difficulty 0 to 14 verifies, and fails at a higher difficulty', async () => {
  const challenge = Uint8Array.from({ length: 16 }, (_, i) => i * 7);
  for (const d of [0, 1, 8, 14]) {
    const s = await solve(challenge, d);
    assert.ok(powValid(challenge, d, s), `difficulty ${d}`);
  }
  // The first solution at 14 bits, counted up from 0, fails at a
  // difficulty its hash does not reach.
  const s = await solve(challenge, 14);
  let bits = 14;
  while (powValid(challenge, bits + 1, s)) bits++;
  assert.ok(!powValid(challenge, bits + 1, s));
});

test('a solver stops when asked', async () => {
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(solve(new Uint8Array(16), 20, { signal: controller.signal }));
  await assert.rejects(solve(new Uint8Array(16), 21), RangeError);
});
