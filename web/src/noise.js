// @ts-check
/**
 * Noise_NX_25519_ChaChaPoly_SHA256 (Noise Protocol Framework, revision 34),
 * the handshake of PROTOCOL.md §6.1, on `@noble/*`.
 *
 * ```
 * NX:
 *   -> e
 *   <- e, ee, s, es
 * ```
 *
 * The young person's page is the initiator: `new Handshake({ initiator:
 * true, prologue })`, then `writeMessage(payload)` (message 1, payload in
 * clear), `readMessage(message2)` (its payload decrypted; `remoteStatic`
 * is the key the handshake authenticated), and `split()` for the two
 * transport keys. The responder side exists for the tests and round trips.
 * Every DH result is checked: an all-zero output (a low-order point from
 * the peer) aborts the handshake, as §6.1 requires. Keys are wiped from
 * the objects that held them once they are no longer needed.
 *
 * @module
 */

import { x25519 } from '@noble/curves/ed25519.js';
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { concatBytes as concat } from '@noble/hashes/utils.js';

export const PROTOCOL_NAME = 'Noise_NX_25519_ChaChaPoly_SHA256';
const DH_LEN = 32;
const HASH_LEN = 32;
const TAG_LEN = 16;
/** Noise's largest message; Fluister's are far smaller. */
const MAX_MESSAGE = 65535;

/** A handshake or transport message that must not be accepted. */
export class NoiseError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'NoiseError';
  }
}

const ascii = (/** @type {string} */ s) => new TextEncoder().encode(s);

/** Overwrites key material that is no longer needed. */
export function wipe(/** @type {Uint8Array | null | undefined} */ bytes) {
  bytes?.fill(0);
}

/**
 * The 12-byte ChaCha20-Poly1305 nonce of Noise: 4 zero bytes, then `n` as a
 * u64 little-endian (also §6.5's `nonce(seq)`).
 * @param {bigint} n
 */
export function nonce(n) {
  const out = new Uint8Array(12);
  new DataView(out.buffer).setBigUint64(4, n, true);
  return out;
}

/**
 * Noise's HKDF with two outputs (§4.3 of the Noise spec): RFC 5869 with
 * the chaining key as salt and an empty info, 64 bytes cut in two.
 * @param {Uint8Array} chainingKey
 * @param {Uint8Array} ikm
 */
function hkdf2(chainingKey, ikm) {
  const out = hkdf(sha256, ikm, chainingKey, new Uint8Array(0), 2 * HASH_LEN);
  const keys = [out.slice(0, HASH_LEN), out.slice(HASH_LEN)];
  wipe(out);
  return keys;
}

/**
 * A direction's key and counter (Noise's CipherState).
 */
export class CipherState {
  /** @param {Uint8Array | null} key */
  constructor(key = null) {
    this.key = key;
    this.n = 0n;
  }

  hasKey() {
    return this.key !== null;
  }

  /**
   * Encrypts with the next nonce.
   * @param {Uint8Array} ad
   * @param {Uint8Array} plaintext
   */
  encryptWithAd(ad, plaintext) {
    if (!this.key) return plaintext;
    const out = this.encryptAt(this.n, ad, plaintext);
    this.n += 1n;
    return out;
  }

  /**
   * Decrypts with the next nonce; the nonce moves on only on success.
   * @param {Uint8Array} ad
   * @param {Uint8Array} ciphertext
   */
  decryptWithAd(ad, ciphertext) {
    if (!this.key) return ciphertext;
    const out = this.decryptAt(this.n, ad, ciphertext);
    this.n += 1n;
    return out;
  }

  /**
   * With an explicit nonce, as §6.5 sends it.
   * @param {bigint} n
   * @param {Uint8Array} ad
   * @param {Uint8Array} plaintext
   */
  encryptAt(n, ad, plaintext) {
    if (!this.key) throw new NoiseError('no key');
    if (n >= 0xffffffffffffffffn) throw new NoiseError('nonce exhausted');
    return chacha20poly1305(this.key, nonce(n), ad).encrypt(plaintext);
  }

  /**
   * @param {bigint} n
   * @param {Uint8Array} ad
   * @param {Uint8Array} ciphertext
   */
  decryptAt(n, ad, ciphertext) {
    if (!this.key) throw new NoiseError('no key');
    if (n >= 0xffffffffffffffffn) throw new NoiseError('nonce exhausted');
    try {
      return chacha20poly1305(this.key, nonce(n), ad).decrypt(ciphertext);
    } catch {
      throw new NoiseError('decryption failed');
    }
  }

  destroy() {
    wipe(this.key);
    this.key = null;
  }
}

/**
 * The NX handshake from one side.
 */
