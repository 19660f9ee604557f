// @ts-check
/**
 * A Web Worker that solves one proof of work (PROTOCOL.md §8.1) off the
 * page's main thread. Post `{ challenge, difficulty }`; it posts back
 * `{ progress: hashes }` now and then and `{ solution }` at the end (or
 * `{ error }`).
 */
import { solve } from './pow.js';

self.onmessage = async (/** @type {MessageEvent} */ event) => {
  const { challenge, difficulty } = event.data;
  try {
    const solution = await solve(challenge, difficulty, {
      onProgress: (hashes) => self.postMessage({ progress: hashes }),
    });
    self.postMessage({ solution });
  } catch (e) {
    self.postMessage({ error: String(e) });
  }
};
