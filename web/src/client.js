// @ts-check
/**
 * The young person's side of fluister/1 as a state machine without I/O,
 * the way the relay's core is written: a driver (the page, or a test)
 * feeds it what happens and carries out what it asks.
 *
 * Inputs: `connected()` when the control stream is up, `handleFrame(frame)`
 * for each frame from the relay (decoded by `frames.js`), `join(...)` when
 * the young person chose, `joinWith(solution)` once the proof of work it
 * asked for is solved, `send(text)`, `tick()` once a second (acks go out
 * on this tick, §6.4), `lost()` and `end()`.
 * Outputs, drained in order: `pollTransmit()` gives frames to send,
 * `pollEvent()` the events of proto/EVENTS.md (`{ event: 'queued',
 * position: 3 }`), and `pollWork()` the proof of work to solve (`{ challenge,
 * difficulty, purpose: 'join' | 'proof' }`).
 *
 * A connection that drops without our doing (`lost()`) is taken up again
 * (§7.4): the next `connected()` sends RESUME with the chat's capability,
 * or the queue ticket, instead of HELLO. The client keeps every blob the
 * counsellor has not acknowledged (messages and its own ACKs, §7.4 point
 * 3) and sends them again, same sequence numbers, after RESUMED or
 * PEER_BACK; during the handshake it sends message 1 again.
 *
 * @module
 */

import { ClientSession, SecurityFailure, ackContent, textChunks } from './e2e.js';

/** @typedef {Record<string, any> & { event: string, v: 1 }} ClientEvent */

/** Message frames a sender keeps unacknowledged per chat (§8). */
export const MAX_UNACKED_FRAMES = 128;
/** Own ACKs kept for resending per chat; the oldest is dropped (§8). */
export const MAX_ACK_LOG = 64;
/** Lines typed before the chat could take them (§8). */
export const MAX_HELD_LINES = 100;

/** What an END from the relay means to the young person (EVENTS.md). */
const ENDED_BY_PEER = {
  user_ended: 'peer_ended',
  security_failure: 'security_failure',
  blocked: 'blocked',
  peer_disconnected: 'peer_disconnected',
  relay_shutdown: 'relay_shutdown',
  counsellor_revoked: 'counsellor_revoked',
};

const UNAVAILABLE_ENDS = { busy: 'busy', wait_exceeded: 'wait_exceeded' };

/**
 * @typedef {object} ClientOptions
 * @property {Uint8Array} orgKey the organisation key the page pins
 * @property {() => number} now unix seconds, for certificate checks
 */

export class YoungPersonClient {
  /** @param {ClientOptions} options */
  constructor({ orgKey, now }) {
    this.orgKey = orgKey;
    this.now = now;
    /** @type {'connecting' | 'welcomed' | 'joining' | 'waiting' | 'handshaking' | 'chatting' | 'transferring' | 'ended'} */
    this.state = 'connecting';
    /** What RESUME presents on the next connection, while the connection is away. */
    /** @type {Uint8Array | null} */
    this.resumeWith = null;
    /** Sealed blobs the other side has not acknowledged, oldest first. */
    /** @type {{ seq: bigint, blob: Uint8Array, ack: boolean }[]} */
    this.outstanding = [];
    /** @type {Uint8Array | null} handshake message 1, until message 2 */
    this.message1 = null;
    /** @type {Record<string, any>[]} */
    this.transmit = [];
    /** @type {ClientEvent[]} */
    this.events = [];
    /** @type {{ challenge: Uint8Array, difficulty: number, purpose: 'join' | 'proof' }[]} */
    this.work = [];
    /** @type {Record<string, any> | null} */
    this.welcome = null;
    this.expectedTopics = 0;
    /** @type {{ id: number, nl: string, en: string }[]} */
    this.topics = [];
    /** @type {{ topic: number | null, language: string | null } | null} */
    this.choice = null;
    /** The queue ticket (JOINED) and the chat capability (PAIRED): memory only. */
    this.ticket = null;
    this.capability = null;
    this.chat = 0;
    /** @type {ClientSession | null} */
    this.session = null;
    this.counsellor = null;
    this.everPaired = false;
    /** Message ids: `sent` and not yet acknowledged, by the seq of their last chunk. */
    this.nextId = 1;
    /** @type {{ id: number, lastSeq: bigint }[]} */
    this.unacknowledged = [];
    /** Lines typed before the chat could take them (at most 100, §8). */
    /** @type {{ id: number, text: string }[]} */
    this.held = [];
    this.ackOwed = false;
    this.parts = '';
  }

