(() => {
  'use strict';
  const ROOM_RE = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
  const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const LS_TOKEN = 'chinwag.token', LS_USER = 'chinwag.user', LS_ROOM = 'chinwag.room';
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const store = {
    get(k) { try { return localStorage.getItem(k); } catch (_) { return null; } },
    set(k, v) { try { localStorage.setItem(k, v); } catch (_) {} },
    del(k) { try { localStorage.removeItem(k); } catch (_) {} },
  };

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
    if (token) return { q: 'token=' + encodeURIComponent(token) };
    const user = store.get(LS_USER);
    if (user) return { q: 'user=' + encodeURIComponent(user) };
    return null;
  }

  function showSignin(msg) {
    $('app').classList.add('hidden');
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
    stopped = true;
    if (ws) try { ws.close(1000); } catch (_) {}
    location.reload();
  });

  // ---- state ---------------------------------------------------------------
  let ws = null, connId = 0, stopped = false, everOnline = false;
  let backoff = 500, retryTimer = null, authSuspect = 0;
  let me = null;
  let nextId = 1;
  const pending = new Map();           // request id -> handler(frame, isError)
  const rooms = new Map();             // name -> room
  let current = null;                  // room name
  let outbox = [];                     // {id, room, to, text, floor, state, conn}
  let resyncing = 0;

  function isDm(name) { return name.startsWith('dm:'); }
  function dmPeer(name) {
    const parts = name.split(':');
    if (parts.length !== 3) return name;
    return parts[1] === me ? parts[2] : parts[1];
  }
  function dmRoomFor(user) { return me < user ? `dm:${me}:${user}` : `dm:${user}:${me}`; }
  function label(name) { return isDm(name) ? dmPeer(name) : name; }

  function room(name) {
    let r = rooms.get(name);
    if (!r) {
      r = {
        name, dm: isDm(name), seq: 0, read: 0,
        msgs: new Map(),               // seq -> message
        loaded: 'none',                // none | loading | loaded
        moreOlder: false, loadingOlder: false,
        members: new Set(), online: new Set(), presenceConn: -1,
        typing: new Map(),             // user -> timer
      };
      rooms.set(name, r);
    }
    return r;
  }
  function sortedSeqs(r) { return [...r.msgs.keys()].sort((a, b) => a - b); }
  function lowSeq(r) { let m = Infinity; for (const s of r.msgs.keys()) if (s < m) m = s; return m === Infinity ? 0 : m; }
  function highSeq(r) { let m = 0; for (const s of r.msgs.keys()) if (s > m) m = s; return m; }
  // Highest seq up to which the loaded messages are gap-free (from the lowest loaded one).
  function contiguous(r) {
    const s = sortedSeqs(r);
    if (!s.length) return r.loaded === 'loaded' ? Math.max(0, r.seq0 || 0) : 0;
    let c = s[0];
    for (let i = 1; i < s.length && s[i] === c + 1; i++) c = s[i];
    return c;
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

  function send(frame, handler) {
    if (handler) {
      frame.id = nextId++;
      pending.set(frame.id, handler);
    }
    if (ws && ws.readyState === WebSocket.OPEN && ws.chinwagReady) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    if (handler) pending.delete(frame.id);
    return false;
  }

  function connect() {
    clearTimeout(retryTimer);
    const cred = credentials();
    if (!cred) { showSignin(); return; }
    $('signin').classList.add('hidden');
    $('app').classList.remove('hidden');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/ws?${cred.q}`;
    setStatus(everOnline ? 'reconnecting' : 'connecting');
    let sock;
    try { sock = new WebSocket(url, 'chinwag.v1.json'); } catch (e) { scheduleReconnect(false); return; }
    ws = sock;
    const myConn = ++connId;
    let opened = false;
    sock.onopen = () => { opened = true; sock.chinwagReady = true; };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      let f;
      try { f = JSON.parse(ev.data); } catch (_) { return; }
      try { onFrame(f, myConn); } catch (e) { console.error('chinwag: frame handling failed', e, f); }
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      onDisconnect();
      if (stopped) return;
      if (ev.code === 4001) {
        store.del(LS_TOKEN);
        showSignin('Your session ended (token expired or revoked). Please sign in again.');
        return;
      }
      scheduleReconnect(opened);
    };
    sock.onerror = () => {};
  }

  function onDisconnect() {
    for (const [, h] of pending) try { h(null, true); } catch (_) {}
    pending.clear();
    resyncing = 0;
    for (const r of rooms.values()) {
      if (r.loaded === 'loading') r.loaded = r.msgs.size ? 'loaded' : 'none';
      r.loadingOlder = false;
      for (const t of r.typing.values()) clearTimeout(t);
      r.typing.clear();
    }
    typingActive = false;
    renderTyping();
    setStatus(everOnline ? 'reconnecting' : 'connecting');
  }

  async function scheduleReconnect(opened) {
    if (!opened) {
      // The browser hides the HTTP status of a refused upgrade; if the server
      // answers /health but refuses us, the credentials are most likely bad.
      try {
        const r = await fetch('/health', { cache: 'no-store' });
        if (r.ok) authSuspect++; else authSuspect = 0;
      } catch (_) { authSuspect = 0; }
      if (authSuspect >= (everOnline ? 5 : 3)) {
        authSuspect = 0;
        const hadToken = !!store.get(LS_TOKEN);
        store.del(LS_TOKEN); store.del(LS_USER);
        showSignin(hadToken ? 'The server refused this token (bad, expired or revoked).' :
          'The server refused this user name (it may not be in open mode: use a token link).');
        return;
      }
    } else {
      authSuspect = 0;
    }
    const delay = Math.min(backoff, 10000) * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, 10000);
    retryTimer = setTimeout(connect, delay);
  }

  // ---- frames ----------------------------------------------------------------
  function onFrame(f, conn) {
    if (f.id !== undefined && f.id !== null && pending.has(f.id)) {
      const h = pending.get(f.id);
      pending.delete(f.id);
      h(f, f.type === 'error');
      return;
    }
    switch (f.type) {
      case 'hello': onHello(f, conn); break;
      case 'message': addMessages(f.room, [f], 'live'); break;
      case 'presence': onPresence(f); break;
      case 'typing': onTyping(f); break;
      case 'read': {
        const r = rooms.get(f.room);
        if (r && f.seq > r.read) { r.read = f.seq; renderRooms(); }
        break;
      }
      case 'left': onLeft(f.room); break;
      case 'joined': onJoined(f, false); break;
      case 'presence_list': {
        const r = rooms.get(f.room);
        if (r) { r.online = new Set(f.online); for (const u of f.online) r.members.add(u); renderOnline(); }
        break;
      }
      case 'ack': onAck(f); break;
      case 'error': showError(f); break;
      case 'notification': showError({ code: f.kind, message: f.text }, true); break;
      default: break;
    }
  }

  function onHello(f, conn) {
    const firstTime = !everOnline;
    if (me !== null && me !== f.user) { rooms.clear(); current = null; outbox = []; }
    me = f.user;
    everOnline = true; backoff = 500; authSuspect = 0;
    $('me-name').textContent = 'signed in as ' + me;
    const names = new Set();
    for (const rs of f.rooms || []) {
      names.add(rs.room);
      const r = room(rs.room);
      r.seq = Math.max(r.seq, rs.seq);
      r.read = Math.max(r.read, rs.read);
    }
    for (const [name, r] of rooms) {
      if (!names.has(name) && !r.placeholder) rooms.delete(name);
    }
    if (current && !rooms.has(current)) current = null;
    if (!current) {
      const saved = store.get(LS_ROOM);
      if (saved && rooms.has(saved)) current = saved;
      else if (f.rooms && f.rooms.length) current = [...rooms.keys()].filter((n) => !isDm(n))[0] || f.rooms[0].room;
    }
    setStatus('online');
    // Resume every room we hold messages for, then the open one.
    for (const r of rooms.values()) {
      if (r.placeholder) continue;
      if (r.loaded === 'loaded') resync(r);
    }
    if (current) openRoom(current, { keepScroll: !firstTime });
    else render();
    if (resyncing === 0) flushOutbox();
  }

  function resyncDone() {
    resyncing = Math.max(0, resyncing - 1);
    if (resyncing === 0) flushOutbox();
  }

  // Fetch everything after the last gap-free seq (join+since for rooms, history
  // after for DM rooms, which cannot be joined), following `more`.
  function resync(r) {
    const since = contiguous(r);
    resyncing++;
    const follow = (after) => {
      send({ type: 'history', room: r.name, after, limit: 100 }, (h, err) => {
        if (!h || err) { if (h) showError(h); resyncDone(); return; }
        addMessages(r.name, h.messages, 'newer');
        if (h.more && h.messages.length) follow(h.messages[h.messages.length - 1].seq);
        else resyncDone();
      }) || resyncDone();
    };
    if (r.dm) {
      follow(since);
      send({ type: 'presence', room: r.name }, (p, err) => { if (p && !err) onPresenceList(p); });
    } else {
      const ok = send({ type: 'join', room: r.name, since }, (j, err) => {
        if (!j || err) { if (j) showError(j); resyncDone(); return; }
        onJoined(j, true);
        const last = j.history.length ? j.history[j.history.length - 1].seq : since;
        if (j.more) follow(last); else resyncDone();
      });
      if (!ok) resyncDone();
    }
  }

  function initialLoad(r) {
    r.loaded = 'loading';
    if (r.dm) {
      send({ type: 'history', room: r.name, limit: 50 }, (h, err) => {
        if (!h || err) { r.loaded = r.msgs.size ? 'loaded' : 'none'; if (h) showError(h); return; }
        r.moreOlder = h.more;
        r.loaded = 'loaded';
        if (!h.messages.length) r.seq0 = r.seq;
        addMessages(r.name, h.messages, 'older');
        if (r.name === current && !r.msgs.size) renderAllMessages();
      }) || (r.loaded = 'none');
      send({ type: 'presence', room: r.name }, (p, err) => { if (p && !err) onPresenceList(p); });
    } else {
      send({ type: 'join', room: r.name }, (j, err) => {
        if (!j || err) { r.loaded = r.msgs.size ? 'loaded' : 'none'; if (j) showError(j); return; }
        onJoined(j, false);
      }) || (r.loaded = 'none');
    }
  }

  function onPresenceList(p) {
    const r = rooms.get(p.room);
    if (!r) return;
    r.online = new Set(p.online);
    for (const u of p.online) r.members.add(u);
    r.presenceConn = connId;
    renderOnline();
  }

  function onJoined(j, isResync) {
    const r = room(j.room);
    r.placeholder = false;
    r.members = new Set(j.members);
    r.online = new Set(j.online);
    r.presenceConn = connId;
    r.seq = Math.max(r.seq, j.seq);
    if (!isResync) {
      r.moreOlder = j.more;
      if (!j.history.length) r.seq0 = j.seq;
    }
    r.loaded = 'loaded';
    addMessages(j.room, j.history, isResync ? 'newer' : 'older');
    if (!isResync && j.room === current && !r.msgs.size) renderAllMessages();
    renderRooms();
    renderOnline();
    if (j.room === current) renderHeader();
  }

  function onLeft(name) {
    rooms.delete(name);
    if (current === name) {
      current = [...rooms.keys()][0] || null;
      if (current) openRoom(current); else render();
    } else renderRooms();
  }

  function onPresence(f) {
    const r = rooms.get(f.room);
    if (!r) return;
    if (f.state === 'online') { r.online.add(f.user); r.members.add(f.user); }
    else r.online.delete(f.user);
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

  function onAck(f) {
    const i = outbox.findIndex((o) => o.id === f.id);
    if (i < 0) return;
    const o = outbox[i];
    outbox.splice(i, 1);
    removePending(o);
    // The message frame normally comes too; record it now so nothing waits on it.
    addMessages(f.room, [{ room: f.room, seq: f.seq, ts: f.ts, from: me, text: o.text }], 'live');
  }

  // ---- messages --------------------------------------------------------------
  // kind: 'live' (a message frame), 'older' (history below), 'newer' (resume).
  function addMessages(name, list, kind) {
    if (!list) return;
    let r = rooms.get(name);
    if (!r) {
      r = room(name);
      // A room we did not know (e.g. a first DM): only seq 1 proves we have it all.
      if (kind === 'live' && list.length && list[0].seq !== 1) {
        r.seq = Math.max(r.seq, list[0].seq);
        renderRooms();
        if (current === name) initialLoad(r);
        return;
      }
      r.loaded = 'loaded';
    }
    r.placeholder = false;
    const known = r.loaded !== 'none';
    const fresh = [];
    for (const m of list) {
      r.seq = Math.max(r.seq, m.seq);
      if (!known) continue;
      if (r.msgs.has(m.seq)) continue;
      const msg = { room: name, seq: m.seq, ts: m.ts, from: m.from, text: m.text };
      r.msgs.set(m.seq, msg);
      fresh.push(msg);
      if (kind === 'live' && m.from !== me) {
        clearTimeout(r.typing.get(m.from));
        if (r.typing.delete(m.from) && name === current) renderTyping();
        if (r.dm) notify(msg);
      }
    }
    if (name === current && fresh.length) insertMessages(r, fresh, kind);
    if (name === current) markRead();
    renderRooms();
  }

  const box = $('messages');
  const dayKey = (ts) => { const d = new Date(ts); return d.getFullYear() + '-' + d.getMonth() + '-' + d.getDate(); };
  function dayLabel(ts) {
    const d = new Date(ts), now = new Date();
    const y = new Date(now); y.setDate(now.getDate() - 1);
    if (dayKey(ts) === dayKey(now.getTime())) return 'Today';
    if (dayKey(ts) === dayKey(y.getTime())) return 'Yesterday';
    return d.toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  }
  function fmtTime(ts) { return new Date(ts).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' }); }

  function messageNode(m, pendingMsg) {
    const n = el('div', 'message' + (m.from === me ? ' mine' : '') + (pendingMsg ? ' pending' : ''));
    if (!pendingMsg) n.dataset.seq = String(m.seq);
    n.dataset.from = m.from;
    n.dataset.ts = String(m.ts);
    const meta = el('div', 'meta');
    meta.append(el('span', 'from', m.from));
    const t = el('time', 'time', fmtTime(m.ts));
    t.dateTime = new Date(m.ts).toISOString();
    t.title = new Date(m.ts).toLocaleString();
    meta.append(t);
    n.append(meta, el('div', 'text', m.text));
    return n;
  }
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
    const cont = !newDay && p && p.dataset.from === n.dataset.from && ts - +p.dataset.ts < 5 * 60 * 1000;
    n.classList.toggle('cont', !!cont);
  }

  function nearBottom() { return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }
  function scrollToBottom() { box.scrollTop = box.scrollHeight; }

  function insertMessages(r, list, kind) {
    const stick = nearBottom() || kind === 'mine';
    const beforeH = box.scrollHeight, beforeTop = box.scrollTop;
    const empty = box.querySelector('.empty');
    if (empty) empty.remove();
    list.sort((a, b) => a.seq - b.seq);
    const nodes = [...msgNodes()];
    for (const m of list) {
      const n = messageNode(m, false);
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
  }

  let renderedRoom = undefined;
  function renderAllMessages() {
    const r = current && rooms.get(current);
    renderedRoom = current;
    box.textContent = '';
    if (!r) { box.append(el('div', 'empty', 'Join a room to start chatting.')); return; }
    const list = sortedSeqs(r).map((s) => r.msgs.get(s));
    for (const m of list) { const n = messageNode(m, false); box.append(n); fixup(n); }
    for (const o of outbox) if (o.room === current) {
      const n = messageNode({ from: me, ts: o.ts, text: o.text }, true);
      n.dataset.outbox = String(o.key);
      box.append(n);
    }
    if (!list.length && r.loaded === 'loaded' && !outbox.some((o) => o.room === current)) {
      box.append(el('div', 'empty', r.dm ? `This is the start of your conversation with ${dmPeer(r.name)}.` : `This is the start of #${r.name}.`));
    }
    renderOlderHint(r);
    scrollToBottom();
    fillViewport(r);
  }
  // Load older history until the view can scroll (so the scroll-up trigger works).
  function fillViewport(r) {
    if (r && r.name === current && r.moreOlder && box.scrollHeight <= box.clientHeight + 60) setTimeout(loadOlder, 0);
  }
  function removePending(o) {
    const n = box.querySelector(`.message.pending[data-outbox="${o.key}"]`);
    if (n) n.remove();
  }

  box.addEventListener('scroll', () => {
    if (box.scrollTop < 60) loadOlder();
  });
  function loadOlder() {
    const r = current && rooms.get(current);
    if (!r || r.loaded !== 'loaded' || !r.moreOlder || r.loadingOlder || !r.msgs.size) return;
    r.loadingOlder = true;
    renderOlderHint(r);
    const ok = send({ type: 'history', room: r.name, before: lowSeq(r), limit: 50 }, (h, err) => {
      r.loadingOlder = false;
      if (!h || err) { if (h) showError(h); renderOlderHint(r); return; }
      r.moreOlder = h.more;
      if (h.room === current) {
        const beforeH = box.scrollHeight, beforeTop = box.scrollTop;
        addMessages(h.room, h.messages, 'older');
        box.scrollTop = beforeTop + (box.scrollHeight - beforeH);
        renderOlderHint(r);
      } else addMessages(h.room, h.messages, 'older');
    });
    if (!ok) { r.loadingOlder = false; renderOlderHint(r); }
  }

  // ---- read markers ------------------------------------------------------------
  function markRead() {
    const r = current && rooms.get(current);
    if (!r || document.visibilityState !== 'visible' || r.loaded !== 'loaded') return;
    const top = Math.max(highSeq(r), 0);
    if (top > r.read) {
      if (send({ type: 'read', room: r.name, seq: top })) r.read = top;
      renderRooms();
    }
  }
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') markRead(); });
  window.addEventListener('focus', markRead);

  // ---- rendering -----------------------------------------------------------
  function render(force) { renderRooms(); renderHeader(); if (force || renderedRoom !== current) renderAllMessages(); renderOnline(); renderTyping(); setStatus($('status').dataset.state); }

  function renderRooms() {
    const ul = $('room-list');
    ul.textContent = '';
    const names = [...rooms.keys()].sort((a, b) => (isDm(a) - isDm(b)) || label(a).localeCompare(label(b)));
    let totalUnread = 0, elsewhere = 0;
    for (const name of names) {
      const r = rooms.get(name);
      const li = el('li');
      li.dataset.room = name;
      if (r.dm) li.dataset.dm = dmPeer(name);
      const unread = name === current && document.visibilityState === 'visible' ? 0 : Math.max(0, r.seq - r.read);
      totalUnread += unread;
      if (name !== current) elsewhere += unread;
      li.dataset.unread = String(unread);
      if (unread) li.classList.add('has-unread');
      if (name === current) li.setAttribute('aria-current', 'true');
      const b = el('button');
      b.type = 'button';
      b.append(el('span', 'name', label(name)));
      if (unread) { const u = el('span', 'unread', unread > 99 ? '99+' : String(unread)); u.setAttribute('aria-label', `${unread} unread`); b.append(u); }
      b.addEventListener('click', () => { openRoom(name); closeMenu(); });
      li.append(b);
      ul.append(li);
    }
    $('menu-btn').dataset.unread = String(elsewhere > 0);
    $('menu-btn').setAttribute('aria-label', elsewhere ? `Rooms menu (${elsewhere} unread elsewhere)` : 'Rooms menu');
    document.title = (totalUnread ? `(${totalUnread}) ` : '') + (current ? label(current) + ' · ' : '') + 'chinwag';
  }

  function renderHeader() {
    const r = current && rooms.get(current);
    $('room-title').textContent = r ? (r.dm ? '@ ' + dmPeer(r.name) : '# ' + r.name) : 'chinwag';
    $('room-meta').textContent = r && !r.dm ? `${r.online.size} online · ${r.members.size} members` : '';
    $('leave-btn').classList.toggle('hidden', !r || r.dm);
    $('composer').placeholder = r ? (r.dm ? `Message ${dmPeer(r.name)}` : `Message #${r.name}`) : 'Join a room first';
  }

  function renderOnline() {
    const ul = $('online');
    ul.textContent = '';
    const r = current && rooms.get(current);
    if (!r) return;
    let users = new Set([...r.members, ...r.online]);
    if (r.dm) { const [, a, b] = r.name.split(':'); users = new Set([a, b]); }
    const list = [...users].sort((a, b) => (r.online.has(b) - r.online.has(a)) || a.localeCompare(b));
    for (const u of list) {
      const li = el('li');
      li.dataset.user = u;
      li.dataset.online = r.online.has(u) ? 'true' : 'false';
      if (r.online.has(u)) li.classList.add('online');
      const b = el('button');
      b.type = 'button';
      b.append(el('span', 'uname', u));
      if (u === me) { b.append(el('span', 'you', '(you)')); b.disabled = true; }
      else {
        b.title = `Send a direct message to ${u}`;
        b.setAttribute('aria-label', `${u}, ${r.online.has(u) ? 'online' : 'offline'}: send a direct message`);
        b.addEventListener('click', () => openDm(u));
      }
      li.append(b);
      ul.append(li);
    }
    if (current && !r.dm) $('room-meta').textContent = `${r.online.size} online · ${r.members.size} members`;
  }

  function renderTyping() {
    const r = current && rooms.get(current);
    const who = r ? [...r.typing.keys()] : [];
    const t = $('typing');
    if (!who.length) t.textContent = '';
    else if (who.length === 1) t.textContent = `${who[0]} is typing…`;
    else if (who.length === 2) t.textContent = `${who[0]} and ${who[1]} are typing…`;
    else t.textContent = 'Several people are typing…';
  }

  function openRoom(name, opts) {
    if (current && current !== name) stopTyping();
    current = name;
    if (!isDm(name) || rooms.get(name) && !rooms.get(name).placeholder) store.set(LS_ROOM, name);
    const r = room(name);
    if (r.loaded === 'none' && !r.placeholder) initialLoad(r);
    else if (r.presenceConn !== connId && !r.placeholder) {
      r.presenceConn = connId;
      send({ type: 'presence', room: r.name }, (p, err) => { if (p && !err) onPresenceList(p); });
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
    if (r.loaded === 'none' && !r.seq) { r.placeholder = true; r.loaded = 'loaded'; }
    openRoom(name);
    closeMenu();
    $('composer').focus();
  }

  // ---- sending -----------------------------------------------------------------
  let outboxKey = 1;
  function submit() {
    const c = $('composer');
    const text = c.value;
    if (!current || !text.trim()) return;
    const r = room(current);
    const o = { key: outboxKey++, room: current, text, ts: Date.now(), floor: highSeq(r), state: 'queued', conn: -1 };
    if (r.dm) o.to = dmPeer(current);
    outbox.push(o);
    c.value = '';
    autosize();
    stopTyping();
    const empty = box.querySelector('.empty');
    if (empty) empty.remove();
    const n = messageNode({ from: me, ts: o.ts, text }, true);
    n.dataset.outbox = String(o.key);
    box.append(n);
    scrollToBottom();
    if (resyncing === 0) transmit(o);
  }

  function transmit(o) {
    const frame = o.to ? { type: 'dm', to: o.to, text: o.text } : { type: 'send', room: o.room, text: o.text };
    const ok = send(frame, (reply, err) => {
      if (!reply) return;               // connection lost: decided after the resume
      if (err) {
        if (reply.code === 'rate_limited') {
          o.state = 'queued';
          setTimeout(() => { if (o.state === 'queued' && outbox.includes(o)) transmit(o); }, reply.retry_after_ms || 1000);
          return;
        }
        outbox.splice(outbox.indexOf(o), 1);
        removePending(o);
        showError(reply);
        if (current === o.room && !$('composer').value) { $('composer').value = o.text; autosize(); }
        return;
      }
      onAckFor(o, reply);
    });
    if (ok) { o.state = 'sent'; o.conn = connId; o.id = frame.id; }
  }
  function onAckFor(o, f) {
    const i = outbox.indexOf(o);
    if (i >= 0) outbox.splice(i, 1);
    removePending(o);
    if (o.to && !rooms.has(f.room)) {
      // A brand new DM room: the placeholder becomes real.
    }
    const r = room(f.room);
    if (o.to && r.placeholder) { r.placeholder = false; if (f.seq === 1 || r.loaded === 'loaded') r.loaded = 'loaded'; }
    addMessages(f.room, [{ room: f.room, seq: f.seq, ts: f.ts, from: me, text: o.text }], 'mine');
    if (current === f.room) store.set(LS_ROOM, f.room);
  }

  // After a reconnect: messages sent on a connection that dropped before the
  // ack may or may not have been stored; the resumed history tells.
  function flushOutbox() {
    if (!ws || !ws.chinwagReady) return;
    for (const o of [...outbox]) {
      if (o.state === 'sent' && o.conn !== connId) {
        const roomName = o.to ? dmRoomFor(o.to) : o.room;
        const r = rooms.get(roomName);
        let found = null;
        if (r) for (const m of r.msgs.values()) if (m.from === me && m.text === o.text && m.seq > o.floor) { found = m; break; }
        if (found) { outbox.splice(outbox.indexOf(o), 1); removePending(o); continue; }
        o.state = 'queued';
      }
      if (o.state === 'queued') transmit(o);
    }
  }

  // ---- typing --------------------------------------------------------------------
  let typingActive = false, typingRoom = null, typingIdle = null, typingSentAt = 0;
  function typed() {
    if (!current || isDm(current) && rooms.get(current).placeholder) return;
    const now = Date.now();
    if (!$('composer').value.trim()) { stopTyping(); return; }
    if (!typingActive || typingRoom !== current || now - typingSentAt > 3000) {
      if (send({ type: 'typing', room: current, active: true })) {
        typingActive = true; typingRoom = current; typingSentAt = now;
      }
    }
    clearTimeout(typingIdle);
    typingIdle = setTimeout(stopTyping, 3000);
  }
  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingActive && typingRoom) send({ type: 'typing', room: typingRoom, active: false });
    typingActive = false; typingRoom = null;
  }

  const composer = $('composer');
  function autosize() { composer.style.height = 'auto'; composer.style.height = Math.min(composer.scrollHeight + 2, 160) + 'px'; }
  composer.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
  });
  composer.addEventListener('input', () => { autosize(); typed(); });
  $('send-form').addEventListener('submit', (ev) => { ev.preventDefault(); submit(); composer.focus(); });

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
    const ok = send({ type: 'join', room: name }, (j, err) => {
      if (!j) { errBox.textContent = 'Connection lost; try again.'; return; }
      if (err) { errBox.textContent = `${j.code}: ${j.message}`; return; }
      onJoined(j, false);
      openRoom(name);
      closeMenu();
    });
    if (ok) input.value = ''; else errBox.textContent = 'Not connected; try again in a moment.';
  });
  $('leave-btn').addEventListener('click', () => {
    if (!current || isDm(current)) return;
    const name = current;
    send({ type: 'leave', room: name }, (f, err) => { if (f && !err) onLeft(name); else if (f) showError(f); });
  });

  // ---- errors, notifications, menu ------------------------------------------------
  let errTimer = null;
  function showError(f, info) {
    $('error-text').textContent = (info ? '' : `${f.code}: `) + (f.message || '');
    $('error').classList.remove('hidden');
    clearTimeout(errTimer);
    errTimer = setTimeout(() => $('error').classList.add('hidden'), 8000);
  }
  $('error-close').addEventListener('click', () => $('error').classList.add('hidden'));

  function askNotifyPermission() {
    if ('Notification' in window && Notification.permission === 'default') {
      try { Notification.requestPermission().catch(() => {}); } catch (_) {}
    }
  }
  function notify(m) {
    if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
    try {
      const n = new Notification(`${m.from} (direct message)`, { body: m.text, tag: m.room });
      n.onclick = () => { window.focus(); openRoom(m.room); n.close(); };
    } catch (_) {}
  }

  function closeMenu() { document.body.classList.remove('menu-open'); $('menu-btn').setAttribute('aria-expanded', 'false'); }
  $('menu-btn').addEventListener('click', () => {
    const open = document.body.classList.toggle('menu-open');
    $('menu-btn').setAttribute('aria-expanded', String(open));
  });
  $('scrim').addEventListener('click', closeMenu);
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeMenu(); });

  // Keep the server's idle timer happy is its job (it pings); we only retry when
  // the browser says we're back online.
  window.addEventListener('online', () => { if (!ws && !stopped && credentials()) { backoff = 500; connect(); } });

  function start() { stopped = false; connect(); }
  window.chinwag = { state: () => ({ me, current, rooms: [...rooms.keys()], outbox: outbox.length, status: $('status').dataset.state }) };
  if (credentials()) start(); else showSignin();
})();
