// @ts-check
/**
 * The young person's end-to-end side of a chat (PROTOCOL.md §6): padding
 * (§6.3), content (§6.4), the counsellor certificate (§6.2) and the
 * session that turns them into the 1,032-byte blobs FORWARD carries.
 *
 * A `ClientSession` starts from the organisation key the page pins and
 * the pairing id of PAIRED. `start()` gives handshake message 1.
 * `finish(message2, now)` runs the client's checks of §6.1 in their order
 * and returns the verified counsellor (or throws a `SecurityFailure`: the
 * page then sends END(SECURITY_FAILURE) and nothing else). Then `seal`
 * makes a transport blob from content, and `open` reads one: content, or
 * `'duplicate'`/`'gap'` for a sequence number that is not the next (§6.5).
 *
 * @module
 */

import { ed25519 } from '@noble/curves/ed25519.js';

import { Handshake, NoiseError, wipe } from './noise.js';
import { isLabel } from './frames.js';

/** The blob every FORWARD carries. */
export const BLOB_LEN = 1032;
/** Padded sizes (§6.3). */
export const MESSAGE_1_PAYLOAD = 1000;
export const MESSAGE_2_PAYLOAD = 936;
export const TRANSPORT_PLAINTEXT = 1008;
/** Text per TEXT chunk, and per message (§6.4). */
export const MAX_CHUNK_TEXT = 1004;
export const MAX_MESSAGE_TEXT = 16384;
/** Clock skew a certificate check tolerates, in seconds (§6.2). */
export const CLOCK_SKEW_SECS = 300;

const PROLOGUE_LABEL = 'fluister prologue v1';
const CERTIFICATE_CONTEXT = 'fluister counsellor certificate v1';
const KIND_TEXT = 0x01;
const KIND_ACK = 0x02;
const FINAL = 0x01;
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Something the authenticated peer (or the relay, before authentication)
 * sent that the client must treat as a security failure: END(chat,
 * SECURITY_FAILURE), then leave with the close code SECURITY_FAILURE.
 */
export class SecurityFailure extends Error {
  /** @param {string} reason a stable name: `bad_padding`, `wrong_organisation`, … */
  constructor(reason) {
    super(reason);
    this.name = 'SecurityFailure';
    this.reason = reason;
  }
}

/**
 * `length u16 || content || zeros` to `size` bytes (§6.3).
 * @param {Uint8Array} content
 * @param {number} size
 */
export function pad(content, size) {
  if (content.length > size - 2) throw new RangeError('content does not fit');
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint16(0, content.length);
  out.set(content, 2);
  return out;
}

/**
 * The content inside a padded payload; rejects a length that does not fit
 * and any non-zero padding byte.
 * @param {Uint8Array} padded
 */
export function unpad(padded) {
  if (padded.length < 2) throw new SecurityFailure('bad_padding');
  const length = (padded[0] << 8) | padded[1];
  if (length > padded.length - 2) throw new SecurityFailure('bad_padding');
  if (padded.subarray(2 + length).some((b) => b !== 0)) throw new SecurityFailure('bad_padding');
  return padded.slice(2, 2 + length);
}

/**
 * The prologue both sides mix in first (§6.1).
 * @param {Uint8Array} orgKey
 * @param {Uint8Array} pairingId
 */
export function prologue(orgKey, pairingId) {
  if (orgKey.length !== 32 || pairingId.length !== 16) throw new TypeError('key or pairing id');
  const label = utf8.encode(PROLOGUE_LABEL);
  const out = new Uint8Array(label.length + 48);
  out.set(label, 0);
  out.set(orgKey, label.length);
  out.set(pairingId, label.length + 32);
  return out;
}

/**
 * @typedef {{ kind: 'text', final: boolean, text: string }
 *   | { kind: 'ack', upTo: bigint }
 *   | { kind: 'unknown', code: number }} Content
 */

/**
 * Parses decrypted, unpadded content (§6.4).
 * @param {Uint8Array} bytes
 * @returns {Content}
 */
export function parseContent(bytes) {
  if (bytes.length === 0) throw new SecurityFailure('empty_content');
  switch (bytes[0]) {
    case KIND_TEXT: {
      if (bytes.length < 2) throw new SecurityFailure('text_without_flags');
      if (bytes[1] & ~FINAL) throw new SecurityFailure('reserved_flag');
      let text;
      try {
        text = strictUtf8.decode(bytes.subarray(2));
      } catch {
        throw new SecurityFailure('text_not_utf8');
      }
      return { kind: 'text', final: (bytes[1] & FINAL) !== 0, text };
    }
    case KIND_ACK:
      if (bytes.length !== 9) throw new SecurityFailure('bad_ack');
      return { kind: 'ack', upTo: new DataView(bytes.buffer, bytes.byteOffset + 1).getBigUint64(0) };
    default:
      return { kind: 'unknown', code: bytes[0] };
  }
}

