// chinwag-client: a dependency-free client for the chinwag chat server
// (docs/PROTOCOL.md, revision 2), for browsers and Node >= 18 (Node 22 has a
// global WebSocket; older runtimes pass one in `options.WebSocket`).
//
// What it does on top of the raw protocol:
// - JSON or MessagePack (subprotocols chinwag.v1.json / chinwag.v1.msgpack);
// - token refresh before half of the token's lifetime is left (`token` event);
// - reconnect with exponential backoff and jitter (not after close(), not on
//   4001 or a refused token: `auth_error` instead);
// - resume: after every reconnect each room's missed events are fetched with
//   `history` `after` the last seq seen, and every room event reaches the app
//   exactly once, in seq order per room;
// - send/dm/edit/delete/react are retried across reconnects, at most once
//   delivered (see README.md, "Delivery guarantee").

import { encode as msgpackEncode, decode as msgpackDecode } from './msgpack.js';

export { encode as encodeMsgpack, decode as decodeMsgpack } from './msgpack.js';

export const VERSION = '0.1.0';

/** Subprotocol names by encoding. */
export const SUBPROTOCOLS = Object.freeze({ json: 'chinwag.v1.json', msgpack: 'chinwag.v1.msgpack' });

/** Room event kinds (PROTOCOL.md section 3.1). */
export const ROOM_EVENT_TYPES = Object.freeze(['message', 'edit', 'delete', 'reaction']);

/** Server frame types of revision 2. */
export const SERVER_FRAME_TYPES = Object.freeze([
  'hello', 'joined', 'left', 'ack', 'message', 'edit', 'delete', 'reaction', 'presence', 'typing',
  'history', 'thread', 'search_results', 'room_list', 'read', 'presence_list', 'token', 'pong',
  'notification', 'error',
]);

/** The reply type of each client frame that has one. */
const REPLY = Object.freeze({
  join: 'joined', leave: 'left', send: 'ack', dm: 'ack', edit: 'ack', delete: 'ack', react: 'ack',
  history: 'history', thread: 'thread', search: 'search_results', rooms: 'room_list',
  presence: 'presence_list', refresh: 'token', ping: 'pong',
});

/** Frames that create a room event: retried across reconnects only if the event did not happen. */
const EVENT_FRAMES = new Set(['send', 'dm', 'edit', 'delete', 'react']);
const ROOM_EVENTS = new Set(ROOM_EVENT_TYPES);
const HISTORY_PAGE = 100;
const MAX_TIMER_MS = 0x7fffffff;
/** The second argument of a room event's listeners when the event arrived live. */
const LIVE = Object.freeze({ resumed: false });

/** An error from the server (`code` is the protocol's error code) or from the client. */
export class ChinwagError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {object} [extra]
   */
  constructor(code, message, extra) {
    super(message);
    this.name = 'ChinwagError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

/**
 * The payload of a JWT, decoded without verifying the signature.
 * @param {string} token
 * @returns {Record<string, unknown>}
 */
export function decodeJwt(token) {
  const part = String(token).split('.')[1];
  if (!part) throw new ChinwagError('bad_token', 'not a JWT');
  let b64 = part.replace(/-/g, '+').replace(/_/g, '/');
  while (b64.length % 4) b64 += '=';
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return JSON.parse(new TextDecoder().decode(bytes));
}

/**
 * The DM room of two users: `dm:<a>:<b>` with a < b (user ids are ASCII, so
 * string order is byte order).
 */
export function dmRoom(a, b) {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** `ws(s)://host/ws` from `ws(s)://...` or `http(s)://...`; a bare origin gets `/ws`. */
function wsUrl(url) {
  const u = new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '' || u.pathname === '/') u.pathname = '/ws';
  u.hash = '';
  return u;
}

function randomTag() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') {
    const b = c.getRandomValues(new Uint8Array(6));
    return Array.from(b, (x) => x.toString(36).padStart(2, '0')).join('').slice(0, 10);
  }
  return Math.random().toString(36).slice(2, 12);
}

function reportError(e) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
  else setTimeout(() => { throw e; }, 0);
}

/** Whether a room event `ev` from this user is what `frame` (send/dm/edit/delete/react) made. */
function eventMatches(frame, ev) {
  switch (frame.type) {
    case 'send':
    case 'dm':
      // A message seen only in its current state (edited or deleted) cannot be
      // compared by text: counted as a match, so that nothing is sent twice.
      return ev.type === 'message' && (ev.reply_to ?? null) === (frame.reply_to ?? null)
        && (ev.text === frame.text || ev.deleted === true || ev.edited_ts !== undefined);
    case 'edit':
      return ev.type === 'edit' && ev.target === frame.seq && (ev.text === frame.text || ev.text === undefined);
    case 'delete':
      return ev.type === 'delete' && ev.target === frame.seq;
    case 'react':
      return ev.type === 'reaction' && ev.target === frame.seq && ev.emoji === frame.emoji && ev.on === frame.on;
    default:
      return false;
  }
}

