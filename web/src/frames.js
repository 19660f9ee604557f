// @ts-check
/**
 * The relay frames of fluister/1 (proto/PROTOCOL.md §4), for the browser
 * client: a strict codec and a streaming decoder.
 *
 * A frame is `type u8 || length u16 || body[length]`, and every type has
 * exactly one body length. `decodeFrame` turns one whole frame into a plain
 * object (`{ type: 'QUEUED', position: 3, estimatedWaitSecs: 120 }`) and
 * throws a {@link FrameError} carrying the close code of §3.3 for anything
 * the spec tells a receiver to reject. `encodeFrame` is its inverse.
 * `FrameDecoder` cuts an ordered byte stream (native QUIC or a WebTransport
 * stream) into frames; over WebSocket every message is one whole frame.
 *
 * Byte fields are `Uint8Array`s; integers are numbers (`next_open`, a u64
 * of unix seconds, is a `bigint`). Names follow PROTOCOL.md in camelCase.
 *
 * @module
 */

import { concatBytes } from '@noble/hashes/utils.js';

/** The protocol version this library speaks. */
export const PROTOCOL_VERSION = 1;
/** Header bytes before every body. */
export const HEADER_LEN = 3;
/** The longest body of any frame (FORWARD). */
export const MAX_BODY_LEN = 1036;
/** The end-to-end blob of every FORWARD. */
export const BLOB_LEN = 1032;
/** Highest proof-of-work difficulty, in bits. */
export const MAX_POW_DIFFICULTY = 20;
/** Longest label, in UTF-8 bytes. */
export const MAX_LABEL_LEN = 64;
export const MAX_TOPICS = 16;
export const MAX_LANGUAGES = 8;
export const MAX_QUEUE_STATS = 17;

/** Frame types by name, with their one body length (§4.2). */
export const TYPES = Object.freeze({
  HELLO: { code: 0x01, length: 2 },
  WELCOME: { code: 0x02, length: 37 },
  QUEUED: { code: 0x03, length: 8 },
  PAIRED: { code: 0x04, length: 56 },
  FORWARD: { code: 0x05, length: 1036 },
  END: { code: 0x06, length: 5 },
  TOPIC: { code: 0x07, length: 132 },
  JOIN: { code: 0x08, length: 12 },
  UNAVAILABLE: { code: 0x09, length: 9 },
  STATUS: { code: 0x0a, length: 52 },
  QUEUE_STATS: { code: 0x0b, length: 69 },
  TRANSFER: { code: 0x0c, length: 70 },
  TRANSFER_REFUSED: { code: 0x0d, length: 5 },
  RESUME: { code: 0x0e, length: 32 },
  RESUMED: { code: 0x0f, length: 4 },
  RESUME_FAILED: { code: 0x10, length: 1 },
  PEER_AWAY: { code: 0x11, length: 4 },
  PEER_BACK: { code: 0x12, length: 4 },
  JOINED: { code: 0x13, length: 32 },
  COLLEAGUE: { code: 0x14, length: 66 },
  CHALLENGE: { code: 0x15, length: 17 },
  PROOF: { code: 0x16, length: 8 },
  FORM_ASK: { code: 0x17, length: 1 },
  FORM_FIELD: { code: 0x18, length: 986 },
  CODINGS: { code: 0x19, length: 985 },
  CODINGS_RESULT: { code: 0x1a, length: 17 },
});

/** Case coding (§4.2): most fields, values per field, codings per frame. */
export const MAX_FORM_FIELDS = 12;
export const MAX_FIELD_VALUES = 14;
export const MAX_CODINGS = 64;
const CODING_LEN = 3 + MAX_FORM_FIELDS;

const NAME_BY_CODE = new Map(Object.entries(TYPES).map(([name, t]) => [t.code, name]));

