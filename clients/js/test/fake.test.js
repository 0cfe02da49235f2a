// The client against a scripted fake WebSocket (injected through
// options.WebSocket): the exact cases of the retry and resume logic, which a
// real server restart hits only by chance.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChinwagClient, ChinwagError, dmRoom } from '../index.js';
import { encode, decode } from '../msgpack.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function token(claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64({ sub: 'alice', iat: now, exp: now + 3600, ...claims })}.sig`;
}

/** A fake WebSocket: the test plays the server. */
function fakeSocketClass() {
  const sockets = [];
  class FakeWS {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.protocol = '';
      this.sent = [];
      this.closed = null;
      this.binaryType = 'blob';
      sockets.push(this);
    }
    send(data) { this.sent.push(typeof data === 'string' ? JSON.parse(data) : decode(data)); }
    close(code, reason) { this.closed = { code, reason }; }
    // ---- the test's side
    open() { this.protocol = this.protocols[0]; this.onopen?.({}); }
    recv(frame) {
      const data = this.protocol === 'chinwag.v1.msgpack' ? encode(frame).buffer : JSON.stringify(frame);
      this.onmessage?.({ data });
    }
    drop(code = 1006, reason = '') { this.onclose?.({ code, reason, wasClean: code !== 1006 }); }
    frames(type) { return this.sent.filter((f) => f.type === type); }
  }
  return { FakeWS, sockets };
}

const LIMITS = { max_text: 4000, max_frame: 65536, rate: 1000, burst: 1000 };
const hello = (rooms) => ({ type: 'hello', user: 'alice', node: 'n1', server_time: Date.now(), rooms, limits: LIMITS });
const room = (name, seq) => ({ room: name, seq, read: 0, unread: 0, mentions: 0 });
const msg = (seq, from, text, extra = {}) => ({ type: 'message', room: 'r', seq, ts: 1000 + seq, from, text, ...extra });

function setup(opts = {}) {
  const { FakeWS, sockets } = fakeSocketClass();
  const client = new ChinwagClient({
    url: 'ws://chat.test/ws', token: token(), WebSocket: FakeWS, probeAuth: false, heartbeatMs: 0,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 }, ...opts,
  });
  const seen = [];
  for (const t of ['message', 'edit', 'delete', 'reaction']) client.on(t, (e) => seen.push(e));
  const last = () => sockets[sockets.length - 1];
  return { client, sockets, seen, last };
}

async function openWith(env, rooms, n) {
  await until(`socket ${n}`, () => env.sockets.length === n);
  env.last().open();
  env.last().recv(hello(rooms));
}

test('fake: the URL carries the token and the subprotocol; msgpack frames both ways', async () => {
  const env = setup({ encoding: 'msgpack', url: 'https://chat.test' });
  const ready = env.client.connect();
  await openWith(env, [room('r', 0)], 1);
  const h = await ready;
  assert.equal(h.user, 'alice');
  const ws = env.last();
  assert.equal(new URL(ws.url).pathname, '/ws');
  assert.equal(new URL(ws.url).protocol, 'wss:');
  assert.equal(new URL(ws.url).searchParams.get('token'), env.client.token);
  assert.deepEqual(ws.protocols, ['chinwag.v1.msgpack']);
  assert.equal(ws.binaryType, 'arraybuffer');
  const p = env.client.send('r', 'hi', { replyTo: 3 });
  await until('send', () => ws.frames('send').length === 1);
  const f = ws.frames('send')[0];
  assert.deepEqual({ ...f, id: 0 }, { type: 'send', room: 'r', text: 'hi', reply_to: 3, id: 0 });
  ws.recv({ type: 'ack', id: f.id, room: 'r', seq: 1, ts: 5 });
  assert.equal((await p).seq, 1);
  env.client.close();
});

test('fake: an event whose ack was lost is found after the reconnect, not sent again', async () => {
  const env = setup();
  const ready = env.client.connect();
  await openWith(env, [room('r', 5)], 1);
  await ready;
  const p = env.client.send('r', 'hi');
  const ws1 = env.last();
  await until('send', () => ws1.frames('send').length === 1);
  ws1.recv(msg(6, 'alice', 'hi')); // the event arrives, the ack does not
  ws1.drop(1001);
  await openWith(env, [room('r', 6)], 2);
  const ack = await p;
  assert.equal(ack.seq, 6);
  assert.equal(ack.recovered, true);
  await sleep(20);
  assert.equal(env.last().frames('send').length, 0, 'not sent again');
  assert.deepEqual(env.seen.map((e) => e.seq), [6]);
  assert.equal(env.client.stats.recovered, 1);
  env.client.close();
});

