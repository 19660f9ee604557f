// The frame codec against proto/vectors: every vector decodes and encodes
// back to the same bytes, the label vectors agree with the label rule, and
// what §4.1 tells a receiver to reject is rejected with the right code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  FrameDecoder,
  FrameError,
  TYPES,
  decodeFrame,
  encodeFrame,
  isLabel,
} from '../src/frames.js';
import { hexToBytes as fromHex, bytesToHex as toHex } from '@noble/hashes/utils.js';

const vectors = (name) =>
  JSON.parse(readFileSync(new URL(`../../proto/vectors/${name}`, import.meta.url), 'utf8'));

const frameVectors = vectors('frames.json').vectors;

test('every frame vector decodes to its type and encodes back to the same bytes', () => {
  const seen = new Set();
  for (const v of frameVectors) {
    const bytes = fromHex(v.hex);
    assert.equal(bytes.length, v.length, v.name);
    const frame = decodeFrame(bytes);
    assert.equal(frame.type, v.name.split(' ')[0], v.name);
    assert.equal(toHex(encodeFrame(frame)), v.hex, v.name);
    seen.add(frame.type);
  }
  assert.deepEqual([...seen].sort(), Object.keys(TYPES).sort(), 'a vector for every type');
});

test('decoded fields carry what the vectors annotate', () => {
  const byName = Object.fromEntries(frameVectors.map((v) => [v.name, decodeFrame(fromHex(v.hex))]));
  assert.deepEqual(byName['HELLO (client)'], { type: 'HELLO', version: 1, role: 'client' });
  const queued = byName.QUEUED;
  const field = (name, f) => frameVectors.find((v) => v.name === name).fields.find((x) => x.field === f);
  assert.equal(queued.position, parseInt(field('QUEUED', 'position').hex, 16));
  const paired = byName['PAIRED (to the client)'];
  assert.equal(paired.topic, null, 'the young person learns no topic');
  assert.equal(paired.language, null);
  assert.equal(byName['END (transferred)'].reason, 'transferred');
  assert.equal(byName['UNAVAILABLE (closed)'].reason, 'closed');
  assert.equal(typeof byName['UNAVAILABLE (closed)'].nextOpen, 'bigint');
  assert.equal(byName.TOPIC.id, parseInt(field('TOPIC', 'id').hex, 16));
});

test('the label rule agrees with every label vector', () => {
  for (const v of vectors('labels.json').vectors) {
    const bytes = fromHex(v.utf8);
    let text;
    try {
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
    } catch {
      assert.equal(v.valid, false, `${v.name}: not UTF-8, so not a label`);
      continue;
    }
    assert.equal(isLabel(text), v.valid, v.name);
  }
});

/** The close code decoding `bytes` fails with. */
function rejection(bytes) {
  try {
    decodeFrame(bytes);
  } catch (e) {
    assert.ok(e instanceof FrameError, String(e));
    return e.closeCode;
  }
  return 'accepted';
}

const vector = (name) => fromHex(frameVectors.find((v) => v.name === name).hex);
const withByte = (bytes, at, value) => {
  const copy = bytes.slice();
  copy[at] = value;
  return copy;
};

test('a receiver rejects what §4.1 and §4.2 say it must', () => {
  const hello = vector('HELLO (client)');
  assert.equal(rejection(withByte(hello, 0, 0x7f)), 'MALFORMED_FRAME', 'unknown type');
  assert.equal(rejection(Uint8Array.of(0x05, 0x04, 0x0d)), 'FRAME_TOO_LARGE', 'length 1037');
  assert.equal(rejection(Uint8Array.of(0x01, 0x00, 0x03, 1, 1, 0)), 'MALFORMED_FRAME', 'HELLO of 3');
  assert.equal(rejection(withByte(hello, 4, 0x03)), 'MALFORMED_FRAME', 'role 3');
  assert.equal(rejection(hello.subarray(0, 4)), 'MALFORMED_FRAME', 'half a frame');
  const queued = vector('QUEUED');
  assert.equal(rejection(withByte(withByte(withByte(withByte(queued, 3, 0), 4, 0), 5, 0), 6, 0)), 'MALFORMED_FRAME', 'position 0');
  const end = vector('END (user)');
  assert.equal(rejection(withByte(end, 7, 0x04)), 'MALFORMED_FRAME', 'unknown END reason');
  assert.equal(rejection(withByte(withByte(withByte(withByte(end, 3, 0), 4, 0), 5, 0), 6, 0)), 'MALFORMED_FRAME', 'chat 0');
  const welcome = vector('WELCOME');
  assert.equal(rejection(withByte(welcome, 22, 21)), 'MALFORMED_FRAME', 'difficulty 21');
  assert.equal(rejection(withByte(welcome, 21, 0x61)), 'MALFORMED_FRAME', 'a used unused language slot');
  const topic = vector('TOPIC');
  assert.equal(rejection(withByte(topic, 134, 0x41)), 'MALFORMED_FRAME', 'label padding not zero');
  assert.equal(rejection(withByte(topic, 6, 0x0a)), 'MALFORMED_FRAME', 'a newline in a label');
  assert.equal(rejection(withByte(vector('RESUME_FAILED'), 3, 1)), 'MALFORMED_FRAME', 'reason not 0');
});

test('the stream decoder cuts frames wherever the reads end, and stops at a bad one', () => {
  const stream = [vector('WELCOME'), vector('TOPIC'), vector('QUEUED'), vector('FORWARD')];
  const all = Uint8Array.from(stream.flatMap((f) => [...f]));
  for (const step of [1, 2, 3, 7, 100, all.length]) {
    const decoder = new FrameDecoder();
    const types = [];
    for (let at = 0; at < all.length; at += step) {
      const { frames, error } = decoder.push(all.subarray(at, at + step));
      assert.equal(error, null);
      types.push(...frames.map((f) => f.type));
    }
    assert.deepEqual(types, ['WELCOME', 'TOPIC', 'QUEUED', 'FORWARD'], `reads of ${step}`);
  }
  const decoder = new FrameDecoder();
  const bad = Uint8Array.from([...vector('QUEUED'), 0x7f, 0, 0]);
  const { frames, error } = decoder.push(bad);
  assert.deepEqual(frames.map((f) => f.type), ['QUEUED'], 'what came before is kept');
  assert.equal(error?.closeCode, 'MALFORMED_FRAME');
  assert.equal(decoder.push(vector('QUEUED')).error, error, 'nothing after it');
  // A too-large header is judged before its body arrives.
  assert.equal(new FrameDecoder().push(Uint8Array.of(0x05, 0xff, 0xff)).error?.closeCode, 'FRAME_TOO_LARGE');
});

test('encoding refuses what no receiver would accept', () => {
  assert.throws(() => encodeFrame({ type: 'HELLO', role: 'admin' }), TypeError);
  assert.throws(() => encodeFrame({ type: 'END', chat: 0, reason: 'user_ended' }), TypeError);
  assert.throws(() => encodeFrame({ type: 'FORWARD', chat: 1, blob: new Uint8Array(10) }), TypeError);
  assert.throws(() => encodeFrame({ type: 'JOIN', topic: null, language: 'NL', powSolution: new Uint8Array(8) }), TypeError);
  assert.throws(() => encodeFrame({ type: 'TOPIC', id: 1, labelNl: ' x', labelEn: 'x' }), TypeError);
});