/** One table per wire enum: name ↔ byte. */
const enumOf = (/** @type {Record<string, number>} */ table) => ({
  byName: table,
  byByte: new Map(Object.entries(table).map(([name, byte]) => [byte, name])),
});
export const ROLES = enumOf({ client: 0x01, counsellor: 0x02 });
/** END reasons (§4.3). */
export const END_REASONS = enumOf({
  user_ended: 0x01,
  security_failure: 0x02,
  blocked: 0x03,
  peer_disconnected: 0x10,
  relay_shutdown: 0x11,
  transferred: 0x12,
  counsellor_revoked: 0x13,
});
export const UNAVAILABLE_REASONS = enumOf({ closed: 0x01, busy: 0x02, wait_exceeded: 0x03 });
export const TRANSFER_TARGETS = enumOf({ colleague: 0x01, queue: 0x02 });
export const REFUSALS = enumOf({
  unknown_colleague: 0x01,
  colleague_away: 0x02,
  colleague_full: 0x03,
  client_away: 0x04,
});
export const PRESENCE = enumOf({ signed_out: 0x00, away: 0x01, full: 0x02, available: 0x03 });
export const CODINGS_OUTCOMES = enumOf({
  stored: 0x00,
  stale_form: 0x01,
  month_refused: 0x02,
  not_collecting: 0x03,
  later: 0x04,
});

/** The estimate that means "not known" in QUEUED. */
const UNKNOWN_WAIT = 0xffffffff;

/** A frame the spec says to reject, with the close code to close with (§3.3). */
export class FrameError extends Error {
  /**
   * @param {'MALFORMED_FRAME' | 'FRAME_TOO_LARGE'} closeCode
   * @param {string} message
   */
  constructor(closeCode, message) {
    super(message);
    this.name = 'FrameError';
    this.closeCode = closeCode;
  }
}

const malformed = (/** @type {string} */ why) => new FrameError('MALFORMED_FRAME', why);

/** Reads a body field by field; every check names the field. */
class Reader {
  /** @param {Uint8Array} body */
  constructor(body) {
    this.body = body;
    this.view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    this.at = 0;
  }
  u8() {
    return this.view.getUint8(this.at++);
  }
  u16() {
    const v = this.view.getUint16(this.at);
    this.at += 2;
    return v;
  }
  u32() {
    const v = this.view.getUint32(this.at);
    this.at += 4;
    return v;
  }
  u64() {
    const v = this.view.getBigUint64(this.at);
    this.at += 8;
    return v;
  }
  /** @param {number} n */
  bytes(n) {
    const v = this.body.slice(this.at, this.at + n);
    this.at += n;
    return v;
  }
  /** @param {string} field */
  chat(field = 'chat') {
    const chat = this.u32();
    if (chat === 0) throw malformed(`${field} is 0`);
    return chat;
  }
  /**
   * @template T
   * @param {{ byByte: Map<number, T> }} table
   * @param {string} field
   */
  oneOf(table, field) {
    const name = table.byByte.get(this.u8());
    if (name === undefined) throw malformed(`unknown ${field}`);
    return name;
  }
  /** A language, or `null` for 00 00 (where `allowNone`). */
  language(allowNone = true) {
    const b = this.bytes(2);
    if (b[0] === 0 && b[1] === 0 && allowNone) return null;
    if (!b.every((c) => c >= 0x61 && c <= 0x7a)) throw malformed('language');
    return String.fromCharCode(b[0], b[1]);
  }
  /** `count` languages from 8 slots, unused slots zero. */
  languages(count) {
    if (count > MAX_LANGUAGES) throw malformed('language count');
    const out = [];
    for (let i = 0; i < MAX_LANGUAGES; i++) {
      if (i < count) out.push(this.language(false));
      else if (this.u16() !== 0) throw malformed('unused language slot');
    }
    return out;
  }
  /** A label slot: `len u8 || utf8[64]`, zero-padded (§4.1). */
  label(allowEmpty = false) {
    const len = this.u8();
    const slot = this.bytes(MAX_LABEL_LEN);
    if (len > MAX_LABEL_LEN) throw malformed('label length');
    if (slot.subarray(len).some((b) => b !== 0)) throw malformed('label padding');
    if (len === 0 && allowEmpty) return null;
    return checkLabel(slot.subarray(0, len));
  }
  finish() {
    // Bodies have one length, checked before; this guards the table.
    if (this.at !== this.body.length) throw malformed('body not consumed');
  }
}

const LABEL_FORBIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;
const LABEL_EDGE_SPACE = /^\p{White_Space}|\p{White_Space}$/u;

/**
 * Whether `text` is a label (§4.1): 1 to 64 bytes of UTF-8, no controls,
 * format characters or line and paragraph separators, no white space at
 * either end.
 * @param {string} text
 */
export function isLabel(text) {
  const len = new TextEncoder().encode(text).length;
  return (
    len >= 1 && len <= MAX_LABEL_LEN && !LABEL_FORBIDDEN.test(text) && !LABEL_EDGE_SPACE.test(text)
  );
}