const DEFAULT_RECONNECT = Object.freeze({ initialDelayMs: 500, maxDelayMs: 15000, factor: 2, jitter: 0.5 });

/**
 * A chinwag connection that reconnects, resumes and refreshes its token by itself.
 */
export class ChinwagClient {
  /**
   * @param {import('./index.js').ClientOptions} options
   */
  constructor(options) {
    if (!options || !options.url) throw new TypeError('ChinwagClient: options.url is required');
    if (!options.token && !options.user) {
      throw new TypeError('ChinwagClient: options.token (or options.user, on a server in open mode) is required');
    }
    const encoding = options.encoding || 'json';
    if (!SUBPROTOCOLS[encoding]) throw new TypeError(`ChinwagClient: unknown encoding ${encoding}`);
    this._url = wsUrl(options.url);
    this._token = options.token || null;
    /** Open mode (PROTOCOL.md section 2): the user id sent as `?user=` while there is no token. */
    this._openUser = options.user || null;
    this._tokenSeenAt = Date.now() / 1000;
    this._encoding = encoding;
    this._WebSocket = options.WebSocket || null;
    this._fetch = options.fetch || null;
    this._reconnect = options.reconnect === false ? null : { ...DEFAULT_RECONNECT, ...(options.reconnect || {}) };
    this._autoRefresh = options.refresh !== false;
    this._since = options.since ? { ...options.since } : null;
    this._heartbeatMs = options.heartbeatMs ?? 30000;
    this._heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? 10000;
    this._retryRateLimited = options.retryRateLimited !== false;
    this._probeAuth = options.probeAuth !== false;

    this._listeners = new Map();
    this._state = 'idle';
    this._want = false; // the app wants a connection
    this._conn = null; // {ws, hello, opened}
    this._ready = false; // hello seen and the resume done: app frames may go out
    this._hello = null;
    this._user = null;
    this._skewMs = 0; // server clock minus ours
    this._attempt = 0;
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._refreshing = false;
    this._heartbeatTimer = null;
    this._flushTimer = null;
    this._flushAt = 0;
    this._eventOut = 0; // event frames written and not yet settled
    this._lastRx = 0;
    this._pingOut = false;
    this._bucket = { tokens: 40, rate: 20, burst: 40, at: Date.now() };
    this._connectWaiters = [];

    this._idTag = randomTag();
    this._idNext = 0;
    /** @type {Map<string, any>} pending requests by id, in creation order */
    this._pending = new Map();
    /** @type {Map<string, {last: number, syncing: Promise<void> | null, buffer: Map<number, any>}>} */
    this._rooms = new Map();
    /** This user's room events seen while event frames are unacknowledged: room -> events. */
    this._own = new Map();
    /** Seqs of events acknowledged to this client while event frames are out: room -> Set. */
    this._claimed = new Map();
    /** Room events fetched while catching up (history, join `since`) -> the seq their state is as of. */
    this._fetched = new WeakMap();
    this._settled = 0;

    /** Counters, for logs and tests. */
    this.stats = { connects: 0, reconnects: 0, resent: 0, recovered: 0, resumedEvents: 0, duplicatesDropped: 0 };
  }

  // ---- state ---------------------------------------------------------------

  /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' */
  get state() { return this._state; }

  /** The current token (the latest one from `refresh`); null in open mode. */
  get token() { return this._token; }

  /** The user id from the last `hello` (null before the first one). */
  get user() { return this._user; }

  /** The last `hello` frame. */
  get hello() { return this._hello; }

  /** The encoding asked for ('json' | 'msgpack'). */
  get encoding() { return this._encoding; }

  /** The subprotocol the server chose for the current connection ('' if none or not connected). */
  get protocol() { return (this._conn && this._conn.ws && this._conn.ws.protocol) || ''; }

  /** The last seq of `room` delivered to the app (undefined if not tracked). */
  lastSeq(room) {
    const st = this._rooms.get(room);
    return st ? st.last : undefined;
  }

  /** { room: last delivered seq } for every tracked room: pass it as `since` to resume later. */
  positions() {
    const out = {};
    for (const [room, st] of this._rooms) out[room] = st.last;
    return out;
  }

  /** Replaces the token used for the next connections (after an `auth_error`, say). */
  setToken(token) {
    this._token = token;
    this._tokenSeenAt = this._serverNow() / 1000;
    if (this._ready) this._scheduleRefresh();
  }

  // ---- events --------------------------------------------------------------

  /**
   * Adds a listener; returns a function that removes it.
   * @param {string} type a server frame type, a lifecycle event or 'frame' (every frame)
   * @param {(payload: any) => void} fn
   */
  on(type, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /** Removes a listener. */
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  /** Like on(), for one event; without fn, returns a Promise of the next one. */
  once(type, fn) {
    if (!fn) return new Promise((resolve) => this.once(type, resolve));
    const off = this.on(type, (p) => { off(); fn(p); });
    return off;
  }

  _emit(type, payload, meta) {
    const set = this._listeners.get(type);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try { fn(payload, meta); } catch (e) { reportError(e); }
    }
  }

