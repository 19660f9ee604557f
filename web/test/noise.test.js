// Noise_NX_25519_ChaChaPoly_SHA256 against the shared vectors
// (../shared/vectors, or FLUISTER_SHARED_VECTORS): as the initiator and as
// the responder, every handshake and transport message byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';

import { Handshake, NoiseError } from '../src/noise.js';
import { hexToBytes as fromHex, bytesToHex as toHex } from '@noble/hashes/utils.js';


function sharedVectors() {
  const dir = process.env.FLUISTER_SHARED_VECTORS ?? new URL('../../../shared/vectors/', import.meta.url).pathname;
  const file = `${dir.replace(/\/?$/, '/')}noise-nx-25519-chachapoly-sha256.json`;
  assert.ok(existsSync(file), `the shared Noise vectors are missing: ${file}`);
  return JSON.parse(readFileSync(file, 'utf8')).vectors;
}

/**
 * Runs one vector from `side`: this side writes its own messages (which
 * must equal the vector's ciphertexts) and reads the other side's.
 */
function run(v, side) {
  const initiator = side === 'initiator';
  const hs = new Handshake({
    initiator,
    prologue: fromHex(initiator ? v.init_prologue : v.resp_prologue),
    staticKey: initiator ? undefined : fromHex(v.resp_static),
    ephemeralKey: fromHex(initiator ? v.init_ephemeral : v.resp_ephemeral),
  });
  let transport = null;
  v.messages.forEach((m, i) => {
    const fromInitiator = i % 2 === 0;
    const mine = fromInitiator === initiator;
    if (i < 2) {
      if (mine) assert.equal(toHex(hs.writeMessage(fromHex(m.payload))), m.ciphertext, `message ${i}`);
      else assert.equal(toHex(hs.readMessage(fromHex(m.ciphertext))), m.payload, `message ${i}`);
      if (i === 1) {
        transport = hs.split();
        // (The snow vectors carry no handshake hash.)
        if (v.handshake_hash) assert.equal(toHex(transport.handshakeHash), v.handshake_hash);
      }
      return;
    }
    if (mine) {
      const ct = transport.send.encryptWithAd(new Uint8Array(0), fromHex(m.payload));
      assert.equal(toHex(ct), m.ciphertext, `message ${i}`);
    } else {
      const pt = transport.receive.decryptWithAd(new Uint8Array(0), fromHex(m.ciphertext));
      assert.equal(toHex(pt), m.payload, `message ${i}`);
    }
  });
}

test('every shared NX vector passes from the initiator side', () => {
  const vectors = sharedVectors();
  assert.ok(vectors.length > 0);
  for (const v of vectors) run(v, 'initiator');
  assert.ok(vectors.some((v) => v.handshake_hash), 'some vectors check the handshake hash');
});

test('every shared NX vector passes from the responder side', () => {
  for (const v of sharedVectors()) run(v, 'responder');
});

test('the initiator learns and authenticates the responder static key', () => {
  const v = sharedVectors()[0];
  const init = new Handshake({ initiator: true, prologue: fromHex(v.init_prologue) });
  const resp = new Handshake({ initiator: false, prologue: fromHex(v.resp_prologue), staticKey: fromHex(v.resp_static) });
  resp.readMessage(init.writeMessage(new Uint8Array(0)));
  const m2 = resp.writeMessage(new Uint8Array([1, 2, 3]));
  assert.deepEqual(init.readMessage(m2), new Uint8Array([1, 2, 3]));
  assert.ok(init.remoteStatic);
  const a = init.split();
  const b = resp.split();
  assert.deepEqual(a.handshakeHash, b.handshakeHash);
  const ct = a.send.encryptAt(7n, new Uint8Array(0), new Uint8Array([9]));
  assert.deepEqual(b.receive.decryptAt(7n, new Uint8Array(0), ct), new Uint8Array([9]));
});

test('a different prologue, a flipped bit or a low-order key fails the handshake', () => {
  const v = sharedVectors()[0];
  const pair = (initPrologue) => {
    const init = new Handshake({ initiator: true, prologue: initPrologue });
    const resp = new Handshake({ initiator: false, prologue: fromHex(v.resp_prologue), staticKey: fromHex(v.resp_static) });
    resp.readMessage(init.writeMessage(new Uint8Array(0)));
    return { init, m2: resp.writeMessage(new Uint8Array(0)) };
  };
  const other = pair(new Uint8Array([1, 2, 3]));
  assert.throws(() => other.init.readMessage(other.m2), NoiseError, 'another prologue');
  const flipped = pair(fromHex(v.init_prologue));
  flipped.m2[40] ^= 1;
  assert.throws(() => flipped.init.readMessage(flipped.m2), NoiseError, 'tampered');
  const low = new Handshake({ initiator: true, prologue: new Uint8Array(0) });
  low.writeMessage(new Uint8Array(0));
  const zeroPoint = new Uint8Array(32 + 48 + 16);
  assert.throws(() => low.readMessage(zeroPoint), NoiseError, 'the all-zero point');
});