/**
 * A label slot's text, checked. `ignoreBOM` keeps a leading U+FEFF in the
 * text, where the rule rejects it; by default TextDecoder would drop it
 * silently and let the label through.
 * @param {Uint8Array} utf8
 */
function checkLabel(utf8) {
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(utf8);
  } catch {
    throw malformed('label is not UTF-8');
  }
  if (!isLabel(text)) throw malformed('label');
  return text;
}

/**
 * Decodes one whole frame.
 * @param {Uint8Array} bytes
 * @returns {Record<string, any> & { type: string }}
 */
export function decodeFrame(bytes) {
  if (bytes.length < HEADER_LEN) throw malformed('short header');
  const code = bytes[0];
  const length = (bytes[1] << 8) | bytes[2];
  checkHeader(code, length);
  if (bytes.length !== HEADER_LEN + length) throw malformed('not one whole frame');
  const type = /** @type {keyof typeof TYPES} */ (NAME_BY_CODE.get(code));
  const r = new Reader(bytes.subarray(HEADER_LEN));
  const frame = decodeBody(type, r);
  r.finish();
  return frame;
}

/**
 * The header's checks, in the order of §4.1.
 * @param {number} code
 * @param {number} length
 */
function checkHeader(code, length) {
  const type = NAME_BY_CODE.get(code);
  if (type === undefined) throw malformed(`unknown frame type 0x${code.toString(16)}`);
  if (length > MAX_BODY_LEN) throw new FrameError('FRAME_TOO_LARGE', `body of ${length} bytes`);
  if (length !== TYPES[/** @type {keyof typeof TYPES} */ (type)].length) {
    throw malformed(`${type} with a body of ${length} bytes`);
  }
}

/**
 * @param {keyof typeof TYPES} type
 * @param {Reader} r
 */