  /** @param {string} event @param {Record<string, any>} [fields] */
  emit(event, fields = {}) {
    this.events.push({ event, v: 1, ...fields });
  }

  pollTransmit() {
    return this.transmit.shift() ?? null;
  }

  pollEvent() {
    return this.events.shift() ?? null;
  }

  pollWork() {
    return this.work.shift() ?? null;
  }

  /**
   * The control stream is up: HELLO goes first (§7.1), or RESUME after a
   * lost connection (§7.4).
   */
  connected() {
    if (this.resumeWith) {
      this.transmit.push({ type: 'RESUME', capability: this.resumeWith });
      return;
    }
    this.transmit.push({ type: 'HELLO', version: 1, role: 'client' });
  }

  /**
   * The connection dropped without our doing. What can be resumed is
   * resumed on the next connection; anything else starts again.
   */
  lost() {
    if (this.state === 'ended') return;
    const inChat = ['handshaking', 'chatting'].includes(this.state);
    this.resumeWith = inChat ? this.capability : this.ticket;
    if (!this.resumeWith) {
      // Nothing to take up: a fresh HELLO, topics and JOIN.
      this.topics = [];
      this.welcome = null;
      this.state = 'connecting';
    }
    this.emit('reconnecting', { reason: 'lost' });
  }

  /**
   * The young person chose a topic and language (ids and codes from the
   * `connected` event; `null` for none): the proof of work is asked for.
   * @param {number | null} topic
   * @param {string | null} language
   */
  join(topic, language) {
    if (this.state !== 'welcomed' || !this.welcome) throw new Error('not ready to join');
    this.choice = { topic, language };
    this.state = 'joining';
    this.work.push({
      challenge: this.welcome.powChallenge,
      difficulty: this.welcome.powDifficulty,
      purpose: 'join',
    });
  }

  /**
   * The proof of work asked for is solved.
   * @param {Uint8Array} solution
   * @param {'join' | 'proof'} purpose
   */
  joinWith(solution, purpose = 'join') {
    if (purpose === 'proof') {
      if (this.state === 'waiting') this.transmit.push({ type: 'PROOF', solution });
      return;
    }
    if (this.state !== 'joining' || !this.choice) return;
    this.transmit.push({ type: 'JOIN', ...this.choice, powSolution: solution });
    this.state = 'waiting';
  }