export class Handshake {
  /**
   * @param {object} options
   * @param {boolean} options.initiator
   * @param {Uint8Array} options.prologue
   * @param {Uint8Array} [options.staticKey] the responder's X25519 secret key
   * @param {Uint8Array} [options.ephemeralKey] a fixed ephemeral secret (vectors only; fresh random otherwise)
   */
  constructor({ initiator, prologue, staticKey, ephemeralKey }) {
    if (!initiator && !staticKey) throw new TypeError('the responder needs its static key');
    this.initiator = initiator;
    this.s = staticKey ?? null;
    this.e = ephemeralKey ?? x25519.utils.randomSecretKey();
    /** @type {Uint8Array | null} */
    this.re = null;
    /** @type {Uint8Array | null} the peer's static key, once authenticated */
    this.remoteStatic = null;
    const name = ascii(PROTOCOL_NAME);
    this.h = name.length <= HASH_LEN ? concat(name, new Uint8Array(HASH_LEN - name.length)) : sha256(name);
    this.ck = this.h.slice();
    this.cipher = new CipherState();
    this.step = 0;
    this.mixHash(prologue);
  }

  /** @param {Uint8Array} data */
  mixHash(data) {
    this.h = sha256(concat(this.h, data));
  }

  /** @param {Uint8Array} ikm */
  mixKey(ikm) {
    const [ck, k] = hkdf2(this.ck, ikm);
    wipe(this.ck);
    this.ck = ck;
    this.cipher.destroy();
    this.cipher = new CipherState(k);
  }

  /** @param {Uint8Array} plaintext */
  encryptAndHash(plaintext) {
    const ciphertext = this.cipher.encryptWithAd(this.h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  /** @param {Uint8Array} ciphertext */
  decryptAndHash(ciphertext) {
    const plaintext = this.cipher.decryptWithAd(this.h, ciphertext);
    this.mixHash(ciphertext);
    return plaintext;
  }

  /**
   * X25519, refusing an all-zero result (§6.1).
   * @param {Uint8Array} secret
   * @param {Uint8Array} pub
   */
  dh(secret, pub) {
    let shared;
    try {
      shared = x25519.getSharedSecret(secret, pub);
    } catch {
      throw new NoiseError('a low-order public key');
    }
    if (shared.every((b) => b === 0)) throw new NoiseError('a low-order public key');
    return shared;
  }

  /** @param {Uint8Array} shared */
  mixDh(shared) {
    this.mixKey(shared);
    wipe(shared);
  }

  /**
   * The next handshake message of this side, carrying `payload`.
   * @param {Uint8Array} payload
   */
  writeMessage(payload) {
    if (this.initiator && this.step === 0) {
      const ePub = x25519.getPublicKey(this.e);
      this.mixHash(ePub);
      const out = concat(ePub, this.encryptAndHash(payload));
      this.step = 1;
      return this.checkSize(out);
    }
    if (!this.initiator && this.step === 1 && this.re && this.s) {
      const ePub = x25519.getPublicKey(this.e);
      this.mixHash(ePub);
      this.mixDh(this.dh(this.e, this.re));
      const sEnc = this.encryptAndHash(x25519.getPublicKey(this.s));
      this.mixDh(this.dh(this.s, this.re));
      const out = concat(ePub, sEnc, this.encryptAndHash(payload));
      this.step = 2;
      return this.checkSize(out);
    }
    throw new NoiseError('not this side’s turn to write');
  }

  /**
   * Reads the peer's next handshake message; returns its payload.
   * @param {Uint8Array} message
   */
  readMessage(message) {
    this.checkSize(message);
    if (!this.initiator && this.step === 0) {
      if (message.length < DH_LEN) throw new NoiseError('message 1 too short');
      this.re = message.slice(0, DH_LEN);
      this.mixHash(this.re);
      const payload = this.decryptAndHash(message.subarray(DH_LEN));
      this.step = 1;
      return payload;
    }
    if (this.initiator && this.step === 1) {
      if (message.length < 2 * DH_LEN + 2 * TAG_LEN) throw new NoiseError('message 2 too short');
      this.re = message.slice(0, DH_LEN);
      this.mixHash(this.re);
      this.mixDh(this.dh(this.e, this.re));
      const rs = this.decryptAndHash(message.subarray(DH_LEN, 2 * DH_LEN + TAG_LEN));
      this.mixDh(this.dh(this.e, rs));
      const payload = this.decryptAndHash(message.subarray(2 * DH_LEN + TAG_LEN));
      this.remoteStatic = rs;
      this.step = 2;
      return payload;
    }
    throw new NoiseError('not this side’s turn to read');
  }

  /** @param {Uint8Array} message */
  checkSize(message) {
    if (message.length > MAX_MESSAGE) throw new NoiseError('message too long');
    return message;
  }

  /** Whether both handshake messages have passed. */
  isFinished() {
    return this.step === 2;
  }

  /**
   * The transport keys after message 2: `send` and `receive` for this side
   * (the first key encrypts initiator → responder). Wipes the handshake's
   * secrets.
   */
  split() {
    if (!this.isFinished()) throw new NoiseError('the handshake is not finished');
    const [k1, k2] = hkdf2(this.ck, new Uint8Array(0));
    const handshakeHash = this.h.slice();
    this.destroy();
    const [send, receive] = this.initiator ? [k1, k2] : [k2, k1];
    return { send: new CipherState(send), receive: new CipherState(receive), handshakeHash };
  }

  destroy() {
    wipe(this.e);
    wipe(this.ck);
    this.cipher.destroy();
  }
}
