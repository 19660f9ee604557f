// The young person's end-to-end side against proto/vectors: the whole
// handshake of handshake.json from the client's fixed keys, the transport
// messages both ways and the replay, every certificate rejection, and the
// content rules of content.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { Handshake } from '../src/noise.js';
import {
  ClientSession,
  SecurityFailure,
  pad,
  unpad,
  parseCertificate,
  parseContent,
  prologue,
  textChunks,
  verifyCertificate,
  MESSAGE_2_PAYLOAD,
} from '../src/e2e.js';
import { hexToBytes as fromHex, bytesToHex as toHex } from '@noble/hashes/utils.js';

const vectors = (name) =>
  JSON.parse(readFileSync(new URL(`../../proto/vectors/${name}`, import.meta.url), 'utf8'));

const hs = vectors('handshake.json');
const inputs = hs.inputs;

function session() {
  return new ClientSession({
    orgKey: fromHex(inputs.org_public_key),
    pairingId: fromHex(inputs.pairing_id),
    ephemeralKey: fromHex(inputs.client_ephemeral_secret),
  });
}

const reason = (fn) => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof SecurityFailure, String(e));
    return e.reason;
  }
  return 'accepted';
};

test('the prologue and handshake message 1 are those of the vector', () => {
  const p = prologue(fromHex(inputs.org_public_key), fromHex(inputs.pairing_id));
  assert.equal(toHex(p), hs.prologue.hex);
  assert.equal(toHex(session().start()), hs.message_1.hex);
});

test('message 2 verifies: the counsellor is Sam, then the transport messages both ways', () => {
  const s = session();
  s.start();
  const counsellor = s.finish(fromHex(hs.message_2.hex), inputs.now_unix);
  assert.equal(counsellor.pseudonym, 'Sam');
  const [toCounsellor1, toClient1, toCounsellor2] = hs.transport;
  const hoi = s.seal(textChunks('Hoi')[0]);
  assert.equal(toHex(hoi.blob), toCounsellor1.hex, 'client seq 0');
  assert.deepEqual(s.open(fromHex(toClient1.hex)), { kind: 'text', final: true, text: 'Hallo, ik ben Sam.' });
  assert.equal(toHex(s.seal(textChunks('')[0]).blob), toCounsellor2.hex, 'client seq 1');
  assert.equal(s.open(fromHex(toClient1.hex)), 'duplicate', 'the same blob again is dropped');
});

test('the counsellor side of the vector, through this responder, gives the same bytes', () => {
  const counsellor = new Handshake({
    initiator: false,
    prologue: fromHex(hs.prologue.hex),
    staticKey: fromHex(inputs.counsellor_static_secret),
    ephemeralKey: fromHex(inputs.counsellor_ephemeral_secret),
  });
  counsellor.readMessage(fromHex(hs.message_1.hex));
  const cert = fromHex(inputs.certificate);
  assert.equal(toHex(counsellor.writeMessage(pad(cert, MESSAGE_2_PAYLOAD))), hs.message_2.hex);
  const { receive } = counsellor.split();
  const t = hs.transport[0];
  const plain = receive.decryptAt(0n, new Uint8Array(0), fromHex(t.hex).subarray(8));
  assert.equal(toHex(plain.subarray(0, 16)), hs.transport_plaintext_1);
});

test('the replay of the vector is dropped unread by a receiver that has it', () => {
  assert.equal(hs.replay.expected, 'dropped');
  const s = session();
  s.start();
  s.finish(fromHex(hs.message_2.hex), inputs.now_unix);
  assert.deepEqual(s.open(fromHex(hs.transport[1].hex)).kind, 'text');
  // The client's own replay would be the counsellor's to drop; a receiver
  // drops any sequence number below its next, as here.
  assert.equal(s.open(fromHex(hs.transport[1].hex)), 'duplicate');
  const ahead = fromHex(hs.transport[1].hex);
  ahead[7] = 5;
  assert.equal(s.open(ahead), 'gap', 'a later one waits for the missing ones');
});

test('a message 2 for another pairing, another organisation or a tampered one is a security failure', () => {
  const other = new ClientSession({
    orgKey: fromHex(inputs.org_public_key),
    pairingId: new Uint8Array(16),
    ephemeralKey: fromHex(inputs.client_ephemeral_secret),
  });
  other.start();
  assert.equal(reason(() => other.finish(fromHex(hs.message_2.hex), inputs.now_unix)), 'handshake_failed');
  const tampered = fromHex(hs.message_2.hex);
  tampered[100] ^= 0x01;
  const s = session();
  s.start();
  assert.equal(reason(() => s.finish(tampered, inputs.now_unix)), 'handshake_failed');
  const late = session();
  late.start();
  assert.equal(reason(() => late.finish(fromHex(hs.message_2.hex), 4_000_000_000)), 'expired');
});

test('every certificate rejection of certificate.json is refused, and the valid one passes', () => {
  const c = vectors('certificate.json');
  const now = 1_800_000_000;
  const valid = parseCertificate(fromHex(c.certificate.hex));
  assert.equal(valid.pseudonym, 'Sam');
  verifyCertificate(valid, fromHex(c.org_public_key), now);
  assert.ok(c.rejections.length >= 4);
  for (const r of c.rejections) {
    const why = reason(() => verifyCertificate(parseCertificate(fromHex(r.certificate)), fromHex(r.pinned_org_key), now));
    assert.notEqual(why, 'accepted', r.name);
  }
  assert.equal(reason(() => verifyCertificate(valid, new Uint8Array(32).fill(7), now)), 'wrong_organisation');
  assert.equal(reason(() => verifyCertificate(valid, fromHex(c.org_public_key), Number(valid.notBefore) - 301)), 'not_yet_valid');
  assert.equal(reason(() => parseCertificate(fromHex(c.certificate.hex + '00'))), 'malformed_certificate');
});

test('content is accepted or refused as content.json says', () => {
  for (const v of vectors('content.json').vectors) {
    const verdict = reason(() => parseContent(fromHex(v.content)));
    assert.equal(verdict === 'accepted', v.accepted, `${v.name}: ${verdict}`);
  }
});

test('padding round trips and rejects what §6.3 says', () => {
  const content = new Uint8Array([1, 2, 3]);
  assert.deepEqual(unpad(pad(content, 1008)), content);
  const bad = pad(content, 1008);
  bad[500] = 1;
  assert.equal(reason(() => unpad(bad)), 'bad_padding');
  const long = pad(content, 1008);
  long[0] = 0x03;
  long[1] = 0xef; // 1007 > 1006
  assert.equal(reason(() => unpad(long)), 'bad_padding');
});

test('long text is cut into chunks at character boundaries, final on the last', () => {
  const text = 'é'.repeat(1500); // 3000 bytes, two-byte characters
  const chunks = textChunks(text);
  assert.equal(chunks.length, 3);
  const parsed = chunks.map((c) => parseContent(c));
  assert.deepEqual(parsed.map((p) => p.final), [false, false, true]);
  assert.equal(parsed.map((p) => p.text).join(''), text);
  assert.ok(chunks.every((c) => c.length - 2 <= 1004));
  assert.throws(() => textChunks('x'.repeat(16385)), RangeError);
});
