// The counsellor's console as data (console/model.js): the events of
// `fluister console`'s live connection in, the view out.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ENDED_KEPT_MS, apply, attention, close, closeExpired, codeChat, elapsed, emptyModel, look, transferTargets } from '../console/model.js';

const T0 = 1_000_000;

/** A model fed `events` at T0, with nothing in view. */
function fed(events, inView = () => false) {
  const model = emptyModel();
  const effects = events.map((e) => apply(model, e, T0, inView));
  return { model, effects };
}

const signedIn = [
  { event: 'console', pseudonym: 'Sam', replies: ['Hoi'] },
  { event: 'connected', topics: [{ id: 1, nl: 'Seksuele uitbuiting', en: 'Sexual exploitation' }], languages: ['nl'] },
  { event: 'status', available: true, capacity: 2 },
];

test('a new chat cues once, and its messages are unread until looked at', () => {
  const { model, effects } = fed([
    ...signedIn,
    { event: 'paired', chat: 1, topic: 1, language: 'nl' },
    { event: 'ready', chat: 1 },
    { event: 'message', chat: 1, text: 'hallo' },
    { event: 'message', chat: 1, text: 'ben je daar?' },
  ]);
  assert.deepEqual(effects.slice(3), [{ cue: true }, {}, { unread: 1 }, { unread: 1 }]);
  const chat = model.chats.get(1);
  assert.equal(chat.unread, 2);
  assert.equal(chat.topic, 1);
  assert.equal(chat.language, 'nl');
  assert.equal(chat.ready, true);
  assert.equal(attention(model), 3, 'two unread and one chat not looked at');
  look(model, 1);
  assert.equal(attention(model), 0);
  // In view, a message is read at once.
  assert.deepEqual(apply(model, { event: 'message', chat: 1, text: 'hoi' }, T0, (n) => n === 1), {});
  assert.equal(model.chats.get(1).unread, 0);
});

test('own messages carry their marks from said to delivered, never back, and not delivered at the end', () => {
  const { model } = fed([
    ...signedIn,
    { event: 'paired', chat: 1 },
    { event: 'ready', chat: 1 },
    { event: 'said', chat: 1, id: 1, text: 'een' },
    { event: 'said', chat: 1, id: 2, text: 'twee' },
    { event: 'sent', chat: 1, id: 1 },
    { event: 'delivered', chat: 1, id: 1 },
    { event: 'sent', chat: 1, id: 1 },
    { event: 'sent', chat: 1, id: 2 },
  ]);
  const marks = () => model.chats.get(1).lines.map((l) => [l.text, l.status]);
  assert.deepEqual(marks(), [
    ['een', 'delivered'],
    ['twee', 'sent'],
  ]);
  apply(model, { event: 'ended', chat: 1, reason: 'peer_ended' }, T0);
  assert.deepEqual(marks(), [
    ['een', 'delivered'],
    ['twee', 'not_delivered'],
  ]);
  assert.equal(model.chats.get(1).ended, 'peer_ended');
  close(model, 1);
  assert.equal(model.chats.size, 0);
  // Not closed by hand: gone after ENDED_KEPT_MS all the same.
  apply(model, { event: 'paired', chat: 2 }, T0);
  apply(model, { event: 'ended', chat: 2, reason: 'you_ended' }, T0);
  assert.equal(closeExpired(model, T0 + ENDED_KEPT_MS - 1), false);
  assert.equal(model.chats.size, 1);
  assert.equal(closeExpired(model, T0 + ENDED_KEPT_MS), true);
  assert.equal(model.chats.size, 0);
});