test('fake: a lost send is sent again with the same id; one found in the resume window is not', async () => {
  const env = setup();
  const ready = env.client.connect();
  await openWith(env, [room('r', 5)], 1);
  await ready;
  const px = env.client.send('r', 'x');
  const py = env.client.send('r', 'y');
  const pz = env.client.send('r', 'x'); // same text twice: one arrived, one did not
  const ws1 = env.last();
  await until('sends', () => ws1.frames('send').length === 3);
  const ids = ws1.frames('send').map((f) => f.id);
  ws1.drop();
  // Back: bob wrote at 6, alice's y is 7, one x is 8; the other x is lost.
  await until('socket 2', () => env.sockets.length === 2);
  const ws2 = env.last();
  ws2.open();
  ws2.recv(hello([room('r', 8)]));
  await until('history', () => ws2.frames('history').length === 1);
  const hq = ws2.frames('history')[0];
  assert.equal(hq.room, 'r');
  assert.equal(hq.after, 5);
  // a live event racing the resume is held and deduplicated
  ws2.recv(msg(9, 'bob', 'live'));
  assert.equal(ws2.frames('send').length, 0, 'nothing is resent before the resume is done');
  ws2.recv({ type: 'history', id: hq.id, room: 'r', more: false, messages: [msg(6, 'bob', 'x'), msg(7, 'alice', 'y'), msg(8, 'alice', 'x'), msg(9, 'bob', 'live')] });
  const ay = await py;
  assert.deepEqual([ay.seq, ay.recovered], [7, true]);
  const ax = await px;
  assert.deepEqual([ax.seq, ax.recovered], [8, true]);
  await until('resend', () => ws2.frames('send').length === 1);
  const again = ws2.frames('send')[0];
  assert.equal(again.id, ids[2], 'the same id');
  assert.equal(again.text, 'x');
  ws2.recv({ type: 'ack', id: again.id, room: 'r', seq: 10, ts: 1 });
  ws2.recv(msg(10, 'alice', 'x'));
  const az = await pz;
  assert.equal(az.seq, 10);
  assert.equal(az.recovered, undefined);
  assert.deepEqual(env.seen.map((e) => e.seq), [6, 7, 8, 9, 10]);
  assert.deepEqual(env.client.stats.resent, 1);
  env.client.close();
});

test('fake: events reach the app once each, in seq order, gaps filled from history', async () => {
  const env = setup();
  const ready = env.client.connect();
  await openWith(env, [room('r', 10)], 1);
  await ready;
  const ws = env.last();
  ws.recv(msg(11, 'bob', 'a'));
  ws.recv(msg(13, 'bob', 'c')); // 12 missing: held, history asked
  ws.recv(msg(14, 'bob', 'd'));
  await until('history', () => ws.frames('history').length === 1);
  const hq = ws.frames('history')[0];
  assert.equal(hq.after, 11);
  assert.deepEqual(env.seen.map((e) => e.seq), [11]);
  ws.recv({ type: 'history', id: hq.id, room: 'r', more: false, messages: [msg(12, 'bob', 'b'), msg(13, 'bob', 'c')] });
  await until('drained', () => env.seen.length === 4);
  ws.recv(msg(14, 'bob', 'd'));
  ws.recv({ type: 'edit', room: 'r', seq: 15, ts: 1, from: 'bob', target: 12, text: 'B' });
  assert.deepEqual(env.seen.map((e) => `${e.seq}${e.type}`), ['11message', '12message', '13message', '14message', '15edit']);
  assert.equal(env.client.lastSeq('r'), 15);
  assert.deepEqual(env.client.positions(), { r: 15 });
  env.client.close();
});