function decodeBody(type, r) {
  switch (type) {
    case 'HELLO':
      return { type, version: r.u8(), role: r.oneOf(ROLES, 'role') };
    case 'WELCOME': {
      const version = r.u8();
      const role = r.oneOf(ROLES, 'role');
      const topics = r.u8();
      if (topics > MAX_TOPICS) throw malformed('topic count');
      const languages = r.languages(r.u8());
      const powDifficulty = r.u8();
      if (powDifficulty > MAX_POW_DIFFICULTY) throw malformed('pow difficulty');
      return { type, version, role, topics, languages, powDifficulty, powChallenge: r.bytes(16) };
    }
    case 'QUEUED': {
      const position = r.u32();
      if (position === 0) throw malformed('position 0');
      const wait = r.u32();
      return { type, position, estimatedWaitSecs: wait === UNKNOWN_WAIT ? null : wait };
    }
    case 'PAIRED': {
      const chat = r.chat();
      const pairingId = r.bytes(16);
      const resume = r.bytes(32);
      const topic = r.u16();
      return { type, chat, pairingId, resume, topic: topic || null, language: r.language() };
    }
    case 'FORWARD':
      return { type, chat: r.chat(), blob: r.bytes(BLOB_LEN) };
    case 'END':
      return { type, chat: r.chat(), reason: r.oneOf(END_REASONS, 'END reason') };
    case 'TOPIC': {
      const id = r.u16();
      if (id === 0) throw malformed('topic id 0');
      return { type, id, labelNl: r.label(), labelEn: r.label() };
    }
    case 'JOIN': {
      const topic = r.u16();
      return { type, topic: topic || null, language: r.language(), powSolution: r.bytes(8) };
    }
    case 'UNAVAILABLE': {
      const reason = r.oneOf(UNAVAILABLE_REASONS, 'UNAVAILABLE reason');
      const nextOpen = r.u64();
      return { type, reason, nextOpen: nextOpen === 0n ? null : nextOpen };
    }
    case 'STATUS': {
      const available = r.u8();
      if (available > 1) throw malformed('available');
      const capacity = r.u8();
      const count = r.u8();
      if (count > MAX_TOPICS) throw malformed('topic count');
      const topics = [];
      for (let i = 0; i < MAX_TOPICS; i++) {
        const id = r.u16();
        if (i < count) {
          if (id === 0) throw malformed('topic id 0');
          topics.push(id);
        } else if (id !== 0) throw malformed('unused topic slot');
      }
      const languages = r.languages(r.u8());
      return { type, available: available === 1, capacity, topics, languages };
    }
    case 'QUEUE_STATS': {
      const count = r.u8();
      if (count > MAX_QUEUE_STATS) throw malformed('entry count');
      const entries = [];
      for (let i = 0; i < MAX_QUEUE_STATS; i++) {
        const topic = r.u16();
        const waiting = r.u16();
        if (i < count) entries.push({ topic: topic || null, waiting });
        else if (topic !== 0 || waiting !== 0) throw malformed('unused entry slot');
      }
      return { type, entries };
    }
    case 'TRANSFER': {
      const chat = r.chat();
      const target = r.oneOf(TRANSFER_TARGETS, 'transfer target');
      const name = r.label(target === 'queue');
      if ((target === 'queue') !== (name === null)) throw malformed('transfer name');
      return { type, chat, target, name };
    }
    case 'TRANSFER_REFUSED':
      return { type, chat: r.chat(), reason: r.oneOf(REFUSALS, 'refusal') };
    case 'RESUME':
      return { type, capability: r.bytes(32) };
    case 'RESUMED':
      return { type, chat: r.chat() };
    case 'RESUME_FAILED':
      if (r.u8() !== 0) throw malformed('RESUME_FAILED reason');
      return { type };
    case 'PEER_AWAY':
    case 'PEER_BACK':
      return { type, chat: r.chat() };
    case 'JOINED':
      return { type, resume: r.bytes(32) };
    case 'COLLEAGUE':
      return { type, presence: r.oneOf(PRESENCE, 'presence'), name: r.label() };
    case 'CHALLENGE': {
      const powDifficulty = r.u8();
      if (powDifficulty > MAX_POW_DIFFICULTY) throw malformed('pow difficulty');
      return { type, powDifficulty, powChallenge: r.bytes(16) };
    }
    case 'PROOF':
      return { type, solution: r.bytes(8) };
    case 'FORM_ASK':
      if (r.u8() !== 0) throw malformed('FORM_ASK reserved');
      return { type };
    case 'FORM_FIELD': {
      const form = r.bytes(8);
      const fields = r.u8();
      const index = r.u8();
      if (fields > MAX_FORM_FIELDS) throw malformed('fields');
      if (fields === 0) {
        const rest = r.bytes(1 + MAX_LABEL_LEN + 1 + MAX_FIELD_VALUES * (1 + MAX_LABEL_LEN));
        if (index !== 0 || form.some((b) => b !== 0) || rest.some((b) => b !== 0)) throw malformed('no form');
        return { type, form, fields, index, name: null, values: [] };
      }
      if (index >= fields) throw malformed('index');
      const name = r.label();
      const count = r.u8();
      if (count === 0 || count > MAX_FIELD_VALUES) throw malformed('value count');
      const values = [];
      for (let i = 0; i < MAX_FIELD_VALUES; i++) {
        if (i < count) values.push(r.label());
        else if (r.label(true) !== null) throw malformed('unused value slot');
      }
      return { type, form, fields, index, name, values };
    }
    case 'CODINGS': {
      const batch = r.bytes(16);
      const form = r.bytes(8);
      const count = r.u8();
      if (count === 0 || count > MAX_CODINGS) throw malformed('coding count');
      const codings = [];
      for (let i = 0; i < count; i++) {
        const year = r.u16();
        const month = r.u8();
        if (year < 2000 || year > 9999 || month < 1 || month > 12) throw malformed('month');
        codings.push({ year, month, values: [...r.bytes(MAX_FORM_FIELDS)] });
      }
      if (r.bytes(CODING_LEN * (MAX_CODINGS - count)).some((b) => b !== 0)) throw malformed('unused codings');
      return { type, batch, form, codings };
    }
    case 'CODINGS_RESULT':
      return { type, batch: r.bytes(16), outcome: r.oneOf(CODINGS_OUTCOMES, 'codings result') };
  }
  throw malformed(`unknown frame type ${type}`);
}