/**
 * The TEXT chunks of one message, cut at character boundaries (§6.4).
 * @param {string} text
 * @returns {Uint8Array[]}
 */
export function textChunks(text) {
  const bytes = utf8.encode(text);
  if (bytes.length > MAX_MESSAGE_TEXT) throw new RangeError('message longer than 16384 bytes');
  const chunks = [];
  let at = 0;
  do {
    let end = Math.min(at + MAX_CHUNK_TEXT, bytes.length);
    // A chunk never ends inside a character: the byte after it must not
    // be a continuation byte.
    while (end < bytes.length && (bytes[end] & 0xc0) === 0x80) end--;
    const last = end === bytes.length;
    const chunk = new Uint8Array(2 + end - at);
    chunk[0] = KIND_TEXT;
    chunk[1] = last ? FINAL : 0;
    chunk.set(bytes.subarray(at, end), 2);
    chunks.push(chunk);
    at = end;
  } while (at < bytes.length);
  return chunks;
}

/**
 * ACK content (§6.4).
 * @param {bigint} upTo
 */
export function ackContent(upTo) {
  const out = new Uint8Array(9);
  out[0] = KIND_ACK;
  new DataView(out.buffer).setBigUint64(1, upTo);
  return out;
}

/**
 * @typedef {object} Certificate
 * @property {number} version
 * @property {Uint8Array} orgKey
 * @property {Uint8Array} staticKey
 * @property {bigint} notBefore
 * @property {bigint} notAfter
 * @property {string} pseudonym
 * @property {Uint8Array} signature
 * @property {Uint8Array} signed the bytes before the signature
 */

/**
 * Parses a certificate strictly (§6.2): canonical length, a label.
 * @param {Uint8Array} bytes
 * @returns {Certificate}
 */
