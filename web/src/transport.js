// @ts-check
/**
 * The ways a browser reaches the relay, each carrying the frames of
 * PROTOCOL.md §4 unchanged: WebTransport (one bidirectional stream whose
 * bytes are those of native QUIC) and WebSocket (one binary message per
 * frame; close codes 4000 + the code of §3.3). `connect` tries
 * WebTransport first and falls back to WebSocket when the browser has no
 * WebTransport, or it fails or does not connect within a few seconds, and
 * says which it uses.
 *
 * A connection (`Link`) sends frame objects (encoded here) and reports
 * each frame it receives, and how it ended: `{ code: 'SHUTTING_DOWN' }`
 * for a close with one of the relay's codes, `{ code: null }` for a
 * connection lost without a close (reconnect and resume, §7.4). A frame
 * that breaks §4 closes the link with MALFORMED_FRAME or FRAME_TOO_LARGE.
 *
 * The relay side of both bindings comes with the same issue; until then
 * only these adapters exist, tested against stand-ins of the browser APIs.
 *
 * @module
 */

import { FrameDecoder, FrameError, decodeFrame, encodeFrame } from './frames.js';

/** The close codes of §3.3, by name. */
export const CLOSE_CODES = Object.freeze({
  NO_ERROR: 0x00,
  MALFORMED_FRAME: 0x01,
  FRAME_TOO_LARGE: 0x02,
  UNEXPECTED_FRAME: 0x03,
  UNSUPPORTED_VERSION: 0x04,
  NOT_AUTHORIZED: 0x05,
  BUSY: 0x06,
  TIMEOUT: 0x07,
  SHUTTING_DOWN: 0x08,
  SLOW_CONSUMER: 0x0a,
  INTERNAL_ERROR: 0x0b,
  PROOF_OF_WORK_FAILED: 0x0d,
  REVOKED: 0x0e,
  DRAINING: 0x0f,
  SECURITY_FAILURE: 0x10,
  RECONNECTING: 0x11,
});
const NAME_OF_CODE = new Map(Object.entries(CLOSE_CODES).map(([name, code]) => [code, name]));
/** WebSocket close codes for the relay's codes start here. */
export const WEBSOCKET_CODE_BASE = 4000;

/** How long WebTransport may take before WebSocket is tried. */
export const WEBTRANSPORT_TIMEOUT_MS = 4000;

/**
 * @typedef {{ code: string | null, reason?: string }} Ending
 * @typedef {object} Link
 * @property {'webtransport' | 'websocket'} kind
 * @property {(frame: Record<string, any> & { type: string }) => void} send
 * @property {(code: keyof typeof CLOSE_CODES) => void} close
 * @property {(handler: (frame: Record<string, any> & { type: string }) => void) => void} onFrame
 * @property {(handler: (ending: Ending) => void) => void} onClose
 */

/** Frames and the end, to whoever listens (and what came before listening). */
class Listeners {
  constructor() {
    /** @type {Array<Record<string, any> & { type: string }>} */
    this.early = [];
    /** @type {((frame: any) => void) | null} */
    this.frameHandler = null;
    /** @type {((ending: Ending) => void) | null} */
    this.closeHandler = null;
    /** @type {Ending | null} */
    this.ending = null;
  }
  /** @param {Record<string, any> & { type: string }} frame */
  frame(frame) {
    if (this.ending) return;
    if (this.frameHandler) this.frameHandler(frame);
    else this.early.push(frame);
  }
  /** @param {Ending} ending */
  end(ending) {
    if (this.ending) return;
    this.ending = ending;
    this.closeHandler?.(ending);
  }
  /** @param {(frame: any) => void} handler */
  onFrame(handler) {
    this.frameHandler = handler;
    for (const f of this.early.splice(0)) handler(f);
  }
  /** @param {(ending: Ending) => void} handler */
  onClose(handler) {
    this.closeHandler = handler;
    if (this.ending) handler(this.ending);
  }
}

/**
 * Opens a WebTransport session and its one bidirectional stream.
 * @param {string} url e.g. `https://relay.example:4433/fluister/1`
 * @param {{ certificateHashes?: Uint8Array[], WebTransportImpl?: any }} [options]
 * @returns {Promise<Link>}
 */