test('fake: `since` resumes from a stored position; a new DM room is followed', async () => {
  const env = setup({ since: { r: 2 } });
  const ready = env.client.connect();
  await openWith(env, [room('r', 4)], 1);
  const ws = env.last();
  await until('history', () => ws.frames('history').length === 1);
  const hq = ws.frames('history')[0];
  assert.equal(hq.after, 2);
  ws.recv({ type: 'history', id: hq.id, room: 'r', more: true, messages: [msg(3, 'bob', 'c')] });
  await until('page 2', () => ws.frames('history').length === 2);
  const h2 = ws.frames('history')[1];
  assert.equal(h2.after, 3);
  ws.recv({ type: 'history', id: h2.id, room: 'r', more: false, messages: [msg(4, 'bob', 'd')] });
  await ready;
  assert.deepEqual(env.seen.map((e) => e.seq), [3, 4]);
  const dm = dmRoom('alice', 'bob');
  assert.equal(dm, 'dm:alice:bob');
  ws.recv({ type: 'message', room: dm, seq: 1, ts: 1, from: 'bob', text: 'psst' });
  assert.equal(env.client.lastSeq(dm), 1);
  env.client.close();
});

test('fake: join and leave hold later frames until their reply; errors reject with .code', async () => {
  const env = setup();
  const ready = env.client.connect();
  await openWith(env, [], 1);
  await ready;
  const ws = env.last();
  const pj = env.client.join('r2');
  const ps = env.client.send('r2', 'after the join');
  await until('join', () => ws.frames('join').length === 1);
  await sleep(10);
  assert.equal(ws.frames('send').length, 0, 'send waits for joined');
  const j = ws.frames('join')[0];
  ws.recv({ type: 'joined', id: j.id, room: 'r2', seq: 0, members: ['alice'], online: ['alice'], names: {}, history: [], more: false });
  assert.equal((await pj).room, 'r2');
  await until('send', () => ws.frames('send').length === 1);
  const s = ws.frames('send')[0];
  ws.recv({ type: 'error', id: s.id, code: 'too_long', message: 'too long' });
  await assert.rejects(ps, (e) => e instanceof ChinwagError && e.code === 'too_long');
  // rate_limited: not acted on, sent again after retry_after_ms
  const pp = env.client.ping();
  await until('ping', () => ws.frames('ping').length === 1);
  ws.recv({ type: 'error', id: ws.frames('ping')[0].id, code: 'rate_limited', message: 'slow down', retry_after_ms: 20 });
  await until('ping again', () => ws.frames('ping').length === 2);
  ws.recv({ type: 'pong', id: ws.frames('ping')[1].id, ts: 7 });
  assert.equal((await pp).ts, 7);
  // an error that answers nothing of ours is an event
  const errs = [];
  env.client.on('error', (e) => errs.push(e.code));
  ws.recv({ type: 'error', id: null, code: 'bad_request', message: 'x' });
  assert.deepEqual(errs, ['bad_request']);
  env.client.close();
});

test('fake: 4001 is an auth error, no reconnect; close() stops for good', async () => {
  const env = setup();
  const events = [];
  for (const t of ['open', 'close', 'reconnecting', 'auth_error']) env.client.on(t, () => events.push(t));
  const ready = env.client.connect();
  await openWith(env, [room('r', 0)], 1);
  await ready;
  const p = env.client.send('r', 'never acked');
  await until('send', () => env.last().frames('send').length === 1);
  env.last().drop(4001, 'token expired');
  await assert.rejects(p, (e) => e.code === 'auth' && e.inDoubt === true);
  await sleep(50);
  assert.equal(env.sockets.length, 1, 'no reconnect after 4001');
  assert.deepEqual(events, ['open', 'close', 'auth_error']);
  assert.equal(env.client.state, 'closed');

  // An expired token is refused before connecting.
  const old = setup({ token: token({ iat: 1, exp: 2 }) });
  const errs = [];
  old.client.on('auth_error', (e) => errs.push(e.code));
  await assert.rejects(old.client.connect(), (e) => e.code === 'auth');
  assert.deepEqual(errs, ['token_expired']);
  assert.equal(old.sockets.length, 0);

  // close(): no reconnect, pending requests reject with 'closed'.
  const c = setup();
  const r = c.client.connect();
  await openWith(c, [], 1);
  await r;
  const h = c.client.history('r');
  await until('history', () => c.last().frames('history').length === 1);
  c.client.close();
  await assert.rejects(h, (e) => e.code === 'closed');
  c.last().drop(1000);
  await sleep(50);
  assert.equal(c.sockets.length, 1);
  await assert.rejects(c.client.ping(), (e) => e.code === 'closed');
});

