// The young person's state machine, driven as a page drives it, against a
// relay played by the test and a counsellor made of this library's Noise
// responder with the keys of proto/vectors/handshake.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { YoungPersonClient } from '../src/client.js';
import { Handshake } from '../src/noise.js';
import { pad, unpad, parseContent, textChunks, ackContent, MESSAGE_2_PAYLOAD, TRANSPORT_PLAINTEXT } from '../src/e2e.js';
import { solve, powValid } from '../src/pow.js';
import { hexToBytes as fromHex } from '@noble/hashes/utils.js';

const hs = JSON.parse(readFileSync(new URL('../../proto/vectors/handshake.json', import.meta.url), 'utf8'));
const inputs = hs.inputs;

/** Everything the client wants sent, and every event, drained. */
function drain(client) {
  const sent = [];
  const events = [];
  for (let f; (f = client.pollTransmit()); ) sent.push(f);
  for (let e; (e = client.pollEvent()); ) events.push(e);
  return { sent, events };
}

/** The counsellor's end of the chat, on the vector's keys. */
class Counsellor {
  constructor(pairingId) {
    const prologueHex = hs.prologue.hex.slice(0, -32) + Buffer.from(pairingId).toString('hex');
    this.hs = new Handshake({ initiator: false, prologue: fromHex(prologueHex), staticKey: fromHex(inputs.counsellor_static_secret) });
    this.nextSend = 0n;
  }
  answer(message1) {
    this.hs.readMessage(message1);
    const m2 = this.hs.writeMessage(pad(fromHex(inputs.certificate), MESSAGE_2_PAYLOAD));
    ({ send: this.send, receive: this.receive } = this.hs.split());
    return m2;
  }
  seal(content) {
    const seq = this.nextSend++;
    const blob = new Uint8Array(1032);
    new DataView(blob.buffer).setBigUint64(0, seq);
    blob.set(this.send.encryptAt(seq, new Uint8Array(0), pad(content, TRANSPORT_PLAINTEXT)), 8);
    return blob;
  }
  open(blob) {
    const seq = new DataView(blob.buffer, blob.byteOffset).getBigUint64(0);
    return parseContent(unpad(this.receive.decryptAt(seq, new Uint8Array(0), blob.subarray(8))));
  }
}

const welcome = { type: 'WELCOME', version: 1, role: 'client', topics: 1, languages: ['nl', 'en'], powDifficulty: 8, powChallenge: new Uint8Array(16).fill(3) };
const topic = { type: 'TOPIC', id: 4, labelNl: 'Geld verdienen', labelEn: 'Making money' };
const pairingId = fromHex(inputs.pairing_id);

/** A client that has chosen, solved and joined. */
async function joined(orgKey = fromHex(inputs.org_public_key)) {
  const client = new YoungPersonClient({ orgKey, now: () => inputs.now_unix });
  client.connected();
  assert.deepEqual(drain(client).sent, [{ type: 'HELLO', version: 1, role: 'client' }]);
  client.handleFrame(welcome);
  assert.deepEqual(drain(client).events, [], 'not before its topics');
  client.handleFrame(topic);
  const { events } = drain(client);
  assert.deepEqual(events, [{ event: 'connected', v: 1, topics: [{ id: 4, nl: 'Geld verdienen', en: 'Making money' }], languages: ['nl', 'en'] }]);
  client.join(4, 'nl');
  const work = client.pollWork();
  assert.equal(work.purpose, 'join');
  const solution = await solve(work.challenge, work.difficulty);
  client.joinWith(solution);
  const [join] = drain(client).sent;
  assert.equal(join.type, 'JOIN');
  assert.equal(join.topic, 4);
  assert.equal(join.language, 'nl');
  assert.ok(powValid(welcome.powChallenge, 8, join.powSolution));
  client.handleFrame({ type: 'JOINED', resume: new Uint8Array(32).fill(9) });
  client.handleFrame({ type: 'QUEUED', position: 2, estimatedWaitSecs: null });
  client.handleFrame({ type: 'QUEUED', position: 1, estimatedWaitSecs: 45 });
  assert.deepEqual(drain(client).events, [
    { event: 'queued', v: 1, position: 2 },
    { event: 'queued', v: 1, position: 1, estimated_wait_secs: 45 },
  ]);
  return client;
}

