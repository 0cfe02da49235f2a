// Compile-only check that index.d.ts describes the API as the README uses it:
//   npx -p typescript tsc --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 support/types-check.ts
import ChinwagDefault, { ChinwagClient, ChinwagError, decodeJwt, dmRoom, encodeMsgpack, decodeMsgpack, type ServerFrame, type RoomEvent, type FrameOf } from 'chinwag-client';
import { encode, decode } from 'chinwag-client/msgpack';

async function main(): Promise<void> {
  const client: ChinwagClient = new ChinwagDefault({ url: 'wss://chat.example.com', token: 'x.y.z', encoding: 'msgpack', since: { general: 10 }, reconnect: { maxDelayMs: 5000 }, fetch: globalThis.fetch, WebSocket: globalThis.WebSocket });
  const hello = await client.connect();
  const rooms: string[] = hello.rooms.map((r) => r.room);
  const off = client.on('message', (m, meta) => { const t: string | undefined = m.text; const s: number = m.seq; const asOf: number | undefined = meta && meta.resumed ? meta.asOf : undefined; void t; void s; void asOf; });
  off();
  client.on('token', (t) => localStorage.setItem('token', t.token));
  client.on('auth_error', (e) => { if (e.code === 4001) client.close(); });
  client.on('error', (e) => { const c: string = e.code; void c; });
  client.on('reaction', (r) => { const on: boolean = r.on; void on; });
  const ack = await client.send('general', 'hi', { replyTo: 3 });
  const seq: number = ack.seq;
  await client.edit('general', seq, 'hello');
  await client.react('general', seq, '👍');
  await client.delete('general', seq);
  const dm = await client.dm('bob', 'psst');
  const j = await client.join('general', { since: 5 });
  const names: Record<string, string> = j.names;
  const h = await client.history('general', { before: 100, limit: 20 });
  const ev: RoomEvent | undefined = h.messages[0];
  if (ev && ev.type === 'edit') { const target: number = ev.target; void target; }
  const th = await client.thread('general', 1);
  const sr = await client.search('zebra', { room: 'general' });
  const cursor: string | undefined = sr.cursor;
  const rl = await client.rooms({ prefix: 'g' });
  const pl = await client.presence('general');
  const tok = await client.refresh();
  const pong = await client.ping();
  await client.typing('general');
  await client.read('general', seq);
  const left = await client.leave('general');
  const r = await client.request({ type: 'history', room: 'x', after: 1 });
  const more: boolean = r.more;
  const next = await client.once('open');
  const re: boolean = next.reconnected;
  try { await client.send('x', 'y'); } catch (e) { if (e instanceof ChinwagError && e.code === 'not_member') { /* join first */ } }
  const f: FrameOf<'ack'> = ack;
  const any: ServerFrame = f;
  const bytes: Uint8Array = encodeMsgpack({ a: 1 });
  const back: unknown = decodeMsgpack(bytes);
  const b2: unknown = decode(encode([1]));
  const exp: number | undefined = decodeJwt(client.token ?? '').exp;
  const room: string = dmRoom('a', 'b');
  const pos: Record<string, number> = client.positions();
  const last: number | undefined = client.lastSeq('general');
  const body = await client.http<{ messages: RoomEvent[] }>('GET', '/api/rooms/general/messages');
  new ChinwagClient({ url: 'http://localhost:8080', user: 'alice' }).retryNow();
  void [rooms, dm, names, th, cursor, rl, pl, tok, pong, left, more, re, any, back, b2, exp, room, pos, last, body, client.stats.resent];
}
void main;