  /**
   * One frame from the relay.
   * @param {Record<string, any> & { type: string }} frame
   */
  handleFrame(frame) {
    if (this.state === 'ended') return;
    switch (frame.type) {
      case 'WELCOME':
        this.welcome = frame;
        this.expectedTopics = frame.topics;
        if (frame.topics === 0) this.welcomed();
        return;
      case 'TOPIC':
        this.topics.push({ id: frame.id, nl: frame.labelNl, en: frame.labelEn });
        if (this.topics.length === this.expectedTopics) this.welcomed();
        return;
      case 'JOINED':
        this.ticket = frame.resume;
        return;
      case 'QUEUED':
        this.resumed();
        this.emit('queued', {
          position: frame.position,
          ...(frame.estimatedWaitSecs === null ? {} : { estimated_wait_secs: frame.estimatedWaitSecs }),
        });
        return;
      case 'CHALLENGE':
        this.work.push({ challenge: frame.powChallenge, difficulty: frame.powDifficulty, purpose: 'proof' });
        return;
      case 'UNAVAILABLE':
        if (frame.reason === 'closed') {
          this.emit('closed', frame.nextOpen === null ? {} : { next_open: Number(frame.nextOpen) });
          this.finish(null);
        } else {
          this.finish(UNAVAILABLE_ENDS[/** @type {'busy' | 'wait_exceeded'} */ (frame.reason)]);
        }
        return;
      case 'PAIRED':
        this.resumed();
        return this.paired(frame);
      case 'RESUMED':
        this.chat = frame.chat;
        this.resumed();
        return this.resend();
      case 'RESUME_FAILED':
        // The chat (or place) ended while we were away; the relay closes.
        return this.finish('ended_while_away');
      case 'FORWARD':
        if (frame.chat === this.chat) this.forwarded(frame.blob);
        return;
      case 'END':
        if (frame.chat !== this.chat) return;
        if (frame.reason === 'transferred') {
          this.session?.destroy();
          this.session = null;
          this.state = 'transferring';
          return;
        }
        return this.finish(ENDED_BY_PEER[/** @type {keyof typeof ENDED_BY_PEER} */ (frame.reason)] ?? 'peer_ended');
      case 'PEER_AWAY':
        if (frame.chat === this.chat) this.emit('peer_away');
        return;
      case 'PEER_BACK':
        if (frame.chat !== this.chat) return;
        this.emit('peer_back');
        return this.resend();
      default:
        this.emit('error', { message: `unexpected ${frame.type}`, fatal: true, code: 'unexpected_frame' });
        this.state = 'ended';
    }
  }

  /** An answer to RESUME arrived: we are back. */
  resumed() {
    if (!this.resumeWith) return;
    this.resumeWith = null;
    this.emit('resumed');
  }

  /**
   * What the other side may have missed, again: message 1 during the
   * handshake, else every blob it has not acknowledged, in order.
   */
  resend() {
    if (this.state === 'handshaking' && this.message1) {
      this.transmit.push({ type: 'FORWARD', chat: this.chat, blob: this.message1 });
      return;
    }
    for (const { blob } of this.outstanding) this.transmit.push({ type: 'FORWARD', chat: this.chat, blob });
  }

  welcomed() {
    this.state = 'welcomed';
    this.emit('connected', { topics: this.topics, languages: this.welcome?.languages ?? [] });
  }

  /** @param {Record<string, any>} frame */
  paired(frame) {
    this.session?.destroy();
    this.chat = frame.chat;
    this.capability = frame.resume;
    this.session = new ClientSession({ orgKey: this.orgKey, pairingId: frame.pairingId });
    this.state = 'handshaking';
    this.outstanding = [];
    this.message1 = this.session.start();
    this.transmit.push({ type: 'FORWARD', chat: this.chat, blob: this.message1 });
  }

  /** @param {Uint8Array} blob */
  forwarded(blob) {
    const session = this.session;
    if (!session) return;
    try {
      if (this.state === 'handshaking') {
        const { pseudonym } = session.finish(blob, this.now());
        const transfer = this.everPaired;
        this.everPaired = true;
        this.counsellor = pseudonym;
        this.state = 'chatting';
        this.message1 = null;
        this.emit(transfer ? 'transferred' : 'paired', { counsellor: pseudonym });
        for (const line of this.held.splice(0)) this.sendNow(line.id, line.text);
        return;
      }
      const content = session.open(blob);
      if (content === 'duplicate' || content === 'gap') return;
      if (content.kind === 'ack') return this.acknowledged(content.upTo);
      this.ackOwed = true;
      if (content.kind === 'text') {
        this.parts += content.text;
        if (content.final) {
          this.emit('message', { text: this.parts });
          this.parts = '';
        }
      }
    } catch (e) {
      if (!(e instanceof SecurityFailure)) throw e;
      // §6.1: END(SECURITY_FAILURE) and nothing else.
      this.transmit.push({ type: 'END', chat: this.chat, reason: 'security_failure' });
      this.finish('security_failure', e.reason);
    }
  }

