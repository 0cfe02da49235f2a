// The client against the real server binary (support/server.js): connect in
// both encodings, acks and error codes, room events, threads, search, the
// other frames, token refresh and auth errors.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ChinwagClient, ChinwagError, decodeJwt, dmRoom } from '../index.js';
import { Server, until, within, sleep } from '../support/server.js';

let server;
const clients = [];

before(async () => { server = await Server.start(); });
after(async () => {
  for (const c of clients) c.close();
  if (server) await server.destroy();
});

/** A connected client of `user`; collects every frame it is given by type. */
async function connect(user, opts = {}) {
  const { claims, ...rest } = opts;
  const client = new ChinwagClient({
    url: server.wsUrl, token: server.token(user, claims), reconnect: { initialDelayMs: 100, maxDelayMs: 500 }, ...rest,
  });
  clients.push(client);
  client.got = {};
  client.on('frame', (f) => { (client.got[f.type] ||= []).push(f); });
  client.events = [];
  for (const t of ['message', 'edit', 'delete', 'reaction']) client.on(t, (e) => client.events.push(e));
  client.helloFrame = await within(`${user} connects`, client.connect());
  return client;
}

for (const encoding of ['json', 'msgpack']) {
  test(`connect, hello, join, send resolving on ack, message event (${encoding})`, async () => {
    const room = `hello-${encoding}`;
    const a = await connect(`ann-${encoding}`, { encoding, claims: { name: 'Ann Example' } });
    assert.equal(a.protocol, `chinwag.v1.${encoding}`);
    assert.equal(a.helloFrame.type, 'hello');
    assert.equal(a.helloFrame.user, `ann-${encoding}`);
    assert.equal(a.helloFrame.name, 'Ann Example');
    assert.equal(typeof a.helloFrame.limits.max_text, 'number');
    assert.equal(a.user, `ann-${encoding}`);
    assert.equal(a.state, 'open');

    const joined = await within('join', a.join(room));
    assert.equal(joined.type, 'joined');
    assert.equal(joined.room, room);
    assert.deepEqual(joined.members, [`ann-${encoding}`]);
    assert.deepEqual(joined.names, { [`ann-${encoding}`]: 'Ann Example' });

    const texts = ['first', 'second: ünïcödé 😀', 'third'];
    const acks = await within('sends', Promise.all(texts.map((t) => a.send(room, t))));
    assert.deepEqual(acks.map((x) => x.type), ['ack', 'ack', 'ack']);
    assert.deepEqual(acks.map((x) => x.room), [room, room, room]);
    assert.deepEqual(acks.map((x) => x.seq), [1, 2, 3]);
    await until('3 message events', () => a.events.length === 3);
    assert.deepEqual(a.events.map((e) => [e.type, e.seq, e.from, e.text]), texts.map((t, i) => ['message', i + 1, `ann-${encoding}`, t]));

    const h = await within('history', a.history(room, { limit: 2 }));
    assert.equal(h.type, 'history');
    assert.deepEqual(h.messages.map((m) => m.seq), [2, 3]);
    assert.equal(h.more, true);
    const pong = await within('ping', a.ping());
    assert.equal(pong.type, 'pong');
    assert.equal(typeof pong.ts, 'number');
    a.close();
  });
}

test('errors reject with a ChinwagError carrying the code', async () => {
  const a = await connect('erin');
  const b = await connect('fred', { encoding: 'msgpack' });
  const code = async (p) => within('error', p.then(() => 'resolved', (e) => {
    assert.ok(e instanceof ChinwagError);
    assert.equal(typeof e.message, 'string');
    return e.code;
  }));
  assert.equal(await code(a.send('errors', 'not a member yet')), 'not_member');
  await a.join('errors');
  await b.join('errors');
  assert.equal(await code(a.send('errors', '   ')), 'bad_request');
  assert.equal(await code(a.send('errors', 'x'.repeat(4001))), 'too_long');
  assert.equal(await code(a.join('Bad Room!')), 'invalid_room');
  assert.equal(await code(a.dm('not a user!', 'hi')), 'invalid_user');
  const { seq } = await a.send('errors', 'mine');
  assert.equal(await code(b.edit('errors', seq, 'not yours')), 'forbidden');
  assert.equal(await code(b.react('errors', 999, '👍')), 'not_found');
  assert.equal(await code(b.send('errors', 'reply to nothing', { replyTo: 999 })), 'not_found');
  assert.equal(await code(b.history('errors', { limit: 0 })), 'bad_request');
  // the connection stays open through all of it
  assert.equal((await a.ping()).type, 'pong');
  a.close();
  b.close();
});

