// @ts-check
/**
 * The proof of work of PROTOCOL.md §8.1: find 8 bytes `s` such that
 * SHA-256("fluister pow v1" || challenge || s) starts with `difficulty`
 * zero bits (bit 7 of byte 0 first). The reference solver counts `s` up
 * from 0 as a big-endian u64.
 *
 * `solve` runs in the calling thread and yields every few thousand hashes
 * when given `onProgress`; the page runs it in a Web Worker
 * (`pow-worker.js`) so that it stays responsive while a phone works for
 * seconds at the higher difficulties.
 *
 * @module
 */

import { sha256 } from '@noble/hashes/sha2.js';

export const POW_LABEL = new TextEncoder().encode('fluister pow v1');
export const MAX_DIFFICULTY = 20;

/**
 * Zero bits at the start of `digest`.
 * @param {Uint8Array} digest
 */
export function leadingZeroBits(digest) {
  let bits = 0;
  for (const byte of digest) {
    if (byte === 0) {
      bits += 8;
      continue;
    }
    return bits + Math.clz32(byte) - 24;
  }
  return bits;
}

/**
 * Whether `solution` solves `challenge` at `difficulty`.
 * @param {Uint8Array} challenge 16 bytes
 * @param {number} difficulty
 * @param {Uint8Array} solution 8 bytes
 */
export function powValid(challenge, difficulty, solution) {
  const input = new Uint8Array(POW_LABEL.length + 24);
  input.set(POW_LABEL, 0);
  input.set(challenge, POW_LABEL.length);
  input.set(solution, POW_LABEL.length + 16);
  return leadingZeroBits(sha256(input)) >= difficulty;
}

/**
 * Finds a solution. Expected work is 2^difficulty hashes.
 * @param {Uint8Array} challenge 16 bytes
 * @param {number} difficulty 0..=20
 * @param {{ signal?: AbortSignal, onProgress?: (hashes: number) => void }} [options]
 * @returns {Promise<Uint8Array>} the 8-byte solution
 */
export async function solve(challenge, difficulty, options = {}) {
  if (challenge.length !== 16) throw new TypeError('a challenge is 16 bytes');
  if (!Number.isInteger(difficulty) || difficulty < 0 || difficulty > MAX_DIFFICULTY) {
    throw new RangeError(`difficulty ${difficulty}`);
  }
  const input = new Uint8Array(POW_LABEL.length + 24);
  input.set(POW_LABEL, 0);
  input.set(challenge, POW_LABEL.length);
  const counter = new DataView(input.buffer, POW_LABEL.length + 16, 8);
  for (let s = 0n; ; s++) {
    counter.setBigUint64(0, s);
    if (leadingZeroBits(sha256(input)) >= difficulty) return input.slice(POW_LABEL.length + 16);
    if ((s & 0x3fffn) === 0x3fffn) {
      options.signal?.throwIfAborted();
      options.onProgress?.(Number(s + 1n));
      // Let the event loop breathe (a worker's messages, an abort).
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }
}