test('fake: reconnect backs off with jitter, and requests wait for the connection', async () => {
  const env = setup({ reconnect: { initialDelayMs: 4, maxDelayMs: 16, factor: 2, jitter: 0.5 } });
  const delays = [];
  env.client.on('reconnecting', (e) => delays.push(e.delayMs));
  const ready = env.client.connect();
  for (let i = 1; i <= 5; i++) {
    await until(`socket ${i}`, () => env.sockets.length === i);
    env.last().drop(1006);
  }
  const pending = env.client.ping();
  await openWith(env, [], 6);
  await ready;
  assert.equal(delays.length, 5);
  const caps = [4, 8, 16, 16, 16];
  delays.forEach((d, i) => assert.ok(d >= caps[i] / 2 && d <= caps[i], `delay ${i}: ${d}`));
  const ws = env.last();
  await until('ping', () => ws.frames('ping').length === 1);
  ws.recv({ type: 'pong', id: ws.frames('ping')[0].id, ts: 1 });
  await pending;
  env.client.close();
});

test('fake: the token is refreshed at half its lifetime and used for the next connection', async () => {
  const now = Math.floor(Date.now() / 1000);
  const env = setup({ token: token({ iat: now - 100, exp: now + 60 }) });
  const got = [];
  env.client.on('token', (t) => got.push(t.token));
  const ready = env.client.connect();
  await openWith(env, [], 1);
  await ready;
  const ws = env.last();
  await until('refresh', () => ws.frames('refresh').length === 1);
  const fresh = token({ iat: now, exp: now + 160, jti: 'new' });
  ws.recv({ type: 'token', id: ws.frames('refresh')[0].id, token: fresh, exp: now + 160 });
  assert.deepEqual(got, [fresh]);
  assert.equal(env.client.token, fresh);
  ws.drop(1001);
  await until('socket 2', () => env.sockets.length === 2);
  assert.equal(new URL(env.last().url).searchParams.get('token'), fresh);
  env.client.close();
});

test('fake: listeners learn whether a room event is live or fetched, and as of which seq', async () => {
  const env = setup();
  const metas = [];
  env.client.on('message', (m, meta) => metas.push([m.seq, meta]));
  const ready = env.client.connect();
  await openWith(env, [room('r', 2)], 1);
  await ready;
  const ws1 = env.last();
  ws1.recv(msg(3, 'bob', 'live'));
  ws1.drop();
  await openWith(env, [room('r', 6)], 2);
  const ws2 = env.last();
  await until('history', () => ws2.frames('history').length === 1);
  const hq = ws2.frames('history')[0];
  // Fetched in their current state: 4 has its reply 6 counted already.
  ws2.recv({ type: 'history', id: hq.id, room: 'r', more: false,
    messages: [msg(4, 'bob', 'root', { replies: 1 }), msg(5, 'bob', 'x'), msg(6, 'bob', 'reply', { reply_to: 4 })] });
  await ready;
  const j = env.client.join('s', { since: 1 });
  await until('join', () => ws2.frames('join').length === 1);
  ws2.recv({ type: 'joined', id: ws2.frames('join')[0].id, room: 's', seq: 9, members: ['alice'], online: [], names: {},
    more: false, history: [{ ...msg(2, 'bob', 'in s'), room: 's' }] });
  await j;
  ws2.recv(msg(7, 'bob', 'live again'));
  const fetched = { resumed: true, asOf: 6 };
  assert.deepEqual(metas, [[3, { resumed: false }], [4, fetched], [5, fetched], [6, fetched],
    [2, { resumed: true, asOf: 9 }], [7, { resumed: false }]]);
  env.client.close();
});

test('fake: open mode connects with ?user= and no token; retryNow() skips the wait', async () => {
  const env = setup({ token: undefined, user: 'alice', reconnect: { initialDelayMs: 60000, maxDelayMs: 60000 } });
  assert.equal(env.client.token, null);
  const ready = env.client.connect();
  await until('socket 1', () => env.sockets.length === 1);
  const u = new URL(env.last().url);
  assert.equal(u.searchParams.get('user'), 'alice');
  assert.equal(u.searchParams.has('token'), false);
  env.last().drop();
  await sleep(20);
  assert.equal(env.sockets.length, 1, 'waiting a minute to reconnect');
  env.client.retryNow();
  await openWith(env, [], 2);
  assert.equal((await ready).user, 'alice');
  env.client.retryNow(); // connected: nothing to do
  assert.equal(env.sockets.length, 2);
  assert.throws(() => new ChinwagClient({ url: 'ws://x/ws' }), /options.token/);
  env.client.close();
});
