// The chinwag web client: one file plus the client library (clients/js,
// served as /chinwag.js), served under a strict CSP (no inline script or
// style, no eval), so every piece of user text goes into the page through
// textContent, never innerHTML.
//
// The library owns the connection: it reconnects with backoff, resumes every
// room after the last seq it delivered (each room event reaches the page once,
// in seq order per room), retries sends across reconnects without doubling
// them, paces frames by the server's rate limit and refreshes the token. This
// file is the page: what to show, what to ask for and when.
//
// Sections: utilities · sign-in · state · tokens · connection · hello and
// rooms · room events · message rendering · timeline · read markers ·
// sidebar · actions (edit, delete, react) · threads · mentions · search ·
// directory · sending · typing · notifications.
import { ChinwagClient, decodeJwt, dmRoom } from '/chinwag.js';

(() => {
  'use strict';
  const ROOM_RE = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
  const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const LS_TOKEN = 'chinwag.token', LS_USER = 'chinwag.user', LS_ROOM = 'chinwag.room';
  const LS_EMOJI = 'chinwag.emoji.recent';
  const COMMON_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀', '✅', '🔥', '👏', '🚀'];

  // ---- utilities -------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const button = (cls, text, title) => {
    const b = el('button', cls, text);
    b.type = 'button';
    if (title) { b.title = title; b.setAttribute('aria-label', title); }
    return b;
  };
  const store = {
    get(k) { try { return localStorage.getItem(k); } catch (_) { return null; } },
    set(k, v) { try { localStorage.setItem(k, v); } catch (_) {} },
    del(k) { try { localStorage.removeItem(k); } catch (_) {} },
  };
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  // ---- sign-in --------------------------------------------------------------
  (function takeTokenFromUrl() {
    const h = location.hash.replace(/^#/, '');
    if (!h) return;
    const params = new URLSearchParams(h);
    const t = params.get('token');
    if (t) {
      store.set(LS_TOKEN, t);
      store.del(LS_USER);
      history.replaceState(null, '', location.pathname + location.search);
    }
  })();

  function credentials() {
    const token = store.get(LS_TOKEN);
    if (token) return { token };
    const user = store.get(LS_USER);
    if (user) return { user };
    return null;
  }


  function showSignin(msg) {
    $('app').classList.add('hidden');
    closeModal('directory');
    $('signin').classList.remove('hidden');
    $('signin-error').textContent = msg || '';
    $('user-name').focus();
  }
  $('user-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('user-name').value.trim();
    if (!USER_RE.test(name)) { $('signin-error').textContent = 'User names are 1-64 letters, digits, "_", "." or "-".'; return; }
    store.del(LS_TOKEN);
    store.set(LS_USER, name);
    start();
  });
  $('signout').addEventListener('click', () => {
    store.del(LS_TOKEN); store.del(LS_USER); store.del(LS_ROOM);
    if (client) client.close(1000, 'signed out');
    location.reload();
  });

  // ---- state ---------------------------------------------------------------
  let client = null;                   // the ChinwagClient of the current sign-in
  let everOnline = false;
  let hellos = 0;                      // connections so far (for presence freshness)
  let me = null;
  const rooms = new Map();             // name -> room
  const names = new Map();             // user id -> display name (hello.name, joined.names)
  let current = null;                  // room name
  let outbox = [];                     // messages sent and not acked yet: {key, room, to, text, reply_to, ts}

  function isDm(name) { return name.startsWith('dm:'); }
  function dmPeer(name) {
    const parts = name.split(':');
    if (parts.length !== 3) return name;
    return parts[1] === me ? parts[2] : parts[1];
  }
  function dmRoomFor(user) { return dmRoom(me, user); }
  function displayName(u) { return names.get(u) || u; }
  function label(name) { return isDm(name) ? displayName(dmPeer(name)) : name; }
  function roomTitle(name) { return isDm(name) ? '@ ' + label(name) : '# ' + name; }
  /** A span showing a user's display name, with the id on hover (kept current by refreshNames). */
  function userSpan(cls, u) {
    const s = el('span', cls, displayName(u));
    s.dataset.uid = u;
    s.title = u;
    return s;
  }

  function room(name) {
    let r = rooms.get(name);
    if (!r) {
      r = {
        name, dm: isDm(name), seq: 0, read: 0, unread: 0, mentions: 0, counted: 0,
        msgs: new Map(),               // seq -> message (timeline messages and thread replies)
        seen: new Set(),               // seqs of room events loaded into the timeline (messages and events)
        loaded: 'none',                // none | loading | loaded
        moreOlder: false, loadingOlder: false,
        detached: false, loadingNewer: false, // a window around a search hit, not the room's latest events
        members: new Set(), online: new Set(), presenceConn: -1,
        typing: new Map(),             // user -> timer
        whenLoaded: [],                // callbacks for the first load
        divider: null,                 // read marker when the room was opened ("new messages" line)
      };
      rooms.set(name, r);
    }
    return r;
  }
  function sortedSeen(r) { return [...r.seen].sort((a, b) => a - b); }
  function lowSeen(r) { let m = Infinity; for (const s of r.seen) if (s < m) m = s; return m === Infinity ? 0 : m; }
  function highSeen(r) { let m = 0; for (const s of r.seen) if (s > m) m = s; return m; }
  // `loaded` marks a room's first load done; callbacks waiting for it (a jump
  // to a search hit) run once its events are in (so after ingest()).
  function loaded(r) { r.loaded = 'loaded'; }
  function fireLoaded(r) {
    const cbs = r.whenLoaded; r.whenLoaded = [];
    for (const cb of cbs) try { cb(); } catch (e) { console.error('chinwag: after-load step failed', e); }
  }

  // ---- tokens: stay signed in ------------------------------------------------
  // The server closes a connection whose token expires (4001). The library asks
  // for a fresh token once less than half of its lifetime is left, and the page
  // keeps each new one (`token` event) in localStorage for the next visit. The
  // page also asks at connect when the token expires within 10 minutes, and
  // when the tab comes back (timers sleep in background tabs).
  let clockSkew = 0;                   // server_time - Date.now(), from hello
  let refreshing = false;
  function refreshIfDue(atConnect) {
    if (!online() || !client.token || refreshing) return;
    let c;
    try { c = decodeJwt(client.token); } catch (_) { return; }
    if (typeof c.exp !== 'number') return;
    const exp = c.exp * 1000;
    const life = Math.max(1000, exp - (typeof c.iat === 'number' ? c.iat * 1000 : exp - 30 * 86400e3));
    const left = exp - (Date.now() + clockSkew);
    if (left >= life / 2 && !(atConnect && left < 10 * 60e3)) return;
    refreshing = true;
    client.refresh().catch(() => {}).finally(() => { refreshing = false; });
  }

  // ---- connection ----------------------------------------------------------
  function setStatus(state) {
    const s = $('status');
    s.dataset.state = state;
    s.textContent = state;
    const canSend = state === 'online';
    $('composer').disabled = !current;
    $('send-btn').disabled = !current;
    $('notice').classList.toggle('hidden', canSend || !everOnline);
    if (!canSend && everOnline) $('notice').textContent = 'Connection lost — reconnecting. Messages you send now will go out once back online.';
  }

  /** Connected and caught up: requests go out now. */
  function online() { return !!client && client.state === 'open'; }

  /**
   * A request while online: `make(client)` returns the library's Promise of
   * the reply. Null while offline (nothing is sent): only messages wait for
   * the connection (the outbox); other actions say "not connected".
   */
  function ask(make) { return online() ? make(client) : null; }
  const OFFLINE = { code: 'offline', message: 'Not connected; try again in a moment.' };

  function connect() {
    const cred = credentials();
    if (!cred) { showSignin(); return; }
    $('signin').classList.add('hidden');
    $('app').classList.remove('hidden');
    setStatus(everOnline ? 'reconnecting' : 'connecting');
    if (client) client.close(1000, 'signed in again');
    const c = new ChinwagClient({ url: location.origin, ...cred, reconnect: { maxDelayMs: 10000 } });
    client = c;
    // Listeners of a client that was replaced hear nothing.
    const on = (type, fn) => c.on(type, (f, meta) => {
      if (client !== c) return;
      try { fn(f, meta); } catch (e) { console.error('chinwag: handling a frame failed', e, f); }
    });
    on('hello', onHello);
    on('open', onOpen);
    on('close', onDisconnect);
    on('reconnecting', onReconnecting);
    on('auth_error', onAuthError);
    for (const t of ['message', 'edit', 'delete', 'reaction']) {
      on(t, (f, meta) => ingest(f.room, [f], meta && meta.resumed ? 'resumed' : 'live', meta && meta.asOf));
    }
    on('presence', onPresence);
    on('typing', onTyping);
    on('read', (f) => {
      const r = rooms.get(f.room);
      if (r && f.seq > r.read) { r.read = f.seq; recount(r); renderRooms(); }
    });
    on('left', (f) => onLeft(f.room));
    on('token', (f) => store.set(LS_TOKEN, f.token));
    on('error', (f) => showError(f));
    on('notification', (f) => showError({ code: f.kind, message: f.text }, true));
    c.connect().catch(() => {});       // a refused token arrives as auth_error
  }

  function onDisconnect() {
    for (const r of rooms.values()) {
      for (const t of r.typing.values()) clearTimeout(t);
      r.typing.clear();
    }
    typingActive = false;
    renderTyping();
    setStatus(everOnline ? 'reconnecting' : 'connecting');
  }

  // Open mode (`?user=`): the browser hides the HTTP status of a refused
  // upgrade, and there is no token for the library to ask the API about. If
  // the server answers /health but never lets us in, the user name is refused.
  let suspect = 0, helloSinceFailure = false;
  async function onReconnecting() {
    const c = client;
    if (c.token) return;
    if (helloSinceFailure) { helloSinceFailure = false; suspect = 0; return; }
    let up = false;
    try { up = (await fetch('/health', { cache: 'no-store' })).ok; } catch (_) { up = false; }
    if (c !== client) return;
    suspect = up ? suspect + 1 : 0;
    if (suspect < (everOnline ? 5 : 3)) return;
    suspect = 0;
    c.close(1000, 'user name refused');
    store.del(LS_USER);
    showSignin('The server refused this user name (it may not be in open mode: use a token link).');
  }

  // The token was refused (401), revoked or expired (4001, token_expired). If a
  // refresh (another tab's) stored a newer token meanwhile, go on with that one.
  function onAuthError(info) {
    const c = client;
    const stored = store.get(LS_TOKEN);
    let exp = 0;
    try { exp = decodeJwt(stored).exp * 1000; } catch (_) { exp = 0; }
    if (info.code !== 401 && stored && stored !== c.token && exp > Date.now() + clockSkew) {
      c.setToken(stored);
      c.connect().catch(() => {});
      return;
    }
    store.del(LS_TOKEN);
    if (info.code === 401) {
      store.del(LS_USER);
      showSignin('The server refused this token (bad, expired or revoked).');
    } else showSignin('Your session ended (token expired or revoked). Please sign in again.');
  }

  // ---- hello and rooms ------------------------------------------------------
  // `hello` comes first; then the library delivers what each room missed while
  // we were away (as room events), then `open`.
  function onHello(f) {
    if (me !== null && me !== f.user) { rooms.clear(); current = null; outbox = []; }
    me = f.user;
    hellos++;
    helloSinceFailure = true;
    if (typeof f.name === 'string' && f.name) names.set(me, f.name);
    if (typeof f.server_time === 'number') clockSkew = f.server_time - Date.now();
    const meName = $('me-name');
    meName.textContent = 'signed in as ' + displayName(me);
    meName.title = me;
    const inHello = new Set();
    for (const rs of f.rooms || []) {
      inHello.add(rs.room);
      const r = room(rs.room);
      r.seq = Math.max(r.seq, rs.seq);
      r.read = Math.max(r.read, rs.read);
      // Revision-1 servers send no counts: every seq above the marker is a message there.
      r.unread = typeof rs.unread === 'number' ? rs.unread : Math.max(0, rs.seq - rs.read);
      r.mentions = typeof rs.mentions === 'number' ? rs.mentions : 0;
      r.counted = rs.seq;
    }
    for (const [name, r] of rooms) {
      if (!inHello.has(name) && !r.placeholder) rooms.delete(name);
    }
    if (current && !rooms.has(current)) current = null;
    if (!current) {
      const saved = store.get(LS_ROOM);
      if (saved && rooms.has(saved)) current = saved;
      else if (f.rooms && f.rooms.length) current = [...rooms.keys()].filter((n) => !isDm(n))[0] || f.rooms[0].room;
    }
  }

  function onOpen({ reconnected }) {
    const firstTime = !everOnline;
    everOnline = true;
    suspect = 0;
    setStatus('online');
    refreshIfDue(true);
    // Who is in and online in the rooms we show may have changed meanwhile.
    if (reconnected) for (const r of rooms.values()) if (r.loaded === 'loaded' && !r.placeholder) refreshRoomInfo(r);
    if (current) openRoom(current, { keepScroll: !firstTime });
    else render();
    if (thread.root !== null && rooms.has(thread.room)) loadThread();
    // Nothing to show yet: the room directory is the way in.
    if (!rooms.size && firstTime) openDirectory(true);
  }

  // Members, who is online and display names of a room we hold: a join with
  // `since` the library's last seq (any events in it reach us as room events),
  // or for a DM room (which cannot be joined) its presence.
  function refreshRoomInfo(r) {
    const p = ask((c) => (r.dm ? c.presence(r.name) : c.join(r.name, { since: c.lastSeq(r.name) ?? r.seq })));
    if (p) p.then((f) => (r.dm ? onPresenceList(f) : onJoined(f, true)), () => {});
  }
  // Someone new came online (presence carries no display name): once, shortly.
  const infoTimers = new Map();
  function refreshRoomInfoSoon(r) {
    if (r.dm || r.loaded !== 'loaded' || infoTimers.has(r.name)) return;
    infoTimers.set(r.name, setTimeout(() => {
      infoTimers.delete(r.name);
      if (r.loaded === 'loaded' && rooms.has(r.name)) refreshRoomInfo(r);
    }, 300));
  }

  function initialLoad(r) {
    const fail = (e) => { r.loaded = r.msgs.size ? 'loaded' : 'none'; showError(e); };
    if (r.dm) {
      const p = ask((c) => c.history(r.name, { limit: 50 }));
      if (!p) return;
      r.loaded = 'loading';
      p.then((h) => {
        r.moreOlder = h.more;
        loaded(r);
        if (!h.messages.length) r.seq0 = r.seq;
        ingest(r.name, h.messages, 'older');
        if (r.name === current) renderAllMessages();
        fireLoaded(r);
      }, fail);
      refreshRoomInfo(r);
    } else {
      const p = ask((c) => c.join(r.name));
      if (!p) return;
      r.loaded = 'loading';
      p.then((j) => onJoined(j, false), fail);
    }
  }

  function onPresenceList(p) {
    const r = rooms.get(p.room);
    if (!r) return;
    r.online = new Set(p.online);
    for (const u of p.online) r.members.add(u);
    r.presenceConn = hellos;
    if (p.room === current) renderOnline();
  }

  function mergeNames(map) {
    if (!map || typeof map !== 'object') return;
    let changed = false;
    for (const [u, n] of Object.entries(map)) {
      if (typeof n === 'string' && n && names.get(u) !== n) { names.set(u, n); changed = true; }
    }
    if (changed) refreshNames();
  }

  function onJoined(j, isResync) {
    const r = room(j.room);
    const wasLoaded = r.loaded === 'loaded';
    r.placeholder = false;
    r.members = new Set(j.members);
    r.online = new Set(j.online);
    r.presenceConn = hellos;
    r.seq = Math.max(r.seq, j.seq);
    mergeNames(j.names);
    if (!isResync) {
      r.moreOlder = j.more;
      if (!j.history.length) r.seq0 = j.seq;
    }
    if (!wasLoaded) loaded(r);
    // A join with `since`: the library delivers its events as room events.
    if (!isResync) ingest(j.room, j.history, 'older');
    if (!isResync && j.room === current && !wasLoaded) renderAllMessages();
    renderRooms();
    if (j.room === current) { renderOnline(); renderHeader(); }
    if (!wasLoaded) fireLoaded(r);
  }

  function onLeft(name) {
    rooms.delete(name);
    if (thread.room === name) closeThread();
    if (current === name) {
      current = [...rooms.keys()][0] || null;
      if (current) openRoom(current); else render();
    } else renderRooms();
  }

  function onPresence(f) {
    const r = rooms.get(f.room);
    if (!r) return;
    if (f.state === 'online') {
      const known = r.members.has(f.user);
      r.online.add(f.user); r.members.add(f.user);
      if (!known && !names.has(f.user)) refreshRoomInfoSoon(r);
    } else r.online.delete(f.user);
    if (f.room === current) renderOnline();
  }

  function onTyping(f) {
    const r = rooms.get(f.room);
    if (!r || f.user === me) return;
    clearTimeout(r.typing.get(f.user));
    if (f.active) {
      r.typing.set(f.user, setTimeout(() => { r.typing.delete(f.user); if (f.room === current) renderTyping(); }, 5000));
    } else r.typing.delete(f.user);
    if (f.room === current) renderTyping();
  }


  // ---- room events -----------------------------------------------------------
  // Everything that reaches a room's state goes through ingest(). `kind`:
  //   live    a frame as it happens        older  history below what we have
  //   resumed missed while away, from the library (its state as of `asOf`)
  //   newer   history above what we have   mine   our own message, from its ack
  //   thread  a `thread` reply (replies only, not timeline coverage)
  // Items of history/joined/thread show messages in their current state (text,
  // edited_ts, deleted, reactions, replies), valid at least up to the highest
  // seq known when the reply came; events at or below a message's `stateSeq`
  // are already in it, so applying events is idempotent and order-safe.
  function ingest(name, list, kind, asOf) {
    if (!list || !list.length) return;
    let r = rooms.get(name);
    if (!r) {
      r = room(name);
      // A room we did not know (e.g. a first DM): only seq 1 proves we have it all.
      if ((kind === 'live' || kind === 'resumed') && list[0].seq !== 1) {
        r.seq = Math.max(r.seq, list[0].seq);
        for (const ev of list) { countUnread(r, ev); if (kind === 'live') liveAlert(r, ev); }
        renderRooms();
        if (current === name) initialLoad(r);
        return;
      }
      loaded(r);
      fireLoaded(r);
    }
    r.placeholder = false;
    const timeline = kind !== 'thread';
    // A window around a search hit: live events wait until the view reaches the end.
    const skipLive = r.detached && (kind === 'live' || kind === 'resumed' || kind === 'mine');
    const known = r.loaded !== 'none' && !skipLive;
    let stateSeq = Math.max(r.seq, asOf || 0);
    for (const ev of list) stateSeq = Math.max(stateSeq, ev.seq);
    const fresh = [], changed = new Set();
    for (const ev of list) {
      r.seq = Math.max(r.seq, ev.seq);
      const type = ev.type || 'message';
      if (!known) { countUnread(r, ev); if (kind === 'live') liveAlert(r, ev); continue; }
      if (timeline && r.seen.has(ev.seq)) {
        if (type === 'message') { const m = r.msgs.get(ev.seq); if (m && mergeState(m, ev, kind, stateSeq)) changed.add(m); }
        continue;
      }
      if (timeline) r.seen.add(ev.seq);
      if (type === 'message') {
        const existing = r.msgs.get(ev.seq);
        if (existing) { if (mergeState(existing, ev, kind, stateSeq)) changed.add(existing); continue; }
        const msg = makeMsg(name, ev, kind === 'live' || kind === 'mine' ? ev.seq : stateSeq);
        if (kind === 'mine') msg.provisional = true;
        r.msgs.set(ev.seq, msg);
        fresh.push(msg);
        if (msg.reply_to) { const root = noteReply(r, msg); if (root) changed.add(root); }
        if (kind === 'live' || kind === 'resumed' || kind === 'newer') countUnread(r, ev);
        if (kind === 'live' && msg.from !== me) {
          clearTimeout(r.typing.get(msg.from));
          if (r.typing.delete(msg.from) && name === current) renderTyping();
          liveAlert(r, msg);
        }
      } else if (kind !== 'thread') {
        for (const m of applyEvent(r, ev)) changed.add(m);
      }
    }
    if (fresh.length || changed.size) {
      if (name === current) {
        const tl = fresh.filter((m) => !m.reply_to && r.seen.has(m.seq));
        if (tl.length) insertMessages(r, tl, kind);
      }
      if (thread.room === name) threadAdd(fresh.filter((m) => m.reply_to === thread.root));
      for (const m of changed) updateMsg(r, m);
      recount(r);
    }
    if (name === current) markRead();
    renderRooms();
  }

  function makeMsg(room, ev, stateSeq) {
    return {
      room, seq: ev.seq, ts: ev.ts, from: ev.from, text: ev.deleted ? '' : (ev.text || ''),
      reply_to: ev.reply_to || null, mentions: Array.isArray(ev.mentions) ? ev.mentions : [],
      edited_ts: ev.edited_ts || null, deleted: !!ev.deleted,
      reactions: Array.isArray(ev.reactions) ? ev.reactions.map((x) => ({ emoji: x.emoji, users: [...(x.users || [])] })) : [],
      replies: ev.replies || 0, last_reply_ts: ev.last_reply_ts || null,
      extraReplies: new Set(),         // reply seqs seen above stateSeq (not in `replies` yet)
      stateSeq,
    };
  }
  // A newer view of a message we hold (a resumed or re-fetched item, or the
  // live frame of our own message after its ack).
  function mergeState(m, ev, kind, stateSeq) {
    if (kind === 'live' || kind === 'mine') {
      if (!m.provisional || kind !== 'live') return false;
      m.provisional = false;
      m.mentions = Array.isArray(ev.mentions) ? ev.mentions : [];
      m.reply_to = ev.reply_to || m.reply_to;
      m.ts = ev.ts;
      return true;
    }
    if (stateSeq <= m.stateSeq) return false;
    const n = makeMsg(m.room, ev, stateSeq);
    for (const s of m.extraReplies) if (s > stateSeq) n.extraReplies.add(s);
    Object.assign(m, n, { provisional: false });
    return true;
  }

  /** Applies an edit, delete or reaction event; returns the messages it changed. */
  function applyEvent(r, ev) {
    const m = r.msgs.get(ev.target);
    if (!m || ev.seq <= m.stateSeq) return [];
    m.stateSeq = ev.seq;
    const out = [m];
    if (ev.type === 'edit' && !m.deleted) {
      m.text = ev.text;
      m.edited_ts = ev.ts;
      m.mentions = Array.isArray(ev.mentions) ? ev.mentions : [];
    } else if (ev.type === 'delete' && !m.deleted) {
      m.deleted = true; m.text = ''; m.mentions = []; m.reactions = [];
      if (m.reply_to) { const root = noteReplyDeleted(r, m, ev.seq); if (root) out.push(root); }
    } else if (ev.type === 'reaction') {
      let x = m.reactions.find((y) => y.emoji === ev.emoji);
      if (ev.on) {
        if (!x) { x = { emoji: ev.emoji, users: [] }; m.reactions.push(x); }
        if (!x.users.includes(ev.from)) x.users.push(ev.from);
      } else if (x) {
        x.users = x.users.filter((u) => u !== ev.from);
        if (!x.users.length) m.reactions = m.reactions.filter((y) => y !== x);
      }
    }
    return out;
  }
  function noteReply(r, reply) {
    const root = r.msgs.get(reply.reply_to);
    if (!root || reply.seq <= root.stateSeq || reply.deleted) return null;
    root.extraReplies.add(reply.seq);
    root.last_reply_ts = Math.max(root.last_reply_ts || 0, reply.ts);
    return root;
  }
  function noteReplyDeleted(r, reply, delSeq) {
    const root = r.msgs.get(reply.reply_to);
    if (!root) return null;
    if (!root.extraReplies.delete(reply.seq) && delSeq > root.stateSeq) root.replies = Math.max(0, root.replies - 1);
    return root;
  }
  // A desktop notification for a DM or a mention of you (the room may not be loaded).
  function liveAlert(r, ev) {
    if ((ev.type || 'message') !== 'message' || ev.from === me || ev.deleted) return;
    if (r.dm || (Array.isArray(ev.mentions) && ev.mentions.includes(me))) notify({ room: r.name, seq: ev.seq, from: ev.from, text: ev.text, reply_to: ev.reply_to });
  }
  const replyCount = (m) => m.replies + m.extraReplies.size;
  const mentionsMe = (m) => !!me && m.mentions.includes(me);

  // Unread and mention counts: hello's numbers, plus messages from others that
  // arrive above the read marker; exact (recount) when every seq above the
  // marker is loaded.
  function countUnread(r, ev) {
    if ((ev.type || 'message') !== 'message' || ev.seq <= r.counted || ev.seq <= r.read) return;
    r.counted = ev.seq;
    if (ev.from === me || ev.deleted) return;
    r.unread++;
    if (me && Array.isArray(ev.mentions) && ev.mentions.includes(me)) r.mentions++;
  }
  function recount(r) {
    if (r.read >= r.seq) { r.unread = 0; r.mentions = 0; return; }
    for (let s = r.read + 1; s <= r.seq; s++) if (!r.seen.has(s)) return;
    let u = 0, n = 0;
    for (const m of r.msgs.values()) {
      if (m.seq <= r.read || m.from === me || m.deleted) continue;
      u++;
      if (mentionsMe(m)) n++;
    }
    r.unread = u; r.mentions = n; r.counted = r.seq;
  }

  // ---- message rendering -----------------------------------------------------
  const dayKey = (ts) => { const d = new Date(ts); return d.getFullYear() + '-' + d.getMonth() + '-' + d.getDate(); };
  function dayLabel(ts) {
    const d = new Date(ts), now = new Date();
    const y = new Date(now); y.setDate(now.getDate() - 1);
    if (dayKey(ts) === dayKey(now.getTime())) return 'Today';
    if (dayKey(ts) === dayKey(y.getTime())) return 'Yesterday';
    return d.toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  }
  function fmtTime(ts) { return new Date(ts).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' }); }
  function fmtWhen(ts) {
    if (dayKey(ts) === dayKey(Date.now())) return fmtTime(ts);
    return new Date(ts).toLocaleDateString(undefined, { month: 'short', day: 'numeric' }) + ' ' + fmtTime(ts);
  }

  const URL_RE = /https?:\/\/[^\s<>"'`]+/gi;
  const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  // Trailing punctuation usually ends the sentence, not the link; a ")" stays
  // when the link opened one (wiki-style URLs).
  function trimUrl(u) {
    for (;;) {
      const c = u[u.length - 1];
      if (c === ')') { if ((u.match(/\(/g) || []).length >= (u.match(/\)/g) || []).length) break; }
      else if (!'.,;:!?\'"]}>*_~'.includes(c)) break;
      u = u.slice(0, -1);
    }
    return u;
  }
  /**
   * Appends `text` to `node` as text nodes, with http(s) links as <a> and the
   * message's mentions (`@id`, following the protocol's boundary rules) as
   * spans. Nothing is parsed as HTML, and textContent stays exactly `text`.
   */
  function renderText(node, text, mentions) {
    const spans = [];
    for (const m of text.matchAll(URL_RE)) {
      if (m.index > 0 && /[\p{L}\p{N}_]/u.test(text[m.index - 1])) continue;
      const u = trimUrl(m[0]);
      let href = null;
      try { const p = new URL(u); if (p.protocol === 'http:' || p.protocol === 'https:') href = p.href; } catch (_) {}
      if (href) spans.push({ start: m.index, end: m.index + u.length, href });
    }
    if (mentions && mentions.length) {
      const ids = [...mentions].sort((a, b) => b.length - a.length).map(escapeRe).join('|');
      const re = new RegExp(`(?<![\\p{L}\\p{N}_.\\-])@(${ids})(?![\\p{L}\\p{N}_\\-])`, 'gu');
      for (const m of text.matchAll(re)) {
        const start = m.index, end = m.index + m[0].length;
        if (!spans.some((s) => start < s.end && end > s.start)) spans.push({ start, end, user: m[1] });
      }
    }
    spans.sort((a, b) => a.start - b.start);
    let at = 0;
    for (const s of spans) {
      if (s.start > at) node.append(document.createTextNode(text.slice(at, s.start)));
      const part = text.slice(s.start, s.end);
      if (s.href) {
        const a = el('a', 'link', part);
        a.href = s.href; a.target = '_blank'; a.rel = 'noopener noreferrer';
        node.append(a);
      } else {
        const sp = el('span', 'mention' + (s.user === me ? ' me' : ''), part);
        sp.dataset.user = s.user;
        sp.title = displayName(s.user);
        node.append(sp);
      }
      at = s.end;
    }
    if (at < text.length) node.append(document.createTextNode(text.slice(at)));
  }

  /** A message row. `where`: 'main' (room timeline), 'root' or 'reply' (thread panel). */
  function messageNode(m, where, pendingMsg) {
    const cls = ['message'];
    if (m.from === me) cls.push('mine');
    if (pendingMsg) cls.push('pending');
    if (m.deleted) cls.push('deleted');
    if (!m.deleted && m.mentions && mentionsMe(m)) cls.push('mentions-me');
    const n = el('div', cls.join(' '));
    if (!pendingMsg) { n.dataset.seq = String(m.seq); n.dataset.room = m.room; }
    n.dataset.from = m.from;
    n.dataset.ts = String(m.ts);
    const meta = el('div', 'meta');
    meta.append(userSpan('from', m.from));
    const t = el('time', 'time', fmtTime(m.ts));
    t.dateTime = new Date(m.ts).toISOString();
    t.title = new Date(m.ts).toLocaleString();
    meta.append(t);
    const body = el('div', 'body');
    const text = el('span', 'text');
    if (m.deleted) { text.textContent = 'message deleted'; text.classList.add('deleted-text'); }
    else renderText(text, m.text, m.mentions);
    body.append(text);
    if (m.edited_ts && !m.deleted) {
      const e = el('span', 'edited', '(edited)');
      e.title = 'Edited ' + new Date(m.edited_ts).toLocaleString();
      body.append(e);
    }
    n.append(meta, body);
    if (pendingMsg) return n;
    if (m.reactions.length) n.append(reactionsNode(m));
    // Under a thread's root in the timeline (the thread panel has its own count).
    if (where === 'main' && !m.reply_to && replyCount(m) > 0) {
      const s = button('thread-summary', '');
      s.dataset.act = 'thread';
      s.append(el('span', 'count', plural(replyCount(m), 'reply', 'replies')));
      if (m.last_reply_ts) s.append(el('span', 'last', 'Last reply ' + fmtWhen(m.last_reply_ts)));
      n.append(s);
    }
    if (!m.deleted) n.append(actionsNode(m, where));
    return n;
  }

  function reactionsNode(m) {
    const box = el('div', 'reactions');
    for (const x of m.reactions) {
      const mine = x.users.includes(me);
      const b = button('reaction' + (mine ? ' mine' : ''));
      b.dataset.act = 'toggle-reaction';
      b.dataset.emoji = x.emoji;
      b.setAttribute('aria-pressed', String(mine));
      b.append(el('span', 'e', x.emoji), el('span', 'n', String(x.users.length)));
      const who = x.users.map((u) => (u === me ? 'you' : displayName(u)));
      b.title = `${who.join(', ')} reacted with ${x.emoji}`;
      b.setAttribute('aria-label', `${x.emoji} ${x.users.length}: ${who.join(', ')}${mine ? ' (click to remove yours)' : ''}`);
      box.append(b);
    }
    const add = button('reaction add', '+', 'Add a reaction');
    add.dataset.act = 'react';
    box.append(add);
    return box;
  }

  function actionsNode(m, where) {
    const bar = el('div', 'actions');
    bar.setAttribute('role', 'toolbar');
    bar.setAttribute('aria-label', 'Message actions');
    const add = (act, text, title) => { const b = button('act', text, title); b.dataset.act = act; bar.append(b); };
    add('react', '☺', 'Add a reaction');
    if (where === 'main' && !m.reply_to) add('thread', '💬', 'Reply in thread');
    if (m.from === me) { add('edit', '✎', 'Edit message'); add('delete', '🗑', 'Delete message'); }
    return bar;
  }

  /** Re-renders a message wherever it shows (timeline, thread panel). */
  function updateMsg(r, m) {
    for (const n of document.querySelectorAll(`.message[data-seq="${m.seq}"]`)) {
      if (n.dataset.room !== r.name || n.classList.contains('editing')) continue;
      const where = n.closest('#thread-root') ? 'root' : n.closest('#thread-list') ? 'reply' : 'main';
      const fresh = messageNode(m, where, false);
      if (n.classList.contains('cont')) fresh.classList.add('cont');
      if (n.classList.contains('flash')) fresh.classList.add('flash');
      n.replaceWith(fresh);
    }
    if (thread.room === r.name && thread.root === m.seq) renderThreadCount();
  }

  // Display names arrived or changed: relabel what shows them.
  function refreshNames() {
    for (const s of document.querySelectorAll('[data-uid]')) s.textContent = displayName(s.dataset.uid);
    if (me) $('me-name').textContent = 'signed in as ' + displayName(me);
    renderRooms(); renderHeader(); renderOnline(); renderTyping();
  }

  // ---- timeline ----------------------------------------------------------------
  const box = $('messages');
  const msgNodes = () => box.querySelectorAll('.message[data-seq]');
  function prevMsg(n) { let p = n.previousElementSibling; while (p && !p.matches('.message[data-seq]')) p = p.previousElementSibling; return p; }
  function nextMsg(n) { let p = n.nextElementSibling; while (p && !p.matches('.message[data-seq]')) p = p.nextElementSibling; return p; }
  // Day separator and sender grouping for one message node.
  function fixup(n) {
    if (!n) return;
    const p = prevMsg(n);
    const ts = +n.dataset.ts;
    const newDay = !p || dayKey(+p.dataset.ts) !== dayKey(ts);
    const sep = n.previousElementSibling && n.previousElementSibling.classList.contains('day-sep') ? n.previousElementSibling : null;
    if (newDay && !sep) { const s = el('div', 'day-sep', dayLabel(ts)); s.setAttribute('role', 'separator'); n.before(s); }
    if (!newDay && sep) sep.remove();
    const cont = !newDay && p && p.dataset.from === n.dataset.from && ts - +p.dataset.ts < 5 * 60 * 1000
      && !p.classList.contains('deleted');
    n.classList.toggle('cont', !!cont);
  }

  function nearBottom() { return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }
  function scrollToBottom() { box.scrollTop = box.scrollHeight; }

  // The "new messages" line sits before the first message from someone else
  // above the read marker the room had when it was opened.
  function placeDivider() {
    const old = box.querySelector('.new-divider');
    if (old) old.remove();
    const r = current && rooms.get(current);
    if (!r || r.divider === null) return null;
    for (const n of msgNodes()) {
      if (+n.dataset.seq > r.divider && n.dataset.from !== me) {
        const d = el('div', 'new-divider');
        d.setAttribute('role', 'separator');
        d.append(el('span', '', 'New messages'));
        n.before(d);
        return d;
      }
    }
    return null;
  }

  function insertMessages(r, list, kind) {
    const stick = !r.detached && (nearBottom() || kind === 'mine');
    const beforeH = box.scrollHeight, beforeTop = box.scrollTop;
    const empty = box.querySelector('.empty');
    if (empty) empty.remove();
    const div = box.querySelector('.new-divider');
    if (div) div.remove();
    list.sort((a, b) => a.seq - b.seq);
    const nodes = [...msgNodes()];
    for (const m of list) {
      const n = messageNode(m, 'main', false);
      // Insert before the first node with a greater seq (scan from the end: usually appends).
      let after = null;
      for (let i = nodes.length - 1; i >= 0; i--) { if (+nodes[i].dataset.seq < m.seq) { after = nodes[i]; break; } }
      if (after) {
        const nx = nextMsg(after);
        if (nx) { const s = nx.previousElementSibling; (s && s.classList.contains('day-sep') ? s : nx).before(n); }
        else { const pend = box.querySelector('.message.pending'); if (pend) pend.before(n); else box.append(n); }
      } else {
        const first = box.querySelector('.message[data-seq]');
        if (first) { const s = first.previousElementSibling; (s && s.classList.contains('day-sep') ? s : first).before(n); }
        else { const pend = box.querySelector('.message.pending'); if (pend) pend.before(n); else box.append(n); }
      }
      nodes.splice(after ? nodes.indexOf(after) + 1 : 0, 0, n);
      fixup(n);
      fixup(nextMsg(n));
    }
    placeDivider();
    if (kind === 'older' && r.loaded === 'loaded' && !stick) {
      box.scrollTop = beforeTop + (box.scrollHeight - beforeH);
    } else if (stick) scrollToBottom();
    renderOlderHint(r);
    fillViewport(r);
  }

  function renderOlderHint(r) {
    let hint = box.querySelector('.older');
    if (r.moreOlder || r.loadingOlder) {
      if (!hint) { hint = el('div', 'older'); box.prepend(hint); }
      hint.textContent = r.loadingOlder ? 'Loading older messages…' : 'Scroll up for older messages';
    } else if (hint) hint.remove();
    let nh = box.querySelector('.newer');
    if (r.detached) {
      if (!nh) { nh = button('newer', ''); nh.dataset.act = 'latest'; box.append(nh); }
      nh.textContent = r.loadingNewer ? 'Loading newer messages…' : 'Newer messages below · jump to the latest';
    } else if (nh) nh.remove();
  }

  let renderedRoom = undefined;
  function renderAllMessages() {
    const r = current && rooms.get(current);
    renderedRoom = current;
    box.textContent = '';
    if (!r) { box.append(el('div', 'empty', 'Join a room to start chatting, or browse the room directory.')); return; }
    const list = sortedSeen(r).map((s) => r.msgs.get(s)).filter((m) => m && !m.reply_to);
    for (const m of list) { const n = messageNode(m, 'main', false); box.append(n); fixup(n); }
    for (const o of outbox) if (o.room === current && !o.reply_to) box.append(pendingNode(o));
    if (!list.length && r.loaded === 'loaded' && !r.moreOlder && !outbox.some((o) => o.room === current)) {
      box.append(el('div', 'empty', r.dm ? `This is the start of your conversation with ${label(r.name)}.` : `This is the start of #${r.name}.`));
    }
    renderOlderHint(r);
    const d = placeDivider();
    if (d && d.offsetTop > box.clientHeight / 2) box.scrollTop = d.offsetTop - box.clientHeight / 3;
    else scrollToBottom();
    fillViewport(r);
  }
  function pendingNode(o) {
    const n = messageNode({ from: me, ts: o.ts, text: o.text, mentions: [], reactions: [] }, 'main', true);
    n.dataset.outbox = String(o.key);
    return n;
  }
  // Load older history until the view can scroll (so the scroll-up trigger works).
  function fillViewport(r) {
    if (r && r.name === current && r.moreOlder && box.scrollHeight <= box.clientHeight + 60) setTimeout(loadOlder, 0);
  }
  function removePending(o) {
    for (const n of document.querySelectorAll(`.message.pending[data-outbox="${o.key}"]`)) n.remove();
  }

  box.addEventListener('scroll', () => {
    if (box.scrollTop < 60) loadOlder();
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 60) loadNewer();
  });
  function loadOlder() {
    const r = current && rooms.get(current);
    if (!r || r.loaded !== 'loaded' || !r.moreOlder || r.loadingOlder || !r.seen.size) return;
    const p = ask((c) => c.history(r.name, { before: lowSeen(r), limit: 50 }));
    if (!p) return;
    r.loadingOlder = true;
    renderOlderHint(r);
    p.then((h) => {
      r.loadingOlder = false;
      r.moreOlder = h.more;
      if (h.room === current) {
        const beforeH = box.scrollHeight, beforeTop = box.scrollTop;
        ingest(h.room, h.messages, 'older');
        box.scrollTop = beforeTop + (box.scrollHeight - beforeH);
        renderOlderHint(r);
        fillViewport(r);
      } else ingest(h.room, h.messages, 'older');
    }, (e) => { r.loadingOlder = false; showError(e); renderOlderHint(r); });
  }
  // In a window around a search hit: scrolling down walks to the latest events.
  function loadNewer() {
    const r = current && rooms.get(current);
    if (!r || !r.detached || r.loadingNewer || r.loaded !== 'loaded') return;
    const p = ask((c) => c.history(r.name, { after: highSeen(r), limit: 100 }));
    if (!p) return;
    r.loadingNewer = true;
    renderOlderHint(r);
    p.then((h) => {
      r.loadingNewer = false;
      ingest(h.room, h.messages, 'newer');
      if (!h.more) r.detached = false;
      renderOlderHint(r);
      markRead();
    }, (e) => { r.loadingNewer = false; showError(e); renderOlderHint(r); });
  }
  // Back to the room's latest events (drops the window around a search hit).
  function resetRoom(r) {
    r.msgs.clear(); r.seen.clear();
    r.detached = false; r.loadingNewer = false; r.moreOlder = false;
    r.loaded = 'none';
    initialLoad(r);
    if (r.name === current) renderAllMessages();
  }

  /** Opens a room scrolled to one message, loading the history around it if needed. */
  function jumpTo(name, seq, replyTo) {
    if (!rooms.has(name)) return;
    if (current !== name) openRoom(name, { keepScroll: true });
    closeMenu();
    const r = room(name);
    const go = () => {
      if (replyTo) { openThread(name, replyTo, seq); return; }
      if (r.seen.has(seq)) { flashInTimeline(seq); return; }
      const p = ask((c) => Promise.all([c.history(name, { before: seq + 1, limit: 25 }), c.history(name, { after: seq, limit: 25 })]));
      if (!p) { showError(OFFLINE); return; }
      // Replace what we hold with the events around the target.
      r.msgs.clear(); r.seen.clear();
      r.loaded = 'loading'; r.detached = true; r.divider = null;
      renderAllMessages();
      p.then(([b, a]) => {
        r.moreOlder = b.more;
        r.detached = a.more;
        loaded(r);
        ingest(name, b.messages.concat(a.messages), 'older');
        if (current === name) { renderAllMessages(); flashInTimeline(seq); }
        fireLoaded(r);
      }, (e) => { showError(e); resetRoom(r); });
    };
    if (r.loaded === 'loaded') go(); else r.whenLoaded.push(go);
  }
  function flashInTimeline(seq) {
    const n = box.querySelector(`.message[data-seq="${seq}"]`);
    if (!n) return;
    for (const o of box.querySelectorAll('.message.flash')) o.classList.remove('flash');
    n.classList.add('flash');
    n.scrollIntoView({ block: 'center' });
  }

  // ---- read markers ------------------------------------------------------------
  function markRead() {
    const r = current && rooms.get(current);
    if (!r || document.visibilityState !== 'visible' || r.loaded !== 'loaded') return;
    const top = r.detached ? highSeen(r) : Math.max(highSeen(r), r.seq);
    if (top > r.read) {
      if (ask((c) => c.read(r.name, top).catch(() => {}))) { r.read = top; recount(r); }
      renderRooms();
    }
  }
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') { markRead(); refreshIfDue(false); }
  });
  window.addEventListener('focus', markRead);

  // ---- sidebar, header ---------------------------------------------------------
  function render(force) { renderRooms(); renderHeader(); if (force || renderedRoom !== current) renderAllMessages(); renderOnline(); renderTyping(); setStatus($('status').dataset.state); }

  function renderRooms() {
    const ul = $('room-list');
    ul.textContent = '';
    const list = [...rooms.keys()].sort((a, b) => (isDm(a) - isDm(b)) || label(a).localeCompare(label(b)));
    let totalUnread = 0, elsewhere = 0, mentionsElsewhere = 0;
    const visible = document.visibilityState === 'visible';
    for (const name of list) {
      const r = rooms.get(name);
      const li = el('li');
      li.dataset.room = name;
      if (r.dm) li.dataset.dm = dmPeer(name);
      const here = name === current && visible;
      const unread = here ? 0 : r.unread;
      // In a DM every message is for you; the badge counts mentions elsewhere.
      const mentions = here || r.dm ? 0 : r.mentions;
      totalUnread += unread;
      if (name !== current) { elsewhere += unread; mentionsElsewhere += mentions + (r.dm ? unread : 0); }
      li.dataset.unread = String(unread);
      li.dataset.mentions = String(mentions);
      if (unread) li.classList.add('has-unread');
      if (name === current) li.setAttribute('aria-current', 'true');
      const b = el('button');
      b.type = 'button';
      const nm = el('span', 'name', label(name));
      if (r.dm) nm.title = dmPeer(name);
      b.append(nm);
      if (mentions) {
        const m = el('span', 'mention-badge', '@' + (mentions > 99 ? '99+' : String(mentions)));
        m.setAttribute('aria-label', plural(mentions, 'mention', 'mentions'));
        m.title = plural(mentions, 'mention', 'mentions') + ' of you';
        b.append(m);
      }
      if (unread) { const u = el('span', 'unread', unread > 99 ? '99+' : String(unread)); u.setAttribute('aria-label', `${unread} unread`); b.append(u); }
      b.addEventListener('click', () => { openRoom(name); closeMenu(); });
      li.append(b);
      ul.append(li);
    }
    $('menu-btn').dataset.unread = String(elsewhere > 0);
    $('menu-btn').dataset.mentions = String(mentionsElsewhere > 0);
    $('menu-btn').setAttribute('aria-label', elsewhere ? `Rooms menu (${elsewhere} unread elsewhere)` : 'Rooms menu');
    document.title = (totalUnread ? `(${totalUnread}) ` : '') + (current ? label(current) + ' · ' : '') + 'chinwag';
  }

  function renderHeader() {
    const r = current && rooms.get(current);
    const t = $('room-title');
    t.textContent = r ? roomTitle(r.name) : 'chinwag';
    t.title = r && r.dm ? dmPeer(r.name) : '';
    $('room-meta').textContent = r && !r.dm ? `${r.online.size} online · ${r.members.size} members` : '';
    $('leave-btn').classList.toggle('hidden', !r || r.dm);
    $('composer').placeholder = r ? (r.dm ? `Message ${label(r.name)}` : `Message #${r.name}`) : 'Join a room first';
  }

  function renderOnline() {
    const ul = $('online');
    ul.textContent = '';
    const r = current && rooms.get(current);
    if (!r) return;
    let users = new Set([...r.members, ...r.online]);
    if (r.dm) { const [, a, b] = r.name.split(':'); users = new Set([a, b]); }
    const list = [...users].sort((a, b) => (r.online.has(b) - r.online.has(a)) || displayName(a).localeCompare(displayName(b)));
    for (const u of list) {
      const li = el('li');
      li.dataset.user = u;
      li.dataset.online = r.online.has(u) ? 'true' : 'false';
      if (r.online.has(u)) li.classList.add('online');
      const b = el('button');
      b.type = 'button';
      b.append(userSpan('uname', u));
      if (u === me) { b.append(el('span', 'you', '(you)')); b.disabled = true; }
      else {
        b.title = `${u}: send a direct message`;
        b.setAttribute('aria-label', `${displayName(u)}, ${r.online.has(u) ? 'online' : 'offline'}: send a direct message`);
        b.addEventListener('click', () => openDm(u));
      }
      li.append(b);
      ul.append(li);
    }
    if (current && !r.dm) $('room-meta').textContent = `${r.online.size} online · ${r.members.size} members`;
  }

  function renderTyping() {
    const r = current && rooms.get(current);
    const who = r ? [...r.typing.keys()].map(displayName) : [];
    const t = $('typing');
    if (!who.length) t.textContent = '';
    else if (who.length === 1) t.textContent = `${who[0]} is typing…`;
    else if (who.length === 2) t.textContent = `${who[0]} and ${who[1]} are typing…`;
    else t.textContent = 'Several people are typing…';
  }

  function openRoom(name, opts) {
    if (current && current !== name) stopTyping();
    const r = room(name);
    if (current !== name) {
      // A room joined just now has no "new" part: all of it is new.
      r.divider = r.unread > 0 && !(opts && opts.fresh) ? r.read : null;
      closeModal('directory');         // however the room was reached, it is what the user wants to see
    }
    current = name;
    if (!isDm(name) || !r.placeholder) store.set(LS_ROOM, name);
    if (r.loaded === 'none' && !r.placeholder) initialLoad(r);
    else if (r.presenceConn !== hellos && !r.placeholder && online()) {
      r.presenceConn = hellos;
      client.presence(r.name).then(onPresenceList, () => {});
    }
    render();
    markRead();
    if (!(opts && opts.keepScroll) && window.matchMedia('(min-width: 701px)').matches) $('composer').focus();
  }

  function openDm(user) {
    askNotifyPermission();
    if (!me || user === me) return;
    const name = dmRoomFor(user);
    const r = room(name);
    if (r.loaded === 'none' && !r.seq) { r.placeholder = true; loaded(r); fireLoaded(r); }
    openRoom(name);
    closeMenu();
    $('composer').focus();
  }

  // ---- actions on a message: react, edit, delete, thread --------------------------
  function onMessageClick(ev) {
    const b = ev.target.closest('button[data-act]');
    const n = ev.target.closest('.message[data-seq]');
    if (!b) {
      // Touch screens have no hover: a tap shows the message's actions.
      if (n && !ev.target.closest('a') && window.matchMedia('(hover: none), (pointer: coarse)').matches) {
        for (const o of document.querySelectorAll('.message.active')) if (o !== n) o.classList.remove('active');
        n.classList.toggle('active');
      }
      return;
    }
    if (b.dataset.act === 'latest') { const r = current && rooms.get(current); if (r) resetRoom(r); return; }
    if (!n) return;
    const r = rooms.get(n.dataset.room);
    const m = r && r.msgs.get(+n.dataset.seq);
    if (!m) return;
    switch (b.dataset.act) {
      case 'react': openPicker(b, m); break;
      case 'toggle-reaction': toggleReaction(m, b.dataset.emoji); break;
      case 'thread': openThread(m.room, m.seq); break;
      case 'edit': startEdit(n, m); break;
      case 'delete': confirmDelete(m); break;
      default: break;
    }
  }
  box.addEventListener('click', onMessageClick);
  $('thread-body').addEventListener('click', onMessageClick);

  function toggleReaction(m, emoji) {
    const x = m.reactions.find((y) => y.emoji === emoji);
    const on = !(x && x.users.includes(me));
    if (on) rememberEmoji(emoji);
    const p = ask((c) => c.react(m.room, m.seq, emoji, on));
    if (p) p.catch(showError); else showError(OFFLINE);
  }

  function recentEmoji() {
    try { const a = JSON.parse(store.get(LS_EMOJI) || '[]'); return Array.isArray(a) ? a.filter((e) => typeof e === 'string').slice(0, 8) : []; } catch (_) { return []; }
  }
  function rememberEmoji(e) { store.set(LS_EMOJI, JSON.stringify([e, ...recentEmoji().filter((x) => x !== e)].slice(0, 8))); }

  let pickerFor = null;
  function openPicker(anchor, m) {
    const p = $('emoji-picker');
    const fill = (id, list) => {
      const g = $(id);
      g.textContent = '';
      for (const e of list) { const b = button('emoji', e, `React with ${e}`); b.dataset.emoji = e; g.append(b); }
    };
    const recent = recentEmoji();
    fill('emoji-recent', recent);
    fill('emoji-common', COMMON_EMOJI);
    $('emoji-recent').classList.toggle('hidden', !recent.length);
    $('emoji-recent-title').classList.toggle('hidden', !recent.length);
    pickerFor = m;
    p.classList.remove('hidden');
    // Next to the button, kept inside the window.
    const a = anchor.getBoundingClientRect(), w = p.offsetWidth, h = p.offsetHeight;
    let top = a.bottom + 4;
    if (top + h > window.innerHeight - 8) top = Math.max(8, a.top - h - 4);
    const left = Math.max(8, Math.min(a.right - w, window.innerWidth - w - 8));
    p.style.top = top + 'px';
    p.style.left = left + 'px';
    const first = p.querySelector('button.emoji');
    if (first) first.focus();
  }
  function closePicker() { $('emoji-picker').classList.add('hidden'); pickerFor = null; }
  $('emoji-picker').addEventListener('click', (ev) => {
    const b = ev.target.closest('button.emoji');
    if (!b || !pickerFor) return;
    toggleReaction(pickerFor, b.dataset.emoji);
    closePicker();
  });
  document.addEventListener('mousedown', (ev) => {
    if (pickerFor && !ev.target.closest('#emoji-picker') && !ev.target.closest('button[data-act="react"]')) closePicker();
  });

  function startEdit(n, m) {
    if (n.classList.contains('editing')) return;
    n.classList.add('editing');
    const body = n.querySelector('.body');
    const form = el('div', 'edit-box');
    const ta = el('textarea', 'edit-input');
    ta.value = m.text;
    ta.rows = Math.min(8, m.text.split('\n').length);
    ta.setAttribute('aria-label', 'Edit message');
    const hint = el('div', 'edit-hint', 'Enter to save · Esc to cancel');
    const save = button('btn small', 'Save'), cancel = button('small', 'Cancel');
    hint.append(' ', cancel, save);
    form.append(ta, hint);
    body.replaceWith(form);
    ta.focus();
    ta.setSelectionRange(ta.value.length, ta.value.length);
    const done = () => { n.classList.remove('editing'); const r = rooms.get(m.room); if (r) updateMsg(r, m); };
    const commit = () => {
      const text = ta.value;
      if (!text.trim() || text === m.text) { done(); return; }
      const p = ask((c) => c.edit(m.room, m.seq, text));
      if (!p) { showError(OFFLINE); return; }
      ta.disabled = true;
      p.then((f) => {
        ta.disabled = false;
        // The edit event updates the text; until it comes, show what we sent.
        if (m.stateSeq < f.seq) { m.text = text; m.edited_ts = f.ts; }
        done();
      }, (e) => { ta.disabled = false; showError(e); ta.focus(); });
    };
    ta.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); commit(); }
      else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); done(); }
    });
    save.addEventListener('click', commit);
    cancel.addEventListener('click', done);
  }

  // An in-page dialog (window.confirm blocks the page and cannot be styled).
  let confirmAction = null, confirmReturn = null;
  function confirmDelete(m) {
    $('confirm-text').textContent = m.text.length > 140 ? m.text.slice(0, 140) + '…' : m.text;
    confirmAction = () => {
      const p = ask((c) => c.delete(m.room, m.seq));
      if (p) p.catch(showError); else showError(OFFLINE);
    };
    confirmReturn = document.activeElement;
    $('confirm').classList.remove('hidden');
    $('confirm-cancel').focus();
  }
  function closeConfirm() {
    $('confirm').classList.add('hidden');
    confirmAction = null;
    if (confirmReturn && confirmReturn.focus) try { confirmReturn.focus(); } catch (_) {}
  }
  $('confirm-ok').addEventListener('click', () => { const a = confirmAction; closeConfirm(); if (a) a(); });
  $('confirm-cancel').addEventListener('click', closeConfirm);
  $('confirm').addEventListener('click', (ev) => { if (ev.target === $('confirm')) closeConfirm(); });

  // ---- threads -------------------------------------------------------------------
  const thread = { room: null, root: null, more: false, loading: false, flash: null };
  function openThread(name, root, flashSeq) {
    closeSearch();
    thread.room = name; thread.root = root; thread.flash = flashSeq || null;
    $('thread').classList.remove('hidden');
    document.body.classList.add('panel-open');
    $('thread-room').textContent = roomTitle(name);
    $('thread-composer').value = '';
    renderThread();
    loadThread();
    if (window.matchMedia('(min-width: 701px)').matches) $('thread-composer').focus();
  }
  function closeThread() {
    thread.room = null; thread.root = null;
    $('thread').classList.add('hidden');
    document.body.classList.remove('panel-open');
  }
  $('thread-close').addEventListener('click', closeThread);

  // The replies come from `thread` (following `more`); the root from the room,
  // or from history when it is not loaded.
  function loadThread() {
    const { room: name, root } = thread;
    const r = rooms.get(name);
    if (!r) return;
    const rootItem = !r.msgs.has(root) && ask((c) => c.history(name, { before: root + 1, limit: 1 }));
    if (rootItem) {
      rootItem.then((h) => {
        if (thread.root !== root) return;
        const item = h.messages.find((x) => x.seq === root);
        if (item && !r.msgs.has(root)) { r.msgs.set(root, makeMsg(name, item, r.seq)); renderThread(); }
      }, () => {});
    }
    const follow = (after) => {
      const p = ask((c) => c.thread(name, root, { after: after || undefined, limit: 100 }));
      if (!p) return;
      thread.loading = true;
      p.then((t) => {
        thread.loading = false;
        if (thread.root !== root || thread.room !== name) return;
        ingest(name, t.messages, 'thread');
        const rootMsg = r.msgs.get(root);
        // The thread reply is the truth about the count when it is complete.
        if (!t.more && rootMsg) {
          const live = t.messages.filter((x) => !x.deleted);
          rootMsg.replies = live.length; rootMsg.extraReplies.clear();
          if (t.messages.length) rootMsg.last_reply_ts = Math.max(rootMsg.last_reply_ts || 0, t.messages[t.messages.length - 1].ts);
          updateMsg(r, rootMsg);
        }
        renderThread();
        if (t.more && t.messages.length) follow(t.messages[t.messages.length - 1].seq);
      }, (e) => {
        thread.loading = false;
        if (thread.root === root && thread.room === name) showError(e);
      });
    };
    follow(0);
  }
  function threadReplies() {
    const r = rooms.get(thread.room);
    if (!r) return [];
    return [...r.msgs.values()].filter((m) => m.reply_to === thread.root).sort((a, b) => a.seq - b.seq);
  }
  function renderThread() {
    const r = rooms.get(thread.room);
    const rootBox = $('thread-root'), list = $('thread-list');
    rootBox.textContent = ''; list.textContent = '';
    if (!r) return;
    const root = r.msgs.get(thread.root);
    if (root) rootBox.append(messageNode(root, 'root', false));
    else rootBox.append(el('div', 'empty', 'Loading…'));
    for (const m of threadReplies()) list.append(messageNode(m, 'reply', false));
    for (const o of outbox) if (o.room === thread.room && o.reply_to === thread.root) list.append(pendingNode(o));
    renderThreadCount();
    if (thread.flash) {
      const n = list.querySelector(`.message[data-seq="${thread.flash}"]`);
      if (n) { n.classList.add('flash'); n.scrollIntoView({ block: 'center' }); thread.flash = null; }
    } else $('thread-body').scrollTop = $('thread-body').scrollHeight;
  }
  function renderThreadCount() {
    const r = rooms.get(thread.room);
    const root = r && r.msgs.get(thread.root);
    const c = root ? replyCount(root) : threadReplies().filter((m) => !m.deleted).length;
    $('thread-count').textContent = c ? plural(c, 'reply', 'replies') : 'No replies yet';
  }
  function threadAdd(list) {
    if (!list.length) return;
    const body = $('thread-body');
    const stick = body.scrollHeight - body.scrollTop - body.clientHeight < 80;
    const ul = $('thread-list');
    for (const m of list.sort((a, b) => a.seq - b.seq)) {
      if (ul.querySelector(`.message[data-seq="${m.seq}"]`)) continue;
      const n = messageNode(m, 'reply', false);
      const later = [...ul.querySelectorAll('.message[data-seq]')].find((x) => +x.dataset.seq > m.seq);
      const pend = ul.querySelector('.message.pending');
      if (later) later.before(n); else if (pend) pend.before(n); else ul.append(n);
    }
    renderThreadCount();
    if (stick) body.scrollTop = body.scrollHeight;
  }

  // ---- @mentions: autocomplete in the composers ------------------------------------
  const mentionMenu = $('mention-menu');
  let mention = null;                  // {ta, start, items, sel}
  function mentionCandidates(r, q) {
    const ql = q.toLowerCase();
    const users = new Set([...r.members, ...r.online]);
    if (r.dm) for (const u of r.name.split(':').slice(1)) users.add(u);
    users.delete(me);
    return [...users].filter((u) => {
      if (u.toLowerCase().startsWith(ql)) return true;
      const n = names.get(u);
      return !!n && n.toLowerCase().split(/\s+/).some((w) => w.startsWith(ql));
    }).sort((a, b) => displayName(a).localeCompare(displayName(b))).slice(0, 8);
  }
  function updateMention(ta, roomName) {
    const r = roomName && rooms.get(roomName);
    const before = ta.value.slice(0, ta.selectionStart);
    const m = ta.selectionStart === ta.selectionEnd && before.match(/(?:^|[^\p{L}\p{N}_.\-])@([A-Za-z0-9_.\-]{0,64})$/u);
    if (!r || !m) { closeMention(); return; }
    const items = mentionCandidates(r, m[1]);
    if (!items.length) { closeMention(); return; }
    mention = { ta, start: ta.selectionStart - m[1].length - 1, items, sel: 0 };
    renderMention();
  }
  function renderMention() {
    mentionMenu.textContent = '';
    mention.items.forEach((u, i) => {
      const li = el('li', i === mention.sel ? 'sel' : '');
      li.setAttribute('role', 'option');
      li.setAttribute('aria-selected', String(i === mention.sel));
      li.dataset.user = u;
      li.append(el('span', 'mname', displayName(u)), el('span', 'mid', '@' + u));
      mentionMenu.append(li);
    });
    mentionMenu.classList.remove('hidden');
    const a = mention.ta.getBoundingClientRect();
    mentionMenu.style.left = Math.max(8, a.left) + 'px';
    mentionMenu.style.width = Math.min(320, a.width) + 'px';
    mentionMenu.style.bottom = (window.innerHeight - a.top + 6) + 'px';
  }
  function closeMention() { mention = null; mentionMenu.classList.add('hidden'); }
  function pickMention(i) {
    const { ta, start, items } = mention;
    const u = items[i];
    const after = ta.value.slice(ta.selectionStart);
    const ins = '@' + u + ' ';
    ta.value = ta.value.slice(0, start) + ins + after.replace(/^[A-Za-z0-9_.\-]*/, '');
    const at = start + ins.length;
    ta.setSelectionRange(at, at);
    closeMention();
    ta.focus();
    ta.dispatchEvent(new Event('input'));
  }
  mentionMenu.addEventListener('mousedown', (ev) => {
    const li = ev.target.closest('li[data-user]');
    if (!li || !mention) return;
    ev.preventDefault();
    pickMention(mention.items.indexOf(li.dataset.user));
  });
  // Registered before the composers' own keydown handlers, so Enter picks a name
  // instead of sending while the list is open.
  function attachMentions(ta, roomFn) {
    ta.addEventListener('keydown', (ev) => {
      if (!mention || mention.ta !== ta) return;
      if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
        mention.sel = (mention.sel + (ev.key === 'ArrowDown' ? 1 : -1) + mention.items.length) % mention.items.length;
        renderMention();
      } else if (ev.key === 'Enter' || ev.key === 'Tab') {
        pickMention(mention.sel);
      } else if (ev.key === 'Escape') {
        closeMention();
      } else return;
      ev.preventDefault();
      ev.stopImmediatePropagation();
    });
    const upd = () => updateMention(ta, roomFn());
    ta.addEventListener('input', upd);
    ta.addEventListener('click', upd);
    ta.addEventListener('blur', () => setTimeout(() => { if (mention && mention.ta === ta && document.activeElement !== ta) closeMention(); }, 150));
  }

  // ---- search ----------------------------------------------------------------------
  const search = { query: '', cursor: null, items: [], loading: false };
  $('search-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = $('search-input').value.trim();
    if (!q) return;
    if (!/[\p{L}\p{N}]/u.test(q)) { showError({ code: 'bad_request', message: 'Search for at least one word.' }); return; }
    search.query = q; search.cursor = null; search.items = [];
    openSearch();
    searchMore();
  });
  function openSearch() {
    closeThread();
    $('search-panel').classList.remove('hidden');
    document.body.classList.add('panel-open');
    $('search-query').textContent = '“' + search.query + '”';
    renderSearch();
  }
  function closeSearch() {
    $('search-panel').classList.add('hidden');
    if ($('thread').classList.contains('hidden')) document.body.classList.remove('panel-open');
  }
  $('search-close').addEventListener('click', closeSearch);
  function searchMore() {
    const q = search.query;
    const p = ask((c) => c.search(q, { cursor: search.cursor || undefined, limit: 20 }));
    if (!p) { renderSearch(OFFLINE.message); return; }
    search.loading = true;
    renderSearch();
    p.then((f) => {
      if (q !== search.query) return;
      search.loading = false;
      search.items.push(...(f.messages || []));
      search.cursor = f.cursor || null;
      renderSearch();
    }, (e) => {
      if (q !== search.query) return;
      search.loading = false;
      renderSearch(`${e.code}: ${e.message}`);
    });
  }
  /** Appends text with every word that starts with a query word in <mark>. */
  function highlight(node, text, words) {
    let at = 0;
    for (const m of text.matchAll(/[\p{L}\p{N}]+/gu)) {
      const w = m[0].toLowerCase();
      if (!words.some((q) => w.startsWith(q))) continue;
      if (m.index > at) node.append(document.createTextNode(text.slice(at, m.index)));
      node.append(el('mark', '', m[0]));
      at = m.index + m[0].length;
    }
    if (at < text.length) node.append(document.createTextNode(text.slice(at)));
  }
  function renderSearch(problem) {
    const box2 = $('search-results');
    box2.textContent = '';
    const words = (search.query.toLowerCase().match(/[\p{L}\p{N}]+/gu) || []);
    // Newest first, grouped by room in the order the rooms first appear.
    const groups = new Map();
    for (const m of search.items) {
      if (!groups.has(m.room)) groups.set(m.room, []);
      groups.get(m.room).push(m);
    }
    for (const [name, items] of groups) {
      const g = el('section', 'search-group');
      g.dataset.room = name;
      g.append(el('h3', 'search-room', roomTitle(name)));
      for (const m of items) {
        const b = button('search-hit');
        b.dataset.room = name; b.dataset.seq = String(m.seq);
        if (m.reply_to) b.dataset.replyTo = String(m.reply_to);
        const meta = el('div', 'meta');
        meta.append(userSpan('from', m.from), el('span', 'time', fmtWhen(m.ts)));
        if (m.reply_to) meta.append(el('span', 'in-thread', 'in a thread'));
        const t = el('div', 'text');
        highlight(t, m.text || '', words);
        b.append(meta, t);
        g.append(b);
      }
      box2.append(g);
    }
    if (search.loading) box2.append(el('div', 'empty', 'Searching…'));
    else if (problem) box2.append(el('div', 'empty error-text', problem));
    else if (!search.items.length) box2.append(el('div', 'empty', 'No messages match.'));
    if (search.cursor && !search.loading) {
      const more = button('more', 'More results');
      more.addEventListener('click', searchMore);
      box2.append(more);
    }
  }
  $('search-results').addEventListener('click', (ev) => {
    const b = ev.target.closest('.search-hit');
    if (!b) return;
    for (const o of document.querySelectorAll('.search-hit.sel')) o.classList.remove('sel');
    b.classList.add('sel');
    // On a phone the results cover the room: close them to show the message.
    if (!window.matchMedia('(min-width: 701px)').matches) closeSearch();
    jumpTo(b.dataset.room, +b.dataset.seq, b.dataset.replyTo ? +b.dataset.replyTo : null);
  });

  // ---- room directory ------------------------------------------------------------------
  const dir = { cursor: null, items: [], loading: false, prefix: '', timer: null };
  function openDirectory(auto) {
    $('directory-hint').classList.toggle('hidden', !auto);
    $('directory').classList.remove('hidden');
    closeMenu();
    dir.prefix = $('directory-filter').value.trim();
    dir.cursor = null; dir.items = [];
    loadDirectory();
    $('directory-filter').focus();
  }
  function closeModal(id) { $(id).classList.add('hidden'); }
  $('browse-btn').addEventListener('click', () => openDirectory(false));
  $('directory-close').addEventListener('click', () => closeModal('directory'));
  $('directory').addEventListener('click', (ev) => { if (ev.target === $('directory')) closeModal('directory'); });
  $('directory-filter').addEventListener('input', () => {
    clearTimeout(dir.timer);
    dir.timer = setTimeout(() => { dir.prefix = $('directory-filter').value.trim().toLowerCase(); dir.cursor = null; dir.items = []; loadDirectory(); }, 200);
  });
  $('directory-more').addEventListener('click', loadDirectory);
  function loadDirectory() {
    const prefix = dir.prefix;
    const p = ask((c) => c.rooms({ prefix: prefix || undefined, cursor: dir.cursor || undefined, limit: 50 }));
    if (!p) { $('directory-status').textContent = OFFLINE.message; return; }
    dir.loading = true;
    $('directory-status').textContent = 'Loading…';
    p.then((f) => {
      if (prefix !== dir.prefix) return;
      dir.loading = false;
      dir.items.push(...(f.rooms || []));
      dir.cursor = f.cursor || null;
      renderDirectory();
    }, (e) => {
      if (prefix !== dir.prefix) return;
      dir.loading = false;
      $('directory-status').textContent = `${e.code}: ${e.message}`;
    });
  }
  function renderDirectory() {
    const ul = $('directory-list');
    ul.textContent = '';
    for (const x of dir.items) {
      const li = el('li');
      li.dataset.room = x.room;
      const info = el('div', 'dir-info');
      info.append(el('div', 'dir-name', '# ' + x.room));
      const bits = [plural(x.members, 'member', 'members')];
      if (x.ts) bits.push('last active ' + fmtWhen(x.ts));
      info.append(el('div', 'dir-meta', bits.join(' · ')));
      const member = rooms.has(x.room) && !rooms.get(x.room).placeholder;
      const b = button(member ? 'dir-open' : 'btn small dir-join', member ? 'Open' : 'Join');
      b.addEventListener('click', () => joinFromDirectory(x.room, b));
      li.append(info, b);
      ul.append(li);
    }
    $('directory-status').textContent = dir.items.length ? '' : (dir.prefix ? `No rooms start with “${dir.prefix}”.` : 'No rooms yet: create one with “join a room…”.');
    $('directory-more').classList.toggle('hidden', !dir.cursor);
  }
  function joinFromDirectory(name, b) {
    const r = rooms.get(name);
    if (r && r.loaded !== 'none' && !r.placeholder) { closeModal('directory'); openRoom(name); return; }
    const fresh = !r;
    const p = ask((c) => c.join(name));
    if (!p) { $('directory-status').textContent = OFFLINE.message; return; }
    b.disabled = true;
    p.then((j) => {
      b.disabled = false;
      onJoined(j, false);
      closeModal('directory');
      openRoom(name, { fresh });
    }, (e) => { b.disabled = false; $('directory-status').textContent = `${e.code}: ${e.message}`; });
  }

  // ---- sending -----------------------------------------------------------------
  let outboxKey = 1;
  function submitFrom(ta, roomName, replyTo) {
    const text = ta.value;
    if (!roomName || !text.trim() || !client) return;
    askNotifyPermission();
    const r = room(roomName);
    if (r.detached && !replyTo) resetRoom(r);
    const o = { key: outboxKey++, room: roomName, text, ts: Date.now(), reply_to: replyTo || null };
    if (r.dm) o.to = dmPeer(roomName);
    outbox.push(o);
    ta.value = '';
    if (replyTo) {
      $('thread-list').append(pendingNode(o));
      $('thread-body').scrollTop = $('thread-body').scrollHeight;
    } else {
      autosize();
      stopTyping();
      const empty = box.querySelector('.empty');
      if (empty) empty.remove();
      box.append(pendingNode(o));
      scrollToBottom();
    }
    transmit(o);
  }

  // The library sends it now or once back online, sends it again after a lost
  // connection only if it did not land, and resolves once it is durable (ack).
  function transmit(o) {
    const opts = o.reply_to ? { replyTo: o.reply_to } : {};
    const p = o.to ? client.dm(o.to, o.text, opts) : client.send(o.room, o.text, opts);
    p.then((ack) => onAckFor(o, ack), (e) => {
      const i = outbox.indexOf(o);
      if (i < 0) return;
      outbox.splice(i, 1);
      removePending(o);
      if (e.code === 'closed' || e.code === 'auth') return; // signed out or refused: the sign-in screen says so
      showError(e);
      const ta = o.reply_to ? $('thread-composer') : $('composer');
      if ((o.reply_to ? thread.root === o.reply_to : current === o.room) && !ta.value) { ta.value = o.text; if (!o.reply_to) autosize(); }
    });
  }
  function onAckFor(o, f) {
    const i = outbox.indexOf(o);
    if (i >= 0) outbox.splice(i, 1);
    removePending(o);
    const r = room(f.room);
    if (o.to && r.placeholder) { r.placeholder = false; if (f.seq === 1 || r.loaded === 'loaded') { loaded(r); fireLoaded(r); } }
    ingest(f.room, [{ type: 'message', room: f.room, seq: f.seq, ts: f.ts, from: me, text: o.text, reply_to: o.reply_to || undefined }], 'mine');
    if (current === f.room) store.set(LS_ROOM, f.room);
  }

  // ---- typing --------------------------------------------------------------------
  let typingActive = false, typingRoom = null, typingIdle = null, typingSentAt = 0;
  function typed() {
    if (!current || isDm(current) && rooms.get(current).placeholder) return;
    const now = Date.now();
    if (!$('composer').value.trim()) { stopTyping(); return; }
    if (!typingActive || typingRoom !== current || now - typingSentAt > 3000) {
      if (ask((c) => c.typing(current, true).catch(() => {}))) {
        typingActive = true; typingRoom = current; typingSentAt = now;
      }
    }
    clearTimeout(typingIdle);
    typingIdle = setTimeout(stopTyping, 3000);
  }
  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingActive && typingRoom) ask((c) => c.typing(typingRoom, false).catch(() => {}));
    typingActive = false; typingRoom = null;
  }

  const composer = $('composer');
  function autosize() { composer.style.height = 'auto'; composer.style.height = Math.min(composer.scrollHeight + 2, 160) + 'px'; }
  attachMentions(composer, () => current);
  composer.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submitFrom(composer, current); }
    else if (ev.key === 'ArrowUp' && !composer.value) {
      // Up in an empty composer edits your last message, as in Slack.
      const mine = [...msgNodes()].filter((n) => n.classList.contains('mine') && !n.classList.contains('deleted'));
      const n = mine[mine.length - 1];
      const r = current && rooms.get(current);
      const m = n && r && r.msgs.get(+n.dataset.seq);
      if (m) { ev.preventDefault(); startEdit(n, m); }
    }
  });
  composer.addEventListener('input', () => { autosize(); typed(); });
  $('send-form').addEventListener('submit', (ev) => { ev.preventDefault(); submitFrom(composer, current); composer.focus(); });

  const threadComposer = $('thread-composer');
  attachMentions(threadComposer, () => thread.room);
  threadComposer.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submitFrom(threadComposer, thread.room, thread.root); }
  });
  $('thread-form').addEventListener('submit', (ev) => { ev.preventDefault(); submitFrom(threadComposer, thread.room, thread.root); threadComposer.focus(); });

  // ---- joining / leaving -------------------------------------------------------
  $('join-room').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('join-input');
    const name = input.value.trim();
    const errBox = $('join-error');
    errBox.textContent = '';
    if (!ROOM_RE.test(name)) {
      errBox.textContent = 'Room names: lower-case letters, digits, "_", "." or "-", starting with a letter or digit (max 64).';
      return;
    }
    if (rooms.has(name) && rooms.get(name).loaded !== 'none') { input.value = ''; openRoom(name); closeMenu(); return; }
    const fresh = !rooms.has(name);
    const p = ask((c) => c.join(name));
    if (!p) { errBox.textContent = OFFLINE.message; return; }
    input.value = '';
    p.then((j) => {
      onJoined(j, false);
      openRoom(name, { fresh });
      closeMenu();
    }, (e) => { errBox.textContent = `${e.code}: ${e.message}`; });
  });
  $('leave-btn').addEventListener('click', () => {
    if (!current || isDm(current)) return;
    // The `left` event (to every connection of ours) takes the room away.
    const p = ask((c) => c.leave(current));
    if (p) p.catch(showError);
  });

  // ---- errors, notifications, menu ------------------------------------------------
  let errTimer = null;
  function showError(f, info) {
    $('error-text').textContent = (info ? '' : `${f.code}: `) + (f.message || '');
    $('error').classList.remove('hidden');
    clearTimeout(errTimer);
    errTimer = setTimeout(() => $('error').classList.add('hidden'), 8000);
    return false;
  }
  $('error-close').addEventListener('click', () => $('error').classList.add('hidden'));

  function askNotifyPermission() {
    if ('Notification' in window && Notification.permission === 'default') {
      try { Notification.requestPermission().catch(() => {}); } catch (_) {}
    }
  }
  // Desktop notifications for DMs and mentions of you, only while the tab is hidden.
  function notify(m) {
    if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
    try {
      const title = isDm(m.room) ? `${displayName(m.from)} (direct message)` : `${displayName(m.from)} mentioned you in #${m.room}`;
      const n = new Notification(title, { body: m.text, tag: m.room + ':' + m.seq });
      n.onclick = () => { window.focus(); jumpTo(m.room, m.seq, m.reply_to); n.close(); };
    } catch (_) {}
  }

  function closeMenu() { document.body.classList.remove('menu-open'); $('menu-btn').setAttribute('aria-expanded', 'false'); }
  $('menu-btn').addEventListener('click', () => {
    const open = document.body.classList.toggle('menu-open');
    $('menu-btn').setAttribute('aria-expanded', String(open));
  });
  $('scrim').addEventListener('click', closeMenu);
  // Escape closes the topmost layer.
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Escape') return;
    if (!$('confirm').classList.contains('hidden')) closeConfirm();
    else if (pickerFor) closePicker();
    else if (!$('directory').classList.contains('hidden')) closeModal('directory');
    else if (document.body.classList.contains('menu-open')) closeMenu();
    else if (!$('thread').classList.contains('hidden') && !mention) closeThread();
    else if (!$('search-panel').classList.contains('hidden')) closeSearch();
  });

  // Keeping the server's idle timer happy is its job (it pings); we only retry
  // when the browser says we're back online.
  window.addEventListener('online', () => { if (client) client.retryNow(); });

  function start() { connect(); }
  window.chinwag = { state: () => ({ me, current, rooms: [...rooms.keys()], outbox: outbox.length, status: $('status').dataset.state }) };
  if (credentials()) start(); else showSignin();
})();
