// The young person's side of one chat, for tests/web_library.rs: it talks
// to the Rust counsellor over stdin and stdout, one line per step, so that
// JavaScript and Rust each encrypt what the other decrypts.
//
//   node tools/roundtrip-peer.js ORG_KEY_HEX PAIRING_ID_HEX NOW_UNIX
//   out  M1 <hex>            handshake message 1
//   in   M2 <hex>            handshake message 2
//   out  OK <pseudonym>      the counsellor verified (or FAIL <reason>)
//   out  B <hex>             a TEXT message sealed here
//   in   B <hex>             a TEXT message sealed by Rust
//   out  T <text>            what it said
import { createInterface } from 'node:readline';

import { ClientSession, SecurityFailure, textChunks } from '../src/e2e.js';
import { hexToBytes as fromHex, bytesToHex as toHex } from '@noble/hashes/utils.js';

const [orgHex, pairingHex, now] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${line}\n`);

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async (tag) => {
  const { value, done } = await lines.next();
  if (done || !value.startsWith(`${tag} `)) throw new Error(`expected ${tag}, got ${value}`);
  return value.slice(tag.length + 1);
};

const session = new ClientSession({ orgKey: fromHex(orgHex), pairingId: fromHex(pairingHex) });
say(`M1 ${toHex(session.start())}`);
try {
  const { pseudonym } = session.finish(fromHex(await next('M2')), Number(now));
  say(`OK ${pseudonym}`);
} catch (e) {
  say(`FAIL ${e instanceof SecurityFailure ? e.reason : e}`);
  process.exit(0);
}
say(`B ${toHex(session.seal(textChunks('Hoi vanuit JavaScript — één ✓')[0]).blob)}`);
const reply = session.open(fromHex(await next('B')));
say(`T ${typeof reply === 'string' ? reply : reply.kind === 'text' ? reply.text : reply.kind}`);
session.destroy();
process.exit(0);