test('a young person joins, is paired with a verified Sam, and the chat goes both ways with delivered marks', async () => {
  const client = await joined();
  const early = client.send('Hallo?'); // typed while waiting: held
  client.handleFrame({ type: 'PAIRED', chat: 1, pairingId, resume: new Uint8Array(32).fill(5), topic: null, language: null });
  const [m1] = drain(client).sent;
  assert.equal(m1.type, 'FORWARD');
  const sam = new Counsellor(pairingId);
  client.handleFrame({ type: 'FORWARD', chat: 1, blob: sam.answer(m1.blob) });
  let out = drain(client);
  assert.deepEqual(out.events, [{ event: 'paired', v: 1, counsellor: 'Sam' }, { event: 'sent', v: 1, id: early }]);
  assert.deepEqual(sam.open(out.sent[0].blob), { kind: 'text', final: true, text: 'Hallo?' });

  const id = client.send('Ik weet niet wat ik moet doen');
  out = drain(client);
  assert.deepEqual(out.events, [{ event: 'sent', v: 1, id }]);
  assert.equal(sam.open(out.sent[0].blob).text, 'Ik weet niet wat ik moet doen');
  client.handleFrame({ type: 'FORWARD', chat: 1, blob: sam.seal(ackContent(1n)) });
  assert.deepEqual(drain(client).events, [{ event: 'delivered', v: 1, id: early }]);
  for (const chunk of textChunks('Fijn dat je schrijft.')) client.handleFrame({ type: 'FORWARD', chat: 1, blob: sam.seal(chunk) });
  assert.deepEqual(drain(client).events, [{ event: 'message', v: 1, text: 'Fijn dat je schrijft.' }]);
  client.tick();
  const ack = drain(client).sent;
  assert.equal(ack.length, 1, 'one ACK on the tick');
  assert.deepEqual(sam.open(ack[0].blob), { kind: 'ack', upTo: 2n });
  client.tick();
  assert.equal(drain(client).sent.length, 0, 'nothing owed, nothing sent');

  client.handleFrame({ type: 'END', chat: 1, reason: 'user_ended' });
  assert.deepEqual(drain(client).events, [
    { event: 'not_delivered', v: 1, id },
    { event: 'ended', v: 1, reason: 'peer_ended' },
  ]);
  assert.equal(client.session, null, 'keys wiped');
  assert.equal(client.ticket, null);
});

test('a message 2 from another organisation ends with END(SECURITY_FAILURE) and nothing else', async () => {
  const client = await joined(new Uint8Array(32).fill(8));
  client.send('niet versturen');
  client.handleFrame({ type: 'PAIRED', chat: 1, pairingId, resume: new Uint8Array(32), topic: null, language: null });
  const [m1] = drain(client).sent;
  client.handleFrame({ type: 'FORWARD', chat: 1, blob: new Counsellor(pairingId).answer(m1.blob) });
  const { sent, events } = drain(client);
  assert.deepEqual(sent, [{ type: 'END', chat: 1, reason: 'security_failure' }]);
  assert.equal(events.at(-1).event, 'ended');
  assert.equal(events.at(-1).reason, 'security_failure');
  assert.ok(events.some((e) => e.event === 'not_delivered'), 'the held line never left');
});

test('outside opening hours the young person hears when the chat opens', async () => {
  const client = await joined();
  client.handleFrame({ type: 'UNAVAILABLE', reason: 'closed', nextOpen: 1_800_003_600n });
  assert.deepEqual(drain(client).events, [{ event: 'closed', v: 1, next_open: 1_800_003_600 }]);
  const busy = await joined();
  busy.handleFrame({ type: 'UNAVAILABLE', reason: 'busy', nextOpen: null });
  assert.deepEqual(drain(busy).events, [{ event: 'ended', v: 1, reason: 'busy' }]);
});

test('a transfer keeps the young person and shows the new counsellor', async () => {
  const client = await joined();
  client.handleFrame({ type: 'PAIRED', chat: 1, pairingId, resume: new Uint8Array(32), topic: null, language: null });
  client.handleFrame({ type: 'FORWARD', chat: 1, blob: new Counsellor(pairingId).answer(drain(client).sent[0].blob) });
  drain(client);
  client.handleFrame({ type: 'END', chat: 1, reason: 'transferred' });
  client.handleFrame({ type: 'QUEUED', position: 1, estimatedWaitSecs: null });
  client.handleFrame({ type: 'PAIRED', chat: 2, pairingId, resume: new Uint8Array(32), topic: null, language: null });
  const [m1] = drain(client).sent;
  client.handleFrame({ type: 'FORWARD', chat: 2, blob: new Counsellor(pairingId).answer(m1.blob) });
  assert.deepEqual(drain(client).events, [{ event: 'transferred', v: 1, counsellor: 'Sam' }]);
});

/** A client in a chat with Sam, both sides ready. */
async function chatting() {
  const client = await joined();
  client.handleFrame({ type: 'PAIRED', chat: 1, pairingId, resume: new Uint8Array(32).fill(5), topic: null, language: null });
  const sam = new Counsellor(pairingId);
  client.handleFrame({ type: 'FORWARD', chat: 1, blob: sam.answer(drain(client).sent[0].blob) });
  drain(client);
  return { client, sam };
}

