// @ts-check
/**
 * Runs the young person's state machine (`client.js`) over real links
 * (`transport.js`): the one place with timers and promises. It connects,
 * feeds frames in, sends what the machine asks, solves the proof of work
 * it asks for (in a Web Worker on a page), ticks once a second for ACKs,
 * paces what it sends by the rule of §8.1 (`pacer.js`), and reconnects after a lost connection with backoff and jitter, so that
 * the machine resumes (§7.4).
 *
 * ```js
 * const chat = startChat({ orgKey, connect: () => connect(urls), solve, onEvent });
 * chat.join(topic, language); chat.send('Hoi'); chat.end();
 * ```
 *
 * Every event of proto/EVENTS.md reaches `onEvent`, plus `transport`
 * (`{ transport: 'webtransport' | 'websocket' }`) each time a link opens.
 *
 * @module
 */

import { YoungPersonClient } from './client.js';
import { Pacer } from './pacer.js';

/** Close codes after which the young person does not reconnect (§3.3 "stop"). */
const STOP = new Set([
  'NO_ERROR',
  'MALFORMED_FRAME',
  'FRAME_TOO_LARGE',
  'UNEXPECTED_FRAME',
  'UNSUPPORTED_VERSION',
  'NOT_AUTHORIZED',
  'BUSY',
  'SHUTTING_DOWN',
  'PROOF_OF_WORK_FAILED',
  'REVOKED',
]);
const CODE_NAMES = {
  UNSUPPORTED_VERSION: 'unsupported_version',
  PROOF_OF_WORK_FAILED: 'proof_of_work_failed',
  NOT_AUTHORIZED: 'not_authorized',
};

/** Reconnect delays: 0.5 s doubling to 8 s, each with up to half again of jitter. */
export function backoff(/** @type {number} */ attempt, random = Math.random) {
  const base = Math.min(500 * 2 ** attempt, 8000);
  return base + Math.floor(random() * base * 0.5);
}

/**
 * @param {object} options
 * @param {Uint8Array} options.orgKey
 * @param {() => Promise<import('./transport.js').Link>} options.connect
 * @param {(challenge: Uint8Array, difficulty: number) => Promise<Uint8Array>} options.solve
 * @param {(event: Record<string, any>) => void} options.onEvent
 * @param {() => number} [options.now] unix seconds
 * @param {number} [options.maxAttempts] reconnects before giving up
 * @param {(ms: number) => Promise<void>} [options.sleep]
 */
export function startChat(options) {
  const now = options.now ?? (() => Math.floor(Date.now() / 1000));
  const sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  const client = new YoungPersonClient({ orgKey: options.orgKey, now });
  /** @type {import('./transport.js').Link | null} */
  let link = null;
  let ended = false;
  let attempts = 0;
  const pacer = new Pacer({ send: (frame) => link?.send(frame) });

  const pump = () => {
    for (let frame; (frame = client.pollTransmit()); ) if (link) pacer.push(frame);
    for (let work; (work = client.pollWork()); ) {
      const { challenge, difficulty, purpose } = work;
      options.solve(challenge, difficulty).then((solution) => {
        client.joinWith(solution, purpose);
        pump();
      });
    }
    for (let event; (event = client.pollEvent()); ) {
      options.onEvent(event);
      if (event.event === 'ended' || event.event === 'closed' || (event.event === 'error' && event.fatal)) {
        finish();
      }
    }
  };

  const finish = () => {
    if (ended) return;
    ended = true;
    clearInterval(ticker);
    // An END must not wait behind its pace when the link closes next.
    pacer.sendAll();
    const last = link;
    link = null;
    last?.close('NO_ERROR');
  };

  const open = async () => {
    while (!ended) {
      try {
        const opened = await options.connect();
        if (ended) return opened.close('NO_ERROR');
        link = opened;
        attempts = 0;
        options.onEvent({ event: 'transport', v: 1, transport: opened.kind });
        opened.onFrame((frame) => {
          if (link !== opened) return;
          client.handleFrame(frame);
          pump();
        });
        opened.onClose((ending) => {
          if (link !== opened || ended) return;
          link = null;
          // What waited for its turn goes again after the resume.
          pacer.clear();
          if (ending.code && STOP.has(ending.code)) {
            if (ending.code !== 'NO_ERROR' && ending.code !== 'BUSY' && ending.code !== 'SHUTTING_DOWN') {
              const code = CODE_NAMES[/** @type {keyof typeof CODE_NAMES} */ (ending.code)] ?? ending.code.toLowerCase();
              options.onEvent({ event: 'error', v: 1, message: 'the relay closed the connection', fatal: true, code });
            } else if (ending.code !== 'NO_ERROR') {
              // Not errors for a young person: the wait ends (EVENTS.md).
              client.finish(ending.code === 'BUSY' ? 'busy' : 'relay_shutdown');
              pump();
            }
            return finish();
          }
          client.lost();
          pump();
          void open();
        });
        client.connected();
        pump();
        return;
      } catch {
        if (attempts >= (options.maxAttempts ?? 8)) {
          options.onEvent({ event: 'error', v: 1, message: 'the relay could not be reached', fatal: true, code: 'unreachable' });
          return finish();
        }
        await sleep(backoff(attempts++));
      }
    }
  };

  const ticker = setInterval(() => {
    client.tick();
    pump();
  }, 1000);
  void open();

  return {
    /** @param {number | null} topic @param {string | null} language */
    join(topic, language) {
      client.join(topic, language);
      pump();
    },
    /** @param {string} text */
    send(text) {
      const id = client.send(text);
      pump();
      return id;
    },
    end() {
      client.end();
      pump();
      finish();
    },
    /** For a quick exit: wipes keys at once, sends nothing more. */
    wipe() {
      client.finish(null);
      finish();
    },
  };
}