test('a replay after a reload rebuilds the same view without cues, with the chat’s real age', () => {
  const { model, effects } = fed([
    ...signedIn.map((e) => ({ ...e, ago_ms: 90_000 })),
    { event: 'paired', chat: 2, topic: 1, ago_ms: 65_000 },
    { event: 'message', chat: 2, text: 'eerder', ago_ms: 60_000 },
  ]);
  assert.ok(effects.every((e) => !e.cue));
  assert.equal(model.chats.get(2).startedAt, T0 - 65_000);
  assert.equal(elapsed(T0 - model.chats.get(2).startedAt), '1:05');
  assert.equal(elapsed(3_725_000), '1:02:05');
  // A new `console` event (the next reload) starts from nothing.
  apply(model, { event: 'console', pseudonym: 'Sam', replies: [] }, T0);
  assert.equal(model.chats.size, 0);
});

test('the young person away and back, refused transfers, the sign-in and the colleagues', () => {
  const { model } = fed([
    ...signedIn,
    { event: 'paired', chat: 1 },
    { event: 'peer_away', chat: 1 },
  ]);
  assert.equal(model.chats.get(1).peerAway, true);
  apply(model, { event: 'peer_back', chat: 1 }, T0);
  assert.equal(model.chats.get(1).peerAway, false);
  assert.equal(model.chats.get(1).back, true);
  apply(model, { event: 'transfer_refused', chat: 1, reason: 'that counsellor is away', code: 'colleague_away' }, T0);
  assert.equal(model.chats.get(1).notice.key, 'refused_colleague_away');

  apply(model, { event: 'colleague', name: 'Noor', presence: 'available' }, T0);
  apply(model, { event: 'colleague', name: 'Ali', presence: 'full' }, T0);
  apply(model, { event: 'colleague', name: 'Sam', presence: 'available' }, T0);
  assert.deepEqual(transferTargets(model), [
    { name: 'Ali', presence: 'full', room: false },
    { name: 'Noor', presence: 'available', room: true },
  ]);
  apply(model, { event: 'colleague', name: 'Ali', presence: 'signed_out' }, T0);
  assert.deepEqual(
    transferTargets(model).map((c) => c.name),
    ['Noor'],
  );

  apply(model, { event: 'queue_stats', waiting: [{ topic: 1, count: 2 }, { topic: null, count: 1 }] }, T0);
  assert.deepEqual([...model.queue], [
    [1, 2],
    [0, 1],
  ]);
  apply(model, { event: 'reconnecting', reason: 'lost' }, T0);
  assert.equal(model.link, 'reconnecting');
  apply(model, { event: 'status', available: false, capacity: 2 }, T0);
  assert.equal(model.link, 'online');
  assert.equal(model.available, false);
  apply(model, { event: 'error', message: 'your sign-in was revoked', fatal: true, code: 'revoked' }, T0);
  apply(model, { event: 'signed_out' }, T0);
  assert.equal(model.link, 'failed');
  assert.equal(model.failure, 'your sign-in was revoked');
});

test('an ended chat is coded once, by names from the form, and the command names no chat', () => {
  const model = emptyModel();
  apply(model, { event: 'form', fields: [{ name: 'Age band', values: ['13–15', '16–17'] }, { name: 'Type', values: ['Other'] }] }, T0);
  apply(model, { event: 'paired', chat: 4, topic: 1 }, T0);
  assert.equal(codeChat(model, 4, ['16–17', '']), null, 'a chat still running is not coded');
  apply(model, { event: 'ended', chat: 4, reason: 'you_ended' }, T0);
  const command = codeChat(model, 4, ['16–17', '']);
  assert.deepEqual(command, { command: 'code', values: [{ field: 'Age band', value: '16–17' }] });
  assert.equal(JSON.stringify(command).includes('4'), false, 'no chat number');
  assert.equal(codeChat(model, 4, ['13–15', 'Other']), null, 'once');
  assert.equal(model.chats.get(4).coded, true);
  apply(model, { event: 'paired', chat: 5 }, T0);
  apply(model, { event: 'ended', chat: 5, reason: 'transferred' }, T0);
  assert.equal(codeChat(model, 5, ['13–15', '']), null, 'a transferred chat is coded by whoever ends it');
  apply(model, { event: 'coded', held: 3 }, T0);
  assert.equal(model.codingsHeld, 3);
});