test('room events: edit, reaction, delete arrive as typed events, once each, for both users', async () => {
  const room = 'events';
  const a = await connect('gina');
  const b = await connect('hugo', { encoding: 'msgpack' });
  await a.join(room);
  await b.join(room);
  const m = await a.send(room, 'hello @hugo');
  const e = await a.edit(room, m.seq, 'hello there @hugo');
  const r1 = await b.react(room, m.seq, '👍');
  const r2 = await b.react(room, m.seq, '👍', false);
  const d = await a.delete(room, m.seq);
  assert.deepEqual([m.seq, e.seq, r1.seq, r2.seq, d.seq], [1, 2, 3, 4, 5]);
  for (const c of [a, b]) {
    await until(`${c.user}: 5 events`, () => c.events.length >= 5);
    await sleep(50); // nothing more may come
    const ev = c.events;
    assert.deepEqual(ev.map((x) => [x.type, x.seq]), [['message', 1], ['edit', 2], ['reaction', 3], ['reaction', 4], ['delete', 5]]);
    assert.deepEqual(ev[0].mentions, ['hugo']);
    assert.deepEqual([ev[1].target, ev[1].text, ev[1].from], [1, 'hello there @hugo', 'gina']);
    assert.deepEqual([ev[2].target, ev[2].emoji, ev[2].on, ev[2].from], [1, '👍', true, 'hugo']);
    assert.deepEqual([ev[3].on], [false]);
    assert.deepEqual([ev[4].target, ev[4].from], [1, 'gina']);
  }
  // history shows the current state
  const h = await b.history(room);
  assert.equal(h.messages[0].deleted, true);
  assert.equal(h.messages[0].text, undefined);
  a.close();
  b.close();
});

test('threads and search round trips', async () => {
  const room = 'threads';
  const a = await connect('iris');
  await a.join(room);
  const root = await a.send(room, 'the zebrafish plan');
  const r1 = await a.send(room, 'first reply about zebrafish', { replyTo: root.seq });
  await a.send(room, 'unrelated');
  const r2 = await a.send(room, 'second reply', { replyTo: root.seq });
  const t = await within('thread', a.thread(room, root.seq));
  assert.equal(t.type, 'thread');
  assert.equal(t.root, root.seq);
  assert.deepEqual(t.messages.map((m) => [m.seq, m.reply_to]), [[r1.seq, root.seq], [r2.seq, root.seq]]);
  assert.equal(t.more, false);
  const page = await a.thread(room, root.seq, { after: r1.seq, limit: 1 });
  assert.deepEqual(page.messages.map((m) => m.seq), [r2.seq]);
  // search: an acked message shows within 2 s
  const res = await until('search results', async () => {
    const s = await a.search('zebra', { room });
    return s.messages.length === 2 ? s : null;
  }, 5000);
  assert.equal(res.type, 'search_results');
  assert.equal(res.query, 'zebra');
  assert.deepEqual(res.messages.map((m) => m.seq), [r1.seq, root.seq]); // newest first
  const one = await a.search('zebra', { limit: 1 });
  assert.equal(one.messages.length, 1);
  assert.equal(typeof one.cursor, 'string');
  const rest = await a.search('zebra', { cursor: one.cursor });
  assert.equal(rest.messages.length, 1);
  assert.equal(rest.cursor, undefined);
  a.close();
});

