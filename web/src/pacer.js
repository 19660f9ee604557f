// @ts-check
/**
 * The sender's pacing rule of PROTOCOL.md §8.1: FORWARD frames at most 64
 * at once and then 32 a second, other frames at most 40 at once and then 5
 * a second (token buckets). Frames leave in the order they were given: one
 * over its budget holds back those behind it, so an END never overtakes
 * the messages before it.
 *
 * @module
 */

export const FORWARD_PER_SEC = 32;
export const FORWARD_BURST = 64;
export const CONTROL_PER_SEC = 5;
export const CONTROL_BURST = 40;

class TokenBucket {
  /** @param {number} rate per second @param {number} burst @param {number} now ms */
  constructor(rate, burst, now) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.at = now;
  }
  /** @param {number} now */
  refill(now) {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
  }
  /** @param {number} now */
  take(now) {
    this.refill(now);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
  /** Milliseconds until a token, from `now`. */
  wait(/** @type {number} */ now) {
    this.refill(now);
    return Math.max(0, Math.ceil(((1 - this.tokens) / this.rate) * 1000));
  }
}

export class Pacer {
  /**
   * @param {object} options
   * @param {(frame: Record<string, any> & { type: string }) => void} options.send
   * @param {() => number} [options.now] milliseconds
   * @param {(fn: () => void, ms: number) => any} [options.setTimer]
   * @param {(timer: any) => void} [options.clearTimer]
   */
  constructor({ send, now = () => performance.now(), setTimer = setTimeout, clearTimer = clearTimeout }) {
    this.send = send;
    this.now = now;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.forward = new TokenBucket(FORWARD_PER_SEC, FORWARD_BURST, now());
    this.control = new TokenBucket(CONTROL_PER_SEC, CONTROL_BURST, now());
    /** @type {Array<Record<string, any> & { type: string }>} */
    this.queue = [];
    this.timer = null;
  }

  /** @param {Record<string, any> & { type: string }} frame */
  push(frame) {
    this.queue.push(frame);
    this.flush();
  }

  flush() {
    while (this.queue.length) {
      const now = this.now();
      const bucket = this.queue[0].type === 'FORWARD' ? this.forward : this.control;
      if (!bucket.take(now)) {
        if (this.timer === null) {
          this.timer = this.setTimer(() => {
            this.timer = null;
            this.flush();
          }, bucket.wait(now));
        }
        return;
      }
      this.send(/** @type {Record<string, any> & { type: string }} */ (this.queue.shift()));
    }
  }

  /**
   * Sends what waits at once, unpaced: the chat ends now, and the relay
   * slows a fast sender with flow control rather than cutting it off.
   */
  sendAll() {
    for (const frame of this.queue.splice(0)) this.send(frame);
    this.clear();
  }

  /** Drops what waits (the link is gone; a resume sends it again). */
  clear() {
    this.queue = [];
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
  }
}