  /** @param {bigint} upTo */
  acknowledged(upTo) {
    if (this.session && upTo > this.session.nextSend) {
      this.transmit.push({ type: 'END', chat: this.chat, reason: 'security_failure' });
      return this.finish('security_failure', 'ack_of_unsent');
    }
    this.outstanding = this.outstanding.filter((m) => m.seq >= upTo);
    while (this.unacknowledged.length && this.unacknowledged[0].lastSeq < upTo) {
      const done = /** @type {{ id: number }} */ (this.unacknowledged.shift());
      this.emit('delivered', { id: done.id });
    }
  }

  /**
   * A line the young person typed; its id, for `sent`/`delivered`.
   * @param {string} text
   */
  send(text) {
    const id = this.nextId++;
    if (this.state === 'chatting') this.sendNow(id, text);
    else if (this.held.length < MAX_HELD_LINES && this.state !== 'ended') this.held.push({ id, text });
    else this.emit('not_delivered', { id });
    return id;
  }

  /** @param {number} id @param {string} text */
  sendNow(id, text) {
    let chunks;
    try {
      chunks = textChunks(text);
    } catch {
      this.emit('error', { message: 'message too long', fatal: false });
      this.emit('not_delivered', { id });
      return;
    }
    const unacked = this.outstanding.filter((m) => !m.ack).length;
    if (unacked + chunks.length > MAX_UNACKED_FRAMES) {
      this.emit('error', { message: 'too many messages waiting; try again shortly', fatal: false });
      this.emit('not_delivered', { id });
      return;
    }
    let lastSeq = 0n;
    for (const chunk of chunks) {
      const sealed = /** @type {ClientSession} */ (this.session).seal(chunk);
      lastSeq = sealed.seq;
      this.outstanding.push({ ...sealed, ack: false });
      this.transmit.push({ type: 'FORWARD', chat: this.chat, blob: sealed.blob });
    }
    this.unacknowledged.push({ id, lastSeq });
    this.emit('sent', { id });
  }

  /** Once a second: an ACK if one is owed (§6.4). */
  tick() {
    if (this.state === 'chatting' && this.ackOwed && this.session) {
      this.ackOwed = false;
      // An ACK takes a sequence number too: it is resent like a message.
      const sealed = this.session.seal(ackContent(this.session.nextReceive));
      this.outstanding.push({ ...sealed, ack: true });
      const acks = this.outstanding.filter((m) => m.ack);
      if (acks.length > MAX_ACK_LOG) this.outstanding.splice(this.outstanding.indexOf(acks[0]), 1);
      this.transmit.push({ type: 'FORWARD', chat: this.chat, blob: sealed.blob });
    }
  }

  /** The young person ends the chat (or leaves the queue). */
  end() {
    if (this.state === 'ended') return;
    if (this.state === 'chatting' || this.state === 'handshaking') {
      this.tick();
      this.transmit.push({ type: 'END', chat: this.chat, reason: 'user_ended' });
      this.finish('you_ended');
    } else {
      this.finish(this.state === 'waiting' ? 'left_queue' : 'you_ended');
    }
  }

  /**
   * The end: what was not confirmed is not delivered, keys are wiped.
   * @param {string | null} reason `null` after `closed`
   * @param {string} [detail]
   */
  finish(reason, detail) {
    for (const m of this.unacknowledged.splice(0)) this.emit('not_delivered', { id: m.id });
    for (const m of this.held.splice(0)) this.emit('not_delivered', { id: m.id });
    if (reason) this.emit('ended', detail ? { reason, detail } : { reason });
    this.session?.destroy();
    this.session = null;
    this.outstanding = [];
    this.message1 = null;
    this.resumeWith = null;
    this.ticket?.fill(0);
    this.capability?.fill(0);
    this.ticket = null;
    this.capability = null;
    this.state = 'ended';
  }
}