export function parseCertificate(bytes) {
  if (bytes.length < 147 || bytes[0] !== 1) {
    throw new SecurityFailure(bytes[0] !== 1 && bytes.length > 0 ? 'unsupported_certificate' : 'malformed_certificate');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nameLen = bytes[81];
  if (nameLen < 1 || nameLen > 64 || bytes.length !== 146 + nameLen) {
    throw new SecurityFailure('malformed_certificate');
  }
  let pseudonym;
  try {
    pseudonym = strictUtf8.decode(bytes.subarray(82, 82 + nameLen));
  } catch {
    throw new SecurityFailure('malformed_certificate');
  }
  if (!isLabel(pseudonym)) throw new SecurityFailure('malformed_certificate');
  return {
    version: 1,
    orgKey: bytes.slice(1, 33),
    staticKey: bytes.slice(33, 65),
    notBefore: view.getBigUint64(65),
    notAfter: view.getBigUint64(73),
    pseudonym,
    signature: bytes.slice(82 + nameLen),
    signed: bytes.slice(0, 82 + nameLen),
  };
}

/** ℓ, the order of the Ed25519 group. */
const GROUP_ORDER = 2n ** 252n + 27742317777372353535851937790883648493n;

/** @param {Uint8Array} bytes little-endian */
function littleEndian(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

/**
 * A point encoding that decodes, re-encodes to the same bytes, and is not
 * of small order (§6.2 step 4).
 * @param {Uint8Array} bytes
 */
function strictPoint(bytes) {
  try {
    const point = ed25519.Point.fromBytes(bytes);
    const again = point.toBytes();
    return again.every((b, i) => b === bytes[i]) && !point.isSmallOrder();
  } catch {
    return false;
  }
}

/**
 * Verifies a certificate under the pinned organisation key at `now` (unix
 * seconds), in the order of §6.2; the handshake's static key is checked by
 * the caller (step 7).
 * @param {Certificate} cert
 * @param {Uint8Array} pinnedOrgKey
 * @param {number | bigint} now
 */
export function verifyCertificate(cert, pinnedOrgKey, now) {
  if (!cert.orgKey.every((b, i) => b === pinnedOrgKey[i])) throw new SecurityFailure('wrong_organisation');
  const r = cert.signature.subarray(0, 32);
  const s = cert.signature.subarray(32);
  if (littleEndian(s) >= GROUP_ORDER) throw new SecurityFailure('non_canonical_signature');
  const message = new Uint8Array(CERTIFICATE_CONTEXT.length + cert.signed.length);
  message.set(utf8.encode(CERTIFICATE_CONTEXT), 0);
  message.set(cert.signed, CERTIFICATE_CONTEXT.length);
  let valid = strictPoint(r) && strictPoint(cert.orgKey);
  if (valid) {
    try {
      valid = ed25519.verify(cert.signature, message, cert.orgKey, { zip215: false });
    } catch {
      valid = false;
    }
  }
  if (!valid) throw new SecurityFailure('bad_signature');
  const t = BigInt(now);
  if (t + BigInt(CLOCK_SKEW_SECS) < cert.notBefore) throw new SecurityFailure('not_yet_valid');
  if (t >= cert.notAfter + BigInt(CLOCK_SKEW_SECS)) throw new SecurityFailure('expired');
}

/**
 * One chat's end-to-end session from the young person's side.
 */
export class ClientSession {
  /**
   * @param {object} options
   * @param {Uint8Array} options.orgKey the organisation key the page pins
   * @param {Uint8Array} options.pairingId from PAIRED
   * @param {Uint8Array} [options.ephemeralKey] fixed for vectors only
   */
  constructor({ orgKey, pairingId, ephemeralKey }) {
    this.orgKey = orgKey;
    this.handshake = new Handshake({ initiator: true, prologue: prologue(orgKey, pairingId), ephemeralKey });
    /** @type {import('./noise.js').CipherState | null} */
    this.send = null;
    /** @type {import('./noise.js').CipherState | null} */
    this.receive = null;
    this.nextSend = 0n;
    this.nextReceive = 0n;
  }

  /** Handshake message 1: `e` and 1,000 bytes of padding around nothing. */
  start() {
    return this.handshake.writeMessage(pad(new Uint8Array(0), MESSAGE_1_PAYLOAD));
  }

  /**
   * Reads handshake message 2 and runs the client's checks (§6.1); the
   * verified counsellor, or a `SecurityFailure`.
   * @param {Uint8Array} message2
   * @param {number | bigint} now unix seconds
   */
  finish(message2, now) {
    if (!this.handshake) throw new Error('finished already');
    let payload;
    try {
      payload = this.handshake.readMessage(message2);
    } catch (e) {
      throw new SecurityFailure(e instanceof NoiseError ? 'handshake_failed' : 'malformed_handshake');
    }
    const cert = parseCertificate(unpad(payload));
    verifyCertificate(cert, this.orgKey, now);
    const authenticated = this.handshake.remoteStatic;
    if (!authenticated || !cert.staticKey.every((b, i) => b === authenticated[i])) {
      throw new SecurityFailure('key_mismatch');
    }
    const { send, receive } = this.handshake.split();
    this.handshake = null;
    this.send = send;
    this.receive = receive;
    return { pseudonym: cert.pseudonym, notAfter: cert.notAfter };
  }

  /**
   * A transport blob (§6.5) of `content`, at the next sequence number.
   * @param {Uint8Array} content
   * @returns {{ seq: bigint, blob: Uint8Array }}
   */
  seal(content) {
    return this.sealAt(this.nextSend++, content);
  }

  /**
   * The same at a given sequence number: a resend after a resume.
   * @param {bigint} seq
   * @param {Uint8Array} content
   */
  sealAt(seq, content) {
    if (!this.send) throw new Error('no session yet');
    const padded = pad(content, TRANSPORT_PLAINTEXT);
    const sealed = this.send.encryptAt(seq, new Uint8Array(0), padded);
    wipe(padded);
    const blob = new Uint8Array(BLOB_LEN);
    new DataView(blob.buffer).setBigUint64(0, seq);
    blob.set(sealed, 8);
    return { seq, blob };
  }

  /**
   * Reads a transport blob (§6.5): its content, or `'duplicate'` (already
   * had it: drop silently) or `'gap'` (an earlier one is missing: drop,
   * it comes again).
   * @param {Uint8Array} blob
   * @returns {Content | 'duplicate' | 'gap'}
   */
  open(blob) {
    if (!this.receive) throw new Error('no session yet');
    if (blob.length !== BLOB_LEN) throw new SecurityFailure('bad_blob');
    const seq = new DataView(blob.buffer, blob.byteOffset).getBigUint64(0);
    if (seq < this.nextReceive) return 'duplicate';
    if (seq > this.nextReceive) return 'gap';
    let padded;
    try {
      padded = this.receive.decryptAt(seq, new Uint8Array(0), blob.subarray(8));
    } catch {
      throw new SecurityFailure('decryption_failed');
    }
    const content = parseContent(unpad(padded));
    wipe(padded);
    this.nextReceive = seq + 1n;
    return content;
  }

  /** Wipes every key (the chat ended, or quick exit). */
  destroy() {
    this.handshake?.destroy();
    this.handshake = null;
    this.send?.destroy();
    this.receive?.destroy();
    this.send = null;
    this.receive = null;
  }
}
