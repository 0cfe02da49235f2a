// The key property: two clients sending continuously through a server restart
// (SIGTERM, then a new server on the same port and data dir). Afterwards every
// send has resolved, the room's history holds each sent text exactly once, and
// each client has seen every event of the room exactly once, in seq order.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChinwagClient } from '../index.js';
import { Server, until, within, sleep } from '../support/server.js';

const ROOM = 'restart';

/** Sends `${user} ${i}` for i = 0, 1, ... with up to `window` unacked, until stopped. */
function sender(client, user, window) {
  const s = { sent: [], acks: new Map(), errors: [], stop: false, inflight: new Set() };
  s.done = (async () => {
    for (let i = 0; !s.stop; i++) {
      while (s.inflight.size >= window) await Promise.race(s.inflight);
      if (s.stop) break;
      const text = `${user} ${i}`;
      s.sent.push(text);
      const p = client.send(ROOM, text).then(
        (ack) => { s.acks.set(text, ack); },
        (e) => { s.errors.push(`${text}: ${e.code} ${e.message}`); },
      ).finally(() => s.inflight.delete(p));
      s.inflight.add(p);
      await sleep(5);
    }
    await Promise.all(s.inflight);
  })();
  return s;
}

test('server restart mid-conversation: nothing lost, nothing doubled, in seq order', { timeout: 45_000 }, async (t) => {
  const server = await Server.start();
  const clients = [];
  t.after(async () => {
    for (const c of clients) c.close();
    await server.destroy();
  });

  const mk = async (user, encoding) => {
    const c = new ChinwagClient({
      url: server.wsUrl, token: server.token(user), encoding, reconnect: { initialDelayMs: 100, maxDelayMs: 400 },
    });
    clients.push(c);
    c.seen = [];
    c.on('message', (e) => { if (e.room === ROOM) c.seen.push(e); });
    c.lifecycle = [];
    for (const k of ['open', 'close', 'reconnecting']) c.on(k, (e) => c.lifecycle.push(`${k}${e.code ? ` ${e.code}` : ''}`));
    await within(`${user} connects`, c.connect());
    await c.join(ROOM);
    return c;
  };
  const alice = await mk('alice', 'json');
  const bob = await mk('bob', 'msgpack');

  const a = sender(alice, 'alice', 4);
  const b = sender(bob, 'bob', 4);
  await until('40 acks each before the restart', () => a.acks.size >= 40 && b.acks.size >= 40, 15_000);

  const exit = await server.stop();
  assert.deepEqual(exit, { code: 0, sig: null }, 'SIGTERM: exit 0');
  const inDoubt = [a.sent.length - a.acks.size, b.sent.length - b.acks.size];
  await sleep(300); // sends keep being queued while the server is down
  await server.start();

  const aBefore = a.acks.size;
  const bBefore = b.acks.size;
  await until('40 more acks each after the restart', () => a.acks.size >= aBefore + 40 && b.acks.size >= bBefore + 40, 20_000);
  a.stop = true;
  b.stop = true;
  await within('every send settles', Promise.all([a.done, b.done]), 15_000);

  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  assert.equal(a.acks.size, a.sent.length);
  assert.equal(b.acks.size, b.sent.length);

  // The room's history, from the start.
  const history = [];
  for (let after = 0; ;) {
    const h = await alice.history(ROOM, { after, limit: 100 });
    history.push(...h.messages);
    if (!h.more || h.messages.length === 0) break;
    after = h.messages[h.messages.length - 1].seq;
  }
  const seqs = history.map((m) => m.seq);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'history is gap-free');
  const count = new Map();
  for (const m of history) count.set(m.text, (count.get(m.text) || 0) + 1);
  const doubled = [...count].filter(([, n]) => n > 1).map(([text]) => text);
  assert.deepEqual(doubled, [], 'no message stored twice');
  const sent = [...a.sent, ...b.sent];
  assert.deepEqual(sent.filter((x) => !count.has(x)), [], 'no sent message missing');
  assert.equal(history.length, sent.length, 'history holds exactly the sent messages');
  const bySeq = new Map(history.map((m) => [m.seq, m]));
  for (const [text, ack] of [...a.acks, ...b.acks]) {
    assert.equal(bySeq.get(ack.seq)?.text, text, `ack of "${text}" names its seq`);
  }

  // Each client saw the whole room exactly once, in seq order.
  const last = seqs[seqs.length - 1];
  for (const c of [alice, bob]) {
    await until(`${c.user} sees seq ${last}`, () => c.lastSeq(ROOM) >= last, 10_000);
    assert.deepEqual(c.seen.map((e) => e.seq), seqs, `${c.user}: every event once, in order`);
    assert.deepEqual(c.seen.map((e) => e.text), history.map((m) => m.text), `${c.user}: the same texts`);
    assert.ok(c.lifecycle.includes('close 1001'), `${c.user} saw the shutdown: ${c.lifecycle.join(', ')}`);
    assert.equal(c.lifecycle.filter((x) => x === 'open').length, 2, `${c.user}: ${c.lifecycle.join(', ')}`);
  }
  console.log(`  ${history.length} messages; unacked at the SIGTERM: alice ${inDoubt[0]}, bob ${inDoubt[1]}; `
    + `alice ${JSON.stringify(alice.stats)}; bob ${JSON.stringify(bob.stats)}`);
});
