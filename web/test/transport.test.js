// The two browser bindings against stand-ins of the browser's WebTransport
// and WebSocket: frames both ways, bad input closing with the right code,
// close codes mapped back to names, and the fallback to WebSocket.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { connect, openWebSocket, openWebTransport } from '../src/transport.js';
import { decodeFrame, encodeFrame } from '../src/frames.js';

const queued = { type: 'QUEUED', position: 2, estimatedWaitSecs: null };
const hello = { type: 'HELLO', version: 1, role: 'client' };

/** A WebTransport stand-in: one stream, the relay's side in `relay`. */
class FakeWebTransport {
  static instances = [];
  constructor(url, init) {
    this.url = url;
    this.init = init;
    this.written = [];
    let push;
    this.relay = {
      write: (bytes) => push.enqueue(bytes),
      finish: () => push.close(),
    };
    this.readable = new ReadableStream({ start: (c) => void (push = c) });
    this.writable = new WritableStream({ write: (chunk) => void this.written.push(chunk) });
    let settle;
    this.closed = new Promise((resolve, reject) => void (settle = { resolve, reject }));
    this.settle = settle;
    this.ready = FakeWebTransport.never ? new Promise(() => {}) : Promise.resolve();
    FakeWebTransport.instances.push(this);
  }
  async createBidirectionalStream() {
    return { readable: this.readable, writable: this.writable };
  }
  close(info) {
    this.closedWith = info;
    this.settle.resolve(info);
  }
}

/** A WebSocket stand-in. */
class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    FakeWebSocket.instances.push(this);
    queueMicrotask(() => this.onopen?.());
  }
  send(bytes) {
    this.sent.push(bytes);
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

test('WebTransport carries frames as a byte stream, cut anywhere, and pins the certificate hash', async () => {
  const hash = new Uint8Array(32).fill(1);
  const link = await openWebTransport('https://relay/fluister/1', { certificateHashes: [hash], WebTransportImpl: FakeWebTransport });
  const wt = FakeWebTransport.instances.at(-1);
  assert.deepEqual(wt.init, { serverCertificateHashes: [{ algorithm: 'sha-256', value: hash }] });
  const got = [];
  link.onFrame((f) => got.push(f));
  link.send(hello);
  await tick();
  assert.deepEqual(decodeFrame(wt.written[0]), hello);
  const bytes = Uint8Array.from([...encodeFrame(queued), ...encodeFrame(queued)]);
  wt.relay.write(bytes.subarray(0, 5));
  wt.relay.write(bytes.subarray(5));
  await tick();
  assert.deepEqual(got, [queued, queued]);
  const ended = new Promise((resolve) => link.onClose(resolve));
  wt.settle.resolve({ closeCode: 0x08, reason: 'SHUTTING_DOWN' });
  assert.deepEqual(await ended, { code: 'SHUTTING_DOWN', reason: 'SHUTTING_DOWN' });
});

test('bytes that are not a frame close the WebTransport session with MALFORMED_FRAME', async () => {
  const link = await openWebTransport('https://relay/fluister/1', { WebTransportImpl: FakeWebTransport });
  const wt = FakeWebTransport.instances.at(-1);
  const ended = new Promise((resolve) => link.onClose(resolve));
  wt.relay.write(Uint8Array.of(0x7f, 0, 0));
  assert.deepEqual(await ended, { code: 'MALFORMED_FRAME' });
  assert.deepEqual(wt.closedWith, { closeCode: 0x01, reason: 'MALFORMED_FRAME' });
});

test('WebSocket carries one frame per binary message; text or half a frame closes with 4001', async () => {
  const link = await openWebSocket('wss://relay/fluister/1', { WebSocketImpl: FakeWebSocket });
  const ws = FakeWebSocket.instances.at(-1);
  assert.equal(ws.binaryType, 'arraybuffer');
  const got = [];
  link.onFrame((f) => got.push(f));
  link.send(hello);
  assert.deepEqual(decodeFrame(ws.sent[0]), hello);
  ws.onmessage({ data: encodeFrame(queued).buffer });
  assert.deepEqual(got, [queued]);
  const ended = new Promise((resolve) => link.onClose(resolve));
  ws.onmessage({ data: 'hello' });
  assert.deepEqual(await ended, { code: 'MALFORMED_FRAME' });
  assert.deepEqual(ws.closedWith, { code: 4001, reason: 'MALFORMED_FRAME' });

  const half = await openWebSocket('wss://relay/fluister/1', { WebSocketImpl: FakeWebSocket });
  const ws2 = FakeWebSocket.instances.at(-1);
  const ended2 = new Promise((resolve) => half.onClose(resolve));
  ws2.onmessage({ data: encodeFrame(queued).slice(0, 6).buffer });
  assert.deepEqual(await ended2, { code: 'MALFORMED_FRAME' });
});

test('a WebSocket close maps 4000 + code back to the code, and anything else to a lost connection', async () => {
  for (const [code, expected] of [[4008, 'SHUTTING_DOWN'], [4000, 'NO_ERROR'], [1006, null], [4099, null]]) {
    const link = await openWebSocket('wss://relay/fluister/1', { WebSocketImpl: FakeWebSocket });
    const ws = FakeWebSocket.instances.at(-1);
    const ended = new Promise((resolve) => link.onClose(resolve));
    ws.onclose({ code, reason: '' });
    assert.equal((await ended).code, expected, `close ${code}`);
  }
});

test('connect uses WebTransport when it connects, and WebSocket when it is missing, off or too slow', async () => {
  const urls = { webTransportUrl: 'https://relay/fluister/1', webSocketUrl: 'wss://relay/fluister/1' };
  const wt = await connect({ ...urls, WebTransportImpl: FakeWebTransport, WebSocketImpl: FakeWebSocket });
  assert.equal(wt.kind, 'webtransport');
  const none = await connect({ ...urls, WebTransportImpl: undefined, WebSocketImpl: FakeWebSocket });
  assert.equal(none.kind, 'websocket');
  const off = await connect({ ...urls, webTransport: false, WebTransportImpl: FakeWebTransport, WebSocketImpl: FakeWebSocket });
  assert.equal(off.kind, 'websocket');
  FakeWebTransport.never = true;
  const slow = await connect({ ...urls, timeoutMs: 20, WebTransportImpl: FakeWebTransport, WebSocketImpl: FakeWebSocket });
  FakeWebTransport.never = false;
  assert.equal(slow.kind, 'websocket', 'after the timeout');
});