/** Writes a body; every value is checked before it is written. */
class Writer {
  /** @param {number} length */
  constructor(length) {
    this.body = new Uint8Array(length);
    this.view = new DataView(this.body.buffer);
    this.at = 0;
  }
  /** @param {number} v */
  u8(v) {
    this.view.setUint8(this.at++, int(v, 0xff));
  }
  /** @param {number} v */
  u16(v) {
    this.view.setUint16(this.at, int(v, 0xffff));
    this.at += 2;
  }
  /** @param {number} v */
  u32(v) {
    this.view.setUint32(this.at, int(v, 0xffffffff));
    this.at += 4;
  }
  /** @param {bigint} v */
  u64(v) {
    this.view.setBigUint64(this.at, BigInt.asUintN(64, v));
    this.at += 8;
  }
  /**
   * @param {Uint8Array} v
   * @param {number} n
   */
  bytes(v, n) {
    if (!(v instanceof Uint8Array) || v.length !== n) throw new TypeError(`expected ${n} bytes`);
    this.body.set(v, this.at);
    this.at += n;
  }
  /** @param {number} chat */
  chat(chat) {
    if (chat === 0) throw new TypeError('chat 0');
    this.u32(chat);
  }
  /**
   * @param {{ byName: Record<string, number> }} table
   * @param {string} name
   */
  oneOf(table, name) {
    const byte = table.byName[name];
    if (byte === undefined) throw new TypeError(`unknown value ${name}`);
    this.u8(byte);
  }
  /** @param {string | null} language */
  language(language) {
    if (language === null) return void (this.at += 2);
    if (!/^[a-z]{2}$/.test(language)) throw new TypeError(`language ${language}`);
    this.u8(language.charCodeAt(0));
    this.u8(language.charCodeAt(1));
  }
  /** @param {string[]} languages */
  languages(languages) {
    if (languages.length > MAX_LANGUAGES) throw new TypeError('too many languages');
    this.u8(languages.length);
    languages.forEach((l) => this.language(l));
    this.at += 2 * (MAX_LANGUAGES - languages.length);
  }
  /** @param {string | null} text */
  label(text) {
    const utf8 = text === null ? new Uint8Array(0) : new TextEncoder().encode(text);
    if (text !== null && !isLabel(text)) throw new TypeError('not a label');
    this.u8(utf8.length);
    this.body.set(utf8, this.at);
    this.at += MAX_LABEL_LEN;
  }
}

/**
 * @param {number} v
 * @param {number} max
 */
function int(v, max) {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new TypeError(`${v} out of range`);
  return v;
}

/**
 * Encodes one frame, the inverse of {@link decodeFrame}.
 * @param {Record<string, any> & { type: string }} frame
 * @returns {Uint8Array}
 */