test('a chat resumes after a lost connection: RESUME with the capability, then what was not acknowledged again', async () => {
  const { client, sam } = await chatting();
  const a = client.send('eerste');
  const b = client.send('tweede');
  const [first, second] = drain(client).sent;
  assert.equal(sam.open(first.blob).text, 'eerste');
  client.handleFrame({ type: 'FORWARD', chat: 1, blob: sam.seal(ackContent(1n)) });
  assert.deepEqual(drain(client).events, [{ event: 'delivered', v: 1, id: a }]);

  client.lost();
  assert.deepEqual(drain(client).events, [{ event: 'reconnecting', v: 1, reason: 'lost' }]);
  client.connected();
  assert.deepEqual(drain(client).sent, [{ type: 'RESUME', capability: new Uint8Array(32).fill(5) }]);
  client.handleFrame({ type: 'RESUMED', chat: 3 });
  const { sent, events } = drain(client);
  assert.deepEqual(events, [{ event: 'resumed', v: 1 }]);
  assert.equal(sent.length, 1, 'only what Sam has not acknowledged');
  assert.equal(sent[0].chat, 3, 'under the new chat number');
  assert.deepEqual(sent[0].blob, second.blob, 'the same blob: same sequence number and keys');
  assert.equal(sam.open(sent[0].blob).text, 'tweede');
  client.handleFrame({ type: 'FORWARD', chat: 3, blob: sam.seal(ackContent(2n)) });
  assert.deepEqual(drain(client).events, [{ event: 'delivered', v: 1, id: b }]);
});

test('the counsellor coming back gets what it has not acknowledged again', async () => {
  const { client } = await chatting();
  client.send('ben je er nog?');
  const [original] = drain(client).sent;
  client.handleFrame({ type: 'PEER_AWAY', chat: 1 });
  client.handleFrame({ type: 'PEER_BACK', chat: 1 });
  const { sent, events } = drain(client);
  assert.deepEqual(events.map((e) => e.event), ['peer_away', 'peer_back']);
  assert.deepEqual(sent, [original]);
});

test('a handshake resumes with message 1 again', async () => {
  const client = await joined();
  client.handleFrame({ type: 'PAIRED', chat: 1, pairingId, resume: new Uint8Array(32).fill(6), topic: null, language: null });
  const [m1] = drain(client).sent;
  client.lost();
  client.connected();
  assert.equal(drain(client).sent[0].type, 'RESUME');
  client.handleFrame({ type: 'RESUMED', chat: 2 });
  const { sent } = drain(client);
  assert.deepEqual(sent, [{ type: 'FORWARD', chat: 2, blob: m1.blob }]);
  client.handleFrame({ type: 'FORWARD', chat: 2, blob: new Counsellor(pairingId).answer(m1.blob) });
  assert.deepEqual(drain(client).events, [{ event: 'paired', v: 1, counsellor: 'Sam' }]);
});

test('a waiting young person comes back to its place with its ticket, or hears the chat ended while away', async () => {
  const client = await joined();
  client.lost();
  client.connected();
  const away = drain(client);
  assert.deepEqual(away.sent, [{ type: 'RESUME', capability: new Uint8Array(32).fill(9) }]);
  assert.deepEqual(away.events.map((e) => e.event), ['reconnecting']);
  client.handleFrame({ type: 'QUEUED', position: 1, estimatedWaitSecs: null });
  assert.deepEqual(drain(client).events.map((e) => e.event), ['resumed', 'queued']);

  const { client: gone } = await chatting();
  gone.send('weg?');
  gone.lost();
  gone.connected();
  gone.handleFrame({ type: 'RESUME_FAILED' });
  const events = drain(gone).events.map((e) => e.event + (e.reason ? `:${e.reason}` : ''));
  assert.deepEqual(events, ['sent', 'reconnecting:lost', 'not_delivered', 'ended:ended_while_away']);
});

test('at most 128 message frames wait for an ACK, and at most 64 own ACKs are kept', async () => {
  const { client, sam } = await chatting();
  for (let i = 0; i < 128; i++) client.send(`bericht ${i}`);
  const refused = client.send('één te veel');
  const { events } = drain(client);
  assert.equal(events.filter((e) => e.event === 'sent').length, 128);
  assert.deepEqual(events.slice(-2), [
    { event: 'error', v: 1, message: 'too many messages waiting; try again shortly', fatal: false },
    { event: 'not_delivered', v: 1, id: refused },
  ]);
  // Seventy of Sam's messages, each answered by an ACK on the tick.
  for (let i = 0; i < 70; i++) {
    client.handleFrame({ type: 'FORWARD', chat: 1, blob: sam.seal(textChunks(`${i}`)[0]) });
    client.tick();
  }
  drain(client);
  assert.equal(client.outstanding.filter((m) => m.ack).length, 64, 'the oldest ACKs dropped');
  assert.equal(client.outstanding.filter((m) => !m.ack).length, 128);
});