  // ---- lifecycle -----------------------------------------------------------

  /**
   * Connects (and keeps reconnecting until close()). Resolves with the `hello`
   * frame once the connection is open and caught up; rejects on an auth error
   * or close().
   * @returns {Promise<any>}
   */
  connect() {
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._ready) { this._settleConnect(null, this._hello); return p; }
    this._want = true;
    if (!this._conn && !this._reconnectTimer) this._open();
    return p;
  }

  /**
   * Closes the connection for good (until connect() is called again). Pending
   * requests reject with code 'closed'; those that may have reached the
   * server carry `inDoubt: true`.
   */
  close(code = 1000, reason = 'client closed') {
    const wasOpen = this._conn !== null;
    this._want = false;
    this._clearTimers();
    const conn = this._conn;
    this._conn = null;
    this._ready = false;
    this._state = 'closed';
    if (conn) {
      this._detach(conn.ws);
      try { conn.ws.close(code, reason); } catch (_) { /* already closing */ }
    }
    this._failAll('closed', 'the client was closed');
    this._settleConnect(new ChinwagError('closed', 'the client was closed'));
    if (wasOpen) this._emit('close', { code, reason, wasClean: true, byClient: true });
  }

  /**
   * While waiting to reconnect, tries at once and starts the backoff afresh
   * (a browser page calls it on the window's `online` event).
   */
  retryNow() {
    if (!this._want || !this._reconnectTimer) return;
    clearTimeout(this._reconnectTimer);
    this._attempt = 0;
    this._open();
  }

  _clearTimers() {
    clearTimeout(this._reconnectTimer); this._reconnectTimer = null;
    clearTimeout(this._refreshTimer); this._refreshTimer = null;
    clearInterval(this._heartbeatTimer); this._heartbeatTimer = null;
    clearTimeout(this._flushTimer); this._flushTimer = null;
  }

  _settleConnect(err, hello) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) {
      if (err) w.reject(err); else w.resolve(hello);
    }
  }

  _serverNow() { return Date.now() + this._skewMs; }

  _claims() {
    if (!this._token) return {};
    try { return decodeJwt(this._token); } catch (_) { return {}; }
  }

  _open() {
    this._reconnectTimer = null;
    if (!this._want) return;
    const claims = this._claims();
    if (typeof claims.exp === 'number' && claims.exp * 1000 <= this._serverNow()) {
      this._authFail({ code: 'token_expired', reason: 'the token has expired' });
      return;
    }
    const Ctor = this._WebSocket || globalThis.WebSocket;
    if (typeof Ctor !== 'function') {
      this._want = false;
      this._state = 'closed';
      this._failAll('no_websocket', 'no WebSocket on this runtime: pass options.WebSocket');
      this._settleConnect(new ChinwagError('no_websocket', 'no WebSocket on this runtime: pass options.WebSocket'));
      return;
    }
    const url = new URL(this._url.href);
    if (this._token) url.searchParams.set('token', this._token);
    else url.searchParams.set('user', this._openUser);
    this._state = this._state === 'idle' || this._state === 'closed' ? 'connecting' : 'reconnecting';
    const conn = { ws: null, hello: false, opened: false };
    this._conn = conn;
    let ws;
    try {
      ws = new Ctor(url.href, [SUBPROTOCOLS[this._encoding]]);
    } catch (e) {
      this._conn = null;
      this._socketGone(conn, { code: 1006, reason: String(e && e.message || e), wasClean: false });
      return;
    }
    conn.ws = ws;
    try { ws.binaryType = 'arraybuffer'; } catch (_) { /* not settable */ }
    ws.onopen = () => {
      if (conn !== this._conn) return;
      conn.opened = true;
      this._lastRx = Date.now();
      const proto = ws.protocol || '';
      if (proto === SUBPROTOCOLS.msgpack) conn.encoding = 'msgpack';
      else conn.encoding = 'json';
    };
    ws.onmessage = (e) => { if (conn === this._conn) this._onData(conn, e.data); };
    ws.onerror = () => {
      // A close event follows, except in some runtimes (Node 20's WebSocket
      // after a refused upgrade): then the socket is given up here.
      setTimeout(() => {
        if (conn !== this._conn || (conn.opened && ws.readyState < 2)) return;
        this._detach(ws);
        try { ws.close(); } catch (_) { /* not open */ }
        this._socketGone(conn, { code: 1006, reason: 'connection failed', wasClean: false });
      }, 250);
    };
    ws.onclose = (e) => {
      if (conn !== this._conn) return;
      this._socketGone(conn, { code: e.code, reason: e.reason || '', wasClean: !!e.wasClean });
    };
  }

  _detach(ws) {
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {};
  }

  /** Drops a connection that looks dead and reconnects. */
  _dropConnection(reason) {
    const conn = this._conn;
    if (!conn) return;
    this._detach(conn.ws);
    try { conn.ws.close(4000, reason); } catch (_) { /* ignore */ }
    this._socketGone(conn, { code: 1006, reason, wasClean: false });
  }

  _socketGone(conn, info) {
    if (this._conn === conn) this._conn = null;
    this._ready = false;
    clearInterval(this._heartbeatTimer); this._heartbeatTimer = null;
    clearTimeout(this._refreshTimer); this._refreshTimer = null;
    clearTimeout(this._flushTimer); this._flushTimer = null;
    this._pingOut = false;
    this._refreshing = false;
    // Requests that went out on this connection: event frames are now in
    // doubt (checked against the room after the resume); others go out again.
    // The client's own requests (resume, ping, refresh) start afresh.
    for (const p of [...this._pending.values()]) {
      if (p.internal) {
        this._pending.delete(p.id);
        p.reject(new ChinwagError('disconnected', 'the connection closed'));
        continue;
      }
      if (p.conn !== conn) continue;
      p.conn = null;
      if (EVENT_FRAMES.has(p.frame.type)) p.inDoubt = true;
    }
    for (const st of this._rooms.values()) st.buffer.clear();
    this._emit('close', info);
    if (info.code === 4001) {
      this._authFail({ code: 4001, reason: info.reason || 'token revoked or expired' });
      return;
    }
    if (!this._want) return;
    if (!this._reconnect) {
      this._want = false;
      this._state = 'closed';
      this._failAll('disconnected', 'the connection closed and reconnect is off');
      this._settleConnect(new ChinwagError('disconnected', 'the connection closed'));
      return;
    }
    this._scheduleReconnect(info);
    // Open mode has no token to ask about.
    if (!conn.hello && this._probeAuth && this._token) this._probe();
  }

  _scheduleReconnect(info) {
    const r = this._reconnect;
    const base = Math.min(r.maxDelayMs, r.initialDelayMs * r.factor ** this._attempt);
    const delayMs = Math.round(base * (1 - r.jitter * Math.random()));
    this._attempt += 1;
    this._state = 'reconnecting';
    this.stats.reconnects += 1;
    this._emit('reconnecting', { attempt: this._attempt, delayMs, code: info.code, reason: info.reason });
    this._reconnectTimer = setTimeout(() => this._open(), delayMs);
  }

  /** After a failed upgrade: is it the token (HTTP 401)? Browsers hide the status. */
  async _probe() {
    const f = this._fetch || globalThis.fetch;
    if (typeof f !== 'function') return;
    const token = this._token;
    let status = 0;
    try {
      const r = await f(`${this.httpBase}/api/rooms?limit=1`, { headers: { authorization: `Bearer ${token}` } });
      status = r.status;
      try { await r.body?.cancel?.(); } catch (_) { /* ignore */ }
    } catch (_) {
      return; // server down, or cross-origin without CORS: keep retrying
    }
    if (status === 401 && this._want && token === this._token && !this._ready) {
      const conn = this._conn;
      if (conn) { this._detach(conn.ws); try { conn.ws.close(); } catch (_) { /* ignore */ } this._conn = null; }
      this._authFail({ code: 401, reason: 'the server refused the token' });
    }
  }

  _authFail(info) {
    this._want = false;
    this._clearTimers();
    this._state = 'closed';
    this._ready = false;
    this._failAll('auth', `authentication failed: ${info.reason}`);
    this._emit('auth_error', info);
    this._settleConnect(new ChinwagError('auth', `authentication failed: ${info.reason}`, { closeCode: info.code }));
  }

  _failAll(code, message) {
    const all = [...this._pending.values()];
    this._pending.clear();
    this._eventOut = 0;
    this._own.clear();
    this._claimed.clear();
    for (const p of all) {
      const inDoubt = p.inDoubt || (p.conn !== null && EVENT_FRAMES.has(p.frame.type));
      p.reject(new ChinwagError(code, message, { inDoubt, frame: p.frame }));
    }
  }

  // ---- incoming ------------------------------------------------------------

  _onData(conn, data) {
    let frame;
    try {
      if (typeof data === 'string') frame = JSON.parse(data);
      else frame = msgpackDecode(data instanceof ArrayBuffer || ArrayBuffer.isView(data) ? data : new Uint8Array(data));
    } catch (e) {
      this._emit('protocol_error', { reason: `undecodable frame: ${e.message}` });
      return;
    }
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
    this._lastRx = Date.now();
    this._pingOut = false;
    this._emit('frame', frame);
    const t = frame.type;
    if (t === 'hello') { this._onHello(conn, frame); return; }
    if (ROOM_EVENTS.has(t)) { this._onRoomEvent(frame); return; }
    if (t === 'error') { this._onError(frame); return; }
    const p = frame.id !== undefined && frame.id !== null ? this._pending.get(String(frame.id)) : undefined;
    const mine = p && REPLY[p.frame.type] === t ? p : undefined;
    switch (t) {
      case 'ack':
        if (typeof frame.room === 'string' && typeof frame.seq === 'number') {
          this._claim(frame.room, frame.seq);
        }
        break;
      case 'token':
        if (typeof frame.token === 'string') {
          this._token = frame.token;
          this._tokenSeenAt = this._serverNow() / 1000;
        }
        this._refreshing = false;
        this._scheduleRefresh();
        break;
      case 'joined':
        if (mine) this._onJoined(mine.frame, frame);
        break;
      case 'left':
        this._rooms.delete(frame.room);
        break;
      default:
        break;
    }
    if (mine) {
      this._pending.delete(mine.id);
      this._eventFrameSettled(mine);
      mine.resolve(frame);
      if (mine.barrier) this._scheduleFlush(0);
    }
    // Replies to the client's own requests stay inside, except a new token.
    if (!(mine && mine.internal) || t === 'token') this._emit(t, frame);
  }

  _onError(frame) {
    const p = frame.id !== undefined && frame.id !== null ? this._pending.get(String(frame.id)) : undefined;
    if (!p || p.conn !== this._conn) {
      this._emit('error', frame); // not the answer to a pending request
      return;
    }
    if (frame.code === 'rate_limited' && this._retryRateLimited) {
      // Not acted on: send it again later, in its place.
      p.conn = null;
      p.notBefore = Date.now() + (Number(frame.retry_after_ms) || 1000);
      this._bucket.tokens = 0;
      this._scheduleFlush(p.notBefore - Date.now());
      return;
    }
    this._pending.delete(p.id);
    this._eventFrameSettled(p);
    p.reject(new ChinwagError(frame.code, frame.message || frame.code, { frame, retryAfterMs: frame.retry_after_ms }));
    if (p.barrier) this._scheduleFlush(0);
  }

  _onHello(conn, hello) {
    conn.hello = true;
    const reconnected = this._hello !== null;
    this._hello = hello;
    this._user = hello.user;
    this._attempt = 0;
    this.stats.connects += 1;
    if (typeof hello.server_time === 'number') this._skewMs = hello.server_time - Date.now();
    const lim = hello.limits || {};
    const rate = Number(lim.rate) || 20;
    const burst = Number(lim.burst) || 40;
    this._bucket = { rate, burst, tokens: burst, at: Date.now() };
    this._emit('hello', hello);

    const toSync = [];
    const seen = new Set();
    for (const r of hello.rooms || []) {
      seen.add(r.room);
      let st = this._rooms.get(r.room);
      if (!st) {
        const since = this._since && typeof this._since[r.room] === 'number' ? this._since[r.room] : r.seq;
        st = this._newRoom(r.room, Math.min(since, r.seq));
      }
      // A room behind what we saw cannot happen with a durable server; if it
      // does (data restored from an old backup), follow the server.
      if (r.seq < st.last) st.last = r.seq;
      if (r.seq > st.last) toSync.push(r.room);
    }
    this._since = null;
    // Rooms this user is no longer a member of (left on another connection).
    for (const room of [...this._rooms.keys()]) if (!seen.has(room)) this._rooms.delete(room);

    this._startHeartbeat();
    this._scheduleFlush(0); // internal requests of the resume
    Promise.all(toSync.map((room) => this._resync(room).catch(() => {}))).then(() => {
      if (conn !== this._conn) return;
      this._resolveInDoubt();
      this._ready = true;
      this._state = 'open';
      this._emit('open', { hello, reconnected });
      this._settleConnect(null, hello);
      this._scheduleRefresh();
      this._scheduleFlush(0);
    });
  }

  _newRoom(room, last) {
    const st = { last, syncing: null, buffer: new Map() };
    this._rooms.set(room, st);
    return st;
  }

  _onJoined(req, joined) {
    let st = this._rooms.get(joined.room);
    if (typeof req.since === 'number') {
      if (!st) st = this._newRoom(joined.room, req.since);
      for (const ev of joined.history || []) {
        this._fetched.set(ev, joined.seq);
        this._onRoomEvent(ev, true);
      }
      if (joined.more) this._resync(joined.room).catch(() => {});
    } else if (!st) {
      this._newRoom(joined.room, joined.seq);
    }
  }

  _onRoomEvent(ev, fromJoin = false) {
    let st = this._rooms.get(ev.room);
    if (!st) st = this._newRoom(ev.room, ev.seq - 1); // a room this connection was subscribed to elsewhere
    if (ev.seq <= st.last) { this.stats.duplicatesDropped += 1; return; }
    if (st.syncing) { st.buffer.set(ev.seq, ev); return; }
    if (ev.seq === st.last + 1 || fromJoin) { this._deliver(st, ev); this._drain(st); return; }
    // A gap: fetch what is missing, hold this one meanwhile.
    st.buffer.set(ev.seq, ev);
    this._resync(ev.room).catch(() => {});
  }

  _deliver(st, ev) {
    if (ev.seq <= st.last) { this.stats.duplicatesDropped += 1; return; }
    st.last = ev.seq;
    if (ev.from === this._user && this._eventOut > 0) {
      let list = this._own.get(ev.room);
      if (!list) this._own.set(ev.room, (list = []));
      list.push(ev);
    }
    const asOf = this._fetched.get(ev);
    this._emit(ev.type, ev, asOf === undefined ? LIVE : { resumed: true, asOf });
  }

  /** Delivers the buffered events that follow on. */
  _drain(st) {
    while (st.buffer.size) {
      const next = st.buffer.get(st.last + 1);
      if (!next) {
        // Drop what is already delivered; stop at a gap.
        for (const s of st.buffer.keys()) if (s <= st.last) st.buffer.delete(s);
        return;
      }
      st.buffer.delete(next.seq);
      this._deliver(st, next);
    }
  }

  /** Fetches the events of `room` after the last delivered seq, then delivers the held ones. */
  _resync(room) {
    const st = this._rooms.get(room);
    if (!st) return Promise.resolve();
    if (st.syncing) return st.syncing;
    const conn = this._conn;
    const run = async () => {
      let idle = 0;
      for (;;) {
        const before = st.last;
        const h = await this._request({ type: 'history', room, after: st.last, limit: HISTORY_PAGE }, { internal: true });
        if (conn !== this._conn || this._rooms.get(room) !== st) return;
        const page = h.messages || [];
        // Each item shows its message as of (at least) the page's last seq.
        const asOf = page.reduce((max, m) => Math.max(max, m.seq), 0);
        for (const m of page) {
          if (m.seq > st.last) { this.stats.resumedEvents += 1; this._fetched.set(m, asOf); this._deliver(st, m); }
        }
        this._drain(st);
        if (h.more) continue;
        if (st.buffer.size === 0) return;
        // Held events above a gap that history did not fill: ask once more,
        // then deliver them in order anyway rather than stall.
        idle = st.last === before ? idle + 1 : 0;
        if (idle >= 2) {
          for (const s of [...st.buffer.keys()].sort((a, b) => a - b)) {
            const ev = st.buffer.get(s);
            st.buffer.delete(s);
            this._deliver(st, ev);
          }
          return;
        }
      }
    };
    st.syncing = run().finally(() => {
      st.syncing = null;
      if (conn === this._conn) this._drain(st);
    });
    return st.syncing;
  }

  // ---- the retry of event frames --------------------------------------------

  _eventFrameSettled(p) {
    if (!p.counted) return;
    p.counted = false;
    this._eventOut -= 1;
    if (this._eventOut === 0) { this._own.clear(); this._claimed.clear(); return; }
    if (++this._settled % 256 === 0) this._pruneOwn();
  }

  _claim(room, seq) {
    let set = this._claimed.get(room);
    if (!set) this._claimed.set(room, (set = new Set()));
    set.add(seq);
  }

  _isClaimed(room, seq) {
    const set = this._claimed.get(room);
    return set !== undefined && set.has(seq);
  }

  /** Forgets own events and claims that no pending frame can match any more. */
  _pruneOwn() {
    const minBase = new Map(); // room -> lowest baseSeq of a pending event frame
    for (const p of this._pending.values()) {
      if (!p.counted) continue;
      const room = this._roomOf(p.frame);
      minBase.set(room, Math.min(minBase.get(room) ?? Infinity, p.baseSeq));
    }
    for (const [room, list] of this._own) {
      const base = minBase.get(room) ?? Infinity;
      const keep = list.filter((ev) => ev.seq > base);
      if (keep.length) this._own.set(room, keep); else this._own.delete(room);
    }
    for (const [room, set] of this._claimed) {
      const base = minBase.get(room) ?? Infinity;
      for (const seq of set) if (seq <= base) set.delete(seq);
      if (set.size === 0) this._claimed.delete(room);
    }
  }

  /**
   * After a reconnect and the resume of every room: for each event frame that
   * went out without an answer, look for the event it made among this user's
   * events since it went out; found: resolve with it; not found: send it
   * again (same id).
   */
  _resolveInDoubt() {
    for (const p of [...this._pending.values()]) {
      if (!p.inDoubt) continue;
      p.inDoubt = false;
      const room = this._roomOf(p.frame);
      const list = (room && this._own.get(room)) || [];
      const hit = list.find((ev) => ev.seq > p.baseSeq && !this._isClaimed(room, ev.seq) && eventMatches(p.frame, ev));
      if (hit) {
        this._claim(room, hit.seq);
        this._pending.delete(p.id);
        this._eventFrameSettled(p);
        this.stats.recovered += 1;
        const ack = { type: 'ack', id: p.id, room, seq: hit.seq, ts: hit.ts, recovered: true };
        p.resolve(ack);
        this._emit('ack', ack);
      } else {
        this.stats.resent += 1;
        p.resent = (p.resent || 0) + 1;
      }
    }
    this._pruneOwn();
  }

  _roomOf(frame) {
    if (frame.type === 'dm') return this._user ? dmRoom(this._user, frame.to) : undefined;
    return frame.room;
  }

  // ---- outgoing ------------------------------------------------------------

  /**
   * Sends any client frame and resolves with its reply (see PROTOCOL.md
   * section 3). Frames without a reply (`typing`, `read`) resolve once written.
   * @param {object} frame a client frame without `id`
   * @returns {Promise<any>}
   */
  request(frame, opts = {}) {
    if (!frame || typeof frame.type !== 'string') return Promise.reject(new TypeError('a frame needs a type'));
    if (this._state === 'closed' && !this._want) {
      return Promise.reject(new ChinwagError('closed', 'the client is closed; call connect() first'));
    }
    if (frame.type === 'typing' && !this._ready) return Promise.resolve(undefined); // stale by the time it could go
    return this._request({ ...frame }, opts);
  }

  _request(frame, { internal = false } = {}) {
    const id = `${this._idTag}-${(this._idNext++).toString(36)}`;
    frame.id = id;
    return new Promise((resolve, reject) => {
      const p = {
        id, frame, resolve, reject, internal,
        conn: null, inDoubt: false, notBefore: 0, baseSeq: undefined, counted: false,
        since: frame.type === 'join' ? frame.since : undefined,
        barrier: frame.type === 'join' || frame.type === 'leave',
        noReply: REPLY[frame.type] === undefined,
      };
      this._pending.set(id, p);
      this._scheduleFlush(0);
    });
  }

  _scheduleFlush(ms) {
    const at = Date.now() + Math.max(0, ms);
    if (this._flushTimer) {
      if (this._flushAt <= at) return; // one is due sooner
      clearTimeout(this._flushTimer);
    }
    this._flushAt = at;
    this._flushTimer = setTimeout(() => { this._flushTimer = null; this._flush(); }, Math.max(0, ms));
  }

  _takeToken() {
    const b = this._bucket;
    const now = Date.now();
    b.tokens = Math.min(b.burst, b.tokens + ((now - b.at) / 1000) * b.rate);
    b.at = now;
    if (b.tokens >= 1) { b.tokens -= 1; return 0; }
    return Math.ceil(((1 - b.tokens) / b.rate) * 1000);
  }

  /** Writes pending frames in creation order, paced by the server's rate limit. */
  _flush() {
    const conn = this._conn;
    if (!conn || !conn.hello) return;
    const now = Date.now();
    for (const p of this._pending.values()) {
      if (p.conn === conn) {
        if (p.barrier) return; // a join/leave: later frames wait for its reply
        continue;
      }
      if (!p.internal && !this._ready) continue;
      if (p.inDoubt) continue;
      if (p.notBefore > now) { this._scheduleFlush(p.notBefore - now); return; }
      const wait = this._takeToken();
      if (wait > 0) { this._scheduleFlush(wait); return; }
      this._transmit(conn, p);
      if (p.barrier) return;
    }
  }

  _transmit(conn, p) {
    const f = p.frame;
    if (EVENT_FRAMES.has(f.type) && p.baseSeq === undefined) {
      const room = this._roomOf(f);
      const st = room !== undefined ? this._rooms.get(room) : undefined;
      p.baseSeq = st ? st.last : 0;
    }
    if (EVENT_FRAMES.has(f.type) && !p.counted) {
      p.counted = true;
      this._eventOut += 1;
    }
    let data;
    try {
      data = (conn.encoding || this._encoding) === 'msgpack' ? msgpackEncode(f) : JSON.stringify(f);
    } catch (e) {
      this._pending.delete(p.id);
      this._eventFrameSettled(p);
      p.reject(new ChinwagError('bad_request', `cannot encode the frame: ${e.message}`));
      return;
    }
    p.conn = conn;
    try {
      conn.ws.send(data);
    } catch (e) {
      // The socket is closing: its close event puts the frame back in line.
      return;
    }
    if (p.noReply) {
      this._pending.delete(p.id);
      this._eventFrameSettled(p);
      p.resolve(undefined);
    }
  }

  // ---- heartbeat and token refresh ------------------------------------------

  _startHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
    if (!(this._heartbeatMs > 0)) return;
    const tick = Math.max(250, Math.min(5000, Math.floor(this._heartbeatMs / 2)));
    this._heartbeatTimer = setInterval(() => {
      const idle = Date.now() - this._lastRx;
      if (idle > this._heartbeatMs + this._heartbeatTimeoutMs) { this._dropConnection('no answer to ping'); return; }
      if (idle > this._heartbeatMs && !this._pingOut) {
        this._pingOut = true;
        this._request({ type: 'ping' }, { internal: true }).catch(() => {});
      }
    }, tick);
  }

  /** Refreshes the token once less than half of its lifetime is left. */
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._autoRefresh || !this._ready) return;
    const c = this._claims();
    if (typeof c.exp !== 'number') return;
    const iat = typeof c.iat === 'number' ? c.iat : this._tokenSeenAt;
    const dueMs = (iat + (c.exp - iat) / 2) * 1000;
    const wait = dueMs - this._serverNow();
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      if (dueMs > this._serverNow()) { this._scheduleRefresh(); return; } // a long timer, clamped
      this._refreshNow();
    }, Math.min(MAX_TIMER_MS, Math.max(0, wait)));
  }

  _refreshNow() {
    if (this._refreshing || !this._ready) return;
    this._refreshing = true;
    const conn = this._conn;
    this._request({ type: 'refresh' }, { internal: true }).catch(() => {
      this._refreshing = false;
      // Refused (storage down, say): try again in a while on this connection.
      if (conn === this._conn) this._refreshTimer = setTimeout(() => this._refreshNow(), 30000);
    });
  }

  // ---- the client frames -----------------------------------------------------

  /** `join`: resolves with `joined`. With `since`, the events after it also arrive as room events. */
  join(room, opts = {}) { return this.request({ type: 'join', room, since: opts.since }); }

  /** `leave`: resolves with `left`. */
  leave(room) { return this.request({ type: 'leave', room }); }

  /** `send`: resolves with the `ack` once the message is durable. */
  send(room, text, opts = {}) { return this.request({ type: 'send', room, text, reply_to: opts.replyTo }); }

  /** `dm`: resolves with the `ack` (its `room` is the DM room). */
  dm(to, text, opts = {}) { return this.request({ type: 'dm', to, text, reply_to: opts.replyTo }); }

  /** `edit`: resolves with the `ack` of the edit event. */
  edit(room, seq, text) { return this.request({ type: 'edit', room, seq, text }); }

  /** `delete`: resolves with the `ack` of the delete event. */
  delete(room, seq) { return this.request({ type: 'delete', room, seq }); }

  /** `react`: resolves with the `ack` of the reaction event. */
  react(room, seq, emoji, on = true) { return this.request({ type: 'react', room, seq, emoji, on }); }

  /** `typing`: no reply; resolves once written (dropped while disconnected). */
  typing(room, active = true) { return this.request({ type: 'typing', room, active }); }

  /** `history`: resolves with `history`. */
  history(room, opts = {}) {
    return this.request({ type: 'history', room, before: opts.before, after: opts.after, limit: opts.limit });
  }

  /** `thread`: resolves with `thread`. */
  thread(room, root, opts = {}) { return this.request({ type: 'thread', room, root, after: opts.after, limit: opts.limit }); }

  /** `search`: resolves with `search_results`. */
  search(query, opts = {}) {
    return this.request({ type: 'search', query, room: opts.room, cursor: opts.cursor, limit: opts.limit });
  }

  /** `rooms`: resolves with `room_list`. */
  rooms(opts = {}) { return this.request({ type: 'rooms', prefix: opts.prefix, cursor: opts.cursor, limit: opts.limit }); }

  /** `read`: no reply; resolves once written. */
  read(room, seq) { return this.request({ type: 'read', room, seq }); }

  /** `presence`: resolves with `presence_list`. */
  presence(room) { return this.request({ type: 'presence', room }); }

  /** `refresh`: resolves with `token` (the client keeps and uses the new token too). */
  refresh() { return this.request({ type: 'refresh' }); }

  /** `ping`: resolves with `pong`. */
  ping() { return this.request({ type: 'ping' }); }

  // ---- HTTP (section 5) ------------------------------------------------------

  /** `http(s)://host:port` of the server. */
  get httpBase() {
    const u = new URL(this._url.href);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    return u.origin;
  }

  /**
   * Calls the HTTP API with the current token: resolves with the parsed JSON
   * body (null when empty), rejects with a ChinwagError (`code` from the body,
   * `status`).
   */
  async http(method, path, body) {
    const f = this._fetch || globalThis.fetch;
    if (typeof f !== 'function') throw new ChinwagError('no_fetch', 'no fetch on this runtime: pass options.fetch');
    const r = await f(this.httpBase + path, {
      method,
      headers: {
        ...(this._token ? { authorization: `Bearer ${this._token}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!r.ok) {
      throw new ChinwagError((json && json.error) || `http_${r.status}`, (json && json.message) || `HTTP ${r.status}`, { status: r.status });
    }
    return json;
  }

  /** `GET /health` (no auth). */
  async health() {
    const f = this._fetch || globalThis.fetch;
    const r = await f(`${this.httpBase}/health`);
    return r.json();
  }
}

export default ChinwagClient;