export function encodeFrame(frame) {
  const spec = TYPES[/** @type {keyof typeof TYPES} */ (frame.type)];
  if (spec === undefined) throw new TypeError(`unknown frame type ${frame.type}`);
  const w = new Writer(spec.length);
  const f = frame;
  switch (frame.type) {
    case 'HELLO':
      w.u8(f.version ?? PROTOCOL_VERSION);
      w.oneOf(ROLES, f.role);
      break;
    case 'WELCOME':
      w.u8(f.version);
      w.oneOf(ROLES, f.role);
      w.u8(f.topics);
      w.languages(f.languages);
      w.u8(f.powDifficulty);
      w.bytes(f.powChallenge, 16);
      break;
    case 'QUEUED':
      w.u32(f.position);
      w.u32(f.estimatedWaitSecs ?? UNKNOWN_WAIT);
      break;
    case 'PAIRED':
      w.chat(f.chat);
      w.bytes(f.pairingId, 16);
      w.bytes(f.resume, 32);
      w.u16(f.topic ?? 0);
      w.language(f.language);
      break;
    case 'FORWARD':
      w.chat(f.chat);
      w.bytes(f.blob, BLOB_LEN);
      break;
    case 'END':
      w.chat(f.chat);
      w.oneOf(END_REASONS, f.reason);
      break;
    case 'TOPIC':
      w.u16(f.id);
      w.label(f.labelNl);
      w.label(f.labelEn);
      break;
    case 'JOIN':
      w.u16(f.topic ?? 0);
      w.language(f.language);
      w.bytes(f.powSolution, 8);
      break;
    case 'UNAVAILABLE':
      w.oneOf(UNAVAILABLE_REASONS, f.reason);
      w.u64(f.nextOpen ?? 0n);
      break;
    case 'STATUS':
      w.u8(f.available ? 1 : 0);
      w.u8(f.capacity);
      if (f.topics.length > MAX_TOPICS) throw new TypeError('too many topics');
      w.u8(f.topics.length);
      for (let i = 0; i < MAX_TOPICS; i++) w.u16(f.topics[i] ?? 0);
      w.languages(f.languages);
      break;
    case 'QUEUE_STATS':
      if (f.entries.length > MAX_QUEUE_STATS) throw new TypeError('too many entries');
      w.u8(f.entries.length);
      for (let i = 0; i < MAX_QUEUE_STATS; i++) {
        w.u16(f.entries[i]?.topic ?? 0);
        w.u16(f.entries[i]?.waiting ?? 0);
      }
      break;
    case 'TRANSFER':
      w.chat(f.chat);
      w.oneOf(TRANSFER_TARGETS, f.target);
      w.label(f.target === 'queue' ? null : f.name);
      break;
    case 'TRANSFER_REFUSED':
      w.chat(f.chat);
      w.oneOf(REFUSALS, f.reason);
      break;
    case 'RESUME':
      w.bytes(f.capability, 32);
      break;
    case 'RESUMED':
    case 'PEER_AWAY':
    case 'PEER_BACK':
      w.chat(f.chat);
      break;
    case 'RESUME_FAILED':
      w.u8(0);
      break;
    case 'JOINED':
      w.bytes(f.resume, 32);
      break;
    case 'COLLEAGUE':
      w.oneOf(PRESENCE, f.presence);
      w.label(f.name);
      break;
    case 'CHALLENGE':
      w.u8(f.powDifficulty);
      w.bytes(f.powChallenge, 16);
      break;
    case 'PROOF':
      w.bytes(f.solution, 8);
      break;
    case 'FORM_ASK':
      w.u8(0);
      break;
    case 'FORM_FIELD':
      w.bytes(f.form, 8);
      w.u8(f.fields);
      w.u8(f.index);
      if (f.fields === 0) break;
      if (f.values.length < 1 || f.values.length > MAX_FIELD_VALUES) throw new TypeError('value count');
      w.label(f.name);
      w.u8(f.values.length);
      f.values.forEach((v) => w.label(v));
      break;
    case 'CODINGS':
      w.bytes(f.batch, 16);
      w.bytes(f.form, 8);
      if (f.codings.length < 1 || f.codings.length > MAX_CODINGS) throw new TypeError('coding count');
      w.u8(f.codings.length);
      for (const c of f.codings) {
        w.u16(c.year);
        w.u8(c.month);
        w.bytes(Uint8Array.from(c.values), MAX_FORM_FIELDS);
      }
      break;
    case 'CODINGS_RESULT':
      w.bytes(f.batch, 16);
      w.oneOf(CODINGS_OUTCOMES, f.outcome);
      break;
  }
  const out = new Uint8Array(HEADER_LEN + spec.length);
  out[0] = spec.code;
  out[1] = spec.length >> 8;
  out[2] = spec.length & 0xff;
  out.set(w.body, HEADER_LEN);
  return out;
}

/**
 * Cuts an ordered byte stream into frames. Frames before a bad one are
 * still returned, to be acted on in order; the bad one ends the stream:
 * the connection is closed with `error.closeCode` (§4.1), and every later
 * push returns that error again.
 */
export class FrameDecoder {
  constructor() {
    /** @type {Uint8Array} */
    this.pending = new Uint8Array(0);
    /** @type {FrameError | null} */
    this.error = null;
  }

  /**
   * The whole frames completed by `chunk`, in order, and the error that
   * ended the stream, if any.
   * @param {Uint8Array} chunk
   * @returns {{ frames: Array<Record<string, any> & { type: string }>, error: FrameError | null }}
   */
  push(chunk) {
    const frames = [];
    if (this.error) return { frames, error: this.error };
    const data = this.pending.length ? concatBytes(this.pending, chunk) : chunk;
    let at = 0;
    try {
      while (data.length - at >= HEADER_LEN) {
        const length = (data[at + 1] << 8) | data[at + 2];
        // The header is judged as soon as it is whole (§4.1).
        checkHeader(data[at], length);
        const end = at + HEADER_LEN + length;
        if (end > data.length) break;
        frames.push(decodeFrame(data.subarray(at, end)));
        at = end;
      }
    } catch (e) {
      this.error = e instanceof FrameError ? e : malformed(String(e));
      this.pending = new Uint8Array(0);
      return { frames, error: this.error };
    }
    this.pending = data.slice(at);
    return { frames, error: null };
  }
}