export async function openWebTransport(url, options = {}) {
  const Impl = options.WebTransportImpl ?? globalThis.WebTransport;
  if (!Impl) throw new Error('no WebTransport in this browser');
  const init = options.certificateHashes?.length
    ? { serverCertificateHashes: options.certificateHashes.map((value) => ({ algorithm: 'sha-256', value })) }
    : {};
  const session = new Impl(url, init);
  await session.ready;
  const stream = await session.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const listeners = new Listeners();
  const decoder = new FrameDecoder();
  /** @param {keyof typeof CLOSE_CODES} name */
  const close = (name) => {
    listeners.end({ code: name });
    try {
      session.close({ closeCode: CLOSE_CODES[name], reason: name });
    } catch {
      // Closed already.
    }
  };
  session.closed.then(
    (/** @type {{ closeCode?: number, reason?: string }} */ info) =>
      listeners.end({ code: NAME_OF_CODE.get(info?.closeCode ?? -1) ?? null, reason: info?.reason }),
    () => listeners.end({ code: null }),
  );
  (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        const { frames, error } = decoder.push(value);
        frames.forEach((f) => listeners.frame(f));
        if (error) return close(error.closeCode);
      }
    } catch {
      listeners.end({ code: null });
    }
  })();
  return {
    kind: 'webtransport',
    send: (frame) => void writer.write(encodeFrame(frame)).catch(() => listeners.end({ code: null })),
    close,
    onFrame: (h) => listeners.onFrame(h),
    onClose: (h) => listeners.onClose(h),
  };
}

/**
 * Opens a WebSocket: one binary message per frame.
 * @param {string} url e.g. `wss://relay.example:4433/fluister/1`
 * @param {{ WebSocketImpl?: any }} [options]
 * @returns {Promise<Link>}
 */
export function openWebSocket(url, options = {}) {
  const Impl = options.WebSocketImpl ?? globalThis.WebSocket;
  return new Promise((resolve, reject) => {
    const socket = new Impl(url);
    socket.binaryType = 'arraybuffer';
    const listeners = new Listeners();
    /** @param {keyof typeof CLOSE_CODES} name */
    const close = (name) => {
      listeners.end({ code: name });
      socket.close(WEBSOCKET_CODE_BASE + CLOSE_CODES[name], name);
    };
    socket.onopen = () =>
      resolve({
        kind: 'websocket',
        send: (frame) => socket.send(encodeFrame(frame)),
        close,
        onFrame: (h) => listeners.onFrame(h),
        onClose: (h) => listeners.onClose(h),
      });
    socket.onerror = () => reject(new Error('the WebSocket did not open'));
    socket.onmessage = (/** @type {{ data: unknown }} */ event) => {
      if (typeof event.data === 'string') return close('MALFORMED_FRAME');
      try {
        listeners.frame(decodeFrame(new Uint8Array(/** @type {ArrayBuffer} */ (event.data))));
      } catch (e) {
        close(e instanceof FrameError ? e.closeCode : 'MALFORMED_FRAME');
      }
    };
    socket.onclose = (/** @type {{ code: number, reason: string }} */ event) => {
      const ours = event.code - WEBSOCKET_CODE_BASE;
      const code = event.code >= WEBSOCKET_CODE_BASE ? NAME_OF_CODE.get(ours) ?? null : null;
      listeners.end({ code, reason: event.reason });
    };
  });
}

/**
 * WebTransport if it connects in time, else WebSocket.
 * @param {object} options
 * @param {string} options.webTransportUrl
 * @param {string} options.webSocketUrl
 * @param {Uint8Array[]} [options.certificateHashes]
 * @param {boolean} [options.webTransport] false: WebSocket only
 * @param {number} [options.timeoutMs]
 * @param {any} [options.WebTransportImpl]
 * @param {any} [options.WebSocketImpl]
 * @returns {Promise<Link>}
 */
export async function connect(options) {
  const WebTransportImpl = options.WebTransportImpl ?? globalThis.WebTransport;
  if (options.webTransport !== false && WebTransportImpl) {
    const timeout = options.timeoutMs ?? WEBTRANSPORT_TIMEOUT_MS;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const attempt = openWebTransport(options.webTransportUrl, {
      certificateHashes: options.certificateHashes,
      WebTransportImpl,
    });
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('WebTransport did not connect in time')), timeout);
    });
    try {
      return /** @type {Link} */ (await Promise.race([attempt, late]));
    } catch {
      // A session that connects after all is given up, as §3.3 asks.
      attempt.then((link) => link.close('RECONNECTING'), () => {});
    } finally {
      clearTimeout(timer);
    }
  }
  return openWebSocket(options.webSocketUrl, { WebSocketImpl: options.WebSocketImpl });
}