test('the other frames: rooms, presence, typing, read, dm, leave, join since, notification', async () => {
  const a = await connect('jack', { encoding: 'msgpack' });
  const a2 = await connect('jack');
  const b = await connect('kate');
  await a.join('misc-1');
  await b.join('misc-1');
  await a.join('misc-2');
  const list = await a.rooms({ prefix: 'misc-' });
  assert.equal(list.type, 'room_list');
  assert.deepEqual(list.rooms.map((r) => [r.room, r.members]), [['misc-1', 2], ['misc-2', 1]]);
  const pl = await a.presence('misc-1');
  assert.equal(pl.type, 'presence_list');
  assert.deepEqual([...pl.online].sort(), ['jack', 'kate']);

  await a.typing('misc-1', true);
  const typing = await until('typing at kate', () => (b.got.typing || []).find((f) => f.room === 'misc-1'));
  assert.deepEqual([typing.user, typing.active], ['jack', true]);

  const m = await b.send('misc-1', 'read me');
  await a.read('misc-1', m.seq);
  const read = await until('read at the other connection', () => (a2.got.read || []).find((f) => f.room === 'misc-1'));
  assert.equal(read.seq, m.seq);

  const dm = await a.dm('kate', 'psst');
  assert.equal(dm.room, dmRoom('jack', 'kate'));
  const got = await until('dm at kate', () => b.events.find((e) => e.room === dm.room));
  assert.equal(got.text, 'psst');

  const left = await a.leave('misc-2');
  assert.deepEqual([left.type, left.room], ['left', 'misc-2']);
  await until('left at the other connection', () => (a2.got.left || []).find((f) => f.room === 'misc-2'));

  // join with since: the events after it come as room events too
  await b.send('misc-1', 'later one');
  const c = await connect('lily');
  const j = await c.join('misc-1', { since: 1 });
  assert.deepEqual(j.history.map((e) => e.seq), [2]);
  await until('events after since', () => c.events.length === 1);
  assert.equal(c.events[0].seq, 2);

  // a notification from the HTTP API, and the client's own HTTP helper
  const admin = server.token('root', { admin: true });
  const [st] = await server.api('POST', '/api/notify', admin, { user: 'kate', kind: 'deploy', text: 'v2 is out', data: { v: 2 } });
  assert.equal(st, 202);
  const n = await until('notification', () => (b.got.notification || [])[0]);
  assert.deepEqual([n.kind, n.text, n.data], ['deploy', 'v2 is out', { v: 2 }]);
  const msgs = await b.http('GET', '/api/rooms/misc-1/messages?limit=1');
  assert.deepEqual(msgs.messages.map((x) => x.seq), [2]);
  await assert.rejects(b.http('GET', '/api/rooms/nope-room/messages'), (e) => e.status === 403 && e.code === 'not_member');
  assert.equal((await b.health()).status, 'ok');
  for (const x of [a, a2, b, c]) x.close();
});

test('token refresh: a new token is emitted, kept, and accepted by the server', async () => {
  const now = Math.floor(Date.now() / 1000);
  // 60 s of lifetime with 10 s left: less than half, so refreshed at once.
  const tokens = [];
  const client = new ChinwagClient({ url: server.wsUrl, token: server.token('mona', { iat: now - 50, exp: now + 10, name: 'Mona' }) });
  clients.push(client);
  client.on('token', (t) => tokens.push(t));
  const first = client.token;
  await within('connect', client.connect());
  await until('token event', () => tokens.length === 1);
  const t = tokens[0];
  assert.equal(t.type, 'token');
  assert.equal(client.token, t.token);
  assert.notEqual(t.token, first);
  const claims = decodeJwt(t.token);
  assert.equal(claims.sub, 'mona');
  assert.equal(claims.name, 'Mona');
  assert.equal(claims.exp, t.exp);
  assert.equal(claims.exp - claims.iat, 60);
  // The server accepts it: a second client connects with it, and the refresh() helper works.
  const other = new ChinwagClient({ url: server.wsUrl, token: t.token, refresh: false });
  clients.push(other);
  const hello = await within('connect with the new token', other.connect());
  assert.equal(hello.user, 'mona');
  const again = await other.refresh();
  assert.equal(again.type, 'token');
  assert.equal(other.token, again.token);
  client.close();
  other.close();
});

test('auth errors: a refused token, and a token revoked while connected (4001), stop reconnecting', async () => {
  const bad = new ChinwagClient({ url: server.wsUrl, token: `${server.token('nina').slice(0, -4)}AAAA`, reconnect: { initialDelayMs: 50 } });
  clients.push(bad);
  const errs = [];
  bad.on('auth_error', (e) => errs.push(e.code));
  await within('refused token', assert.rejects(bad.connect(), (e) => e.code === 'auth'));
  assert.deepEqual(errs, [401]);
  assert.equal(bad.state, 'closed');

  const c = await connect('oscar', { claims: { jti: 'oscar-1' } });
  const closes = [];
  const auth = new Promise((resolve) => c.on('auth_error', resolve));
  c.on('close', (e) => closes.push(e.code));
  const admin = server.token('root', { admin: true });
  const [st] = await server.api('POST', '/api/revoke', admin, { jti: 'oscar-1' });
  assert.equal(st, 200);
  const info = await within('4001 within 5 s', auth, 8000);
  assert.equal(info.code, 4001);
  assert.deepEqual(closes, [4001]);
  await sleep(300);
  assert.equal(c.state, 'closed');
  assert.deepEqual(closes, [4001], 'no reconnect');
});
