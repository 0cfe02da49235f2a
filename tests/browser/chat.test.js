// End-to-end tests of the embedded web client: the real server binary, users
// in headless Chromium contexts. The first test: chat, DMs, a server restart
// mid-conversation. The second: team chat (reactions, edit, delete, threads,
// mentions, search, the room directory, display names, token refresh).
//
//   CHINWAG_BIN     server binary (default: <repo>/target/debug/chinwag)
//   CHROMIUM        browser binary (default: /usr/bin/chromium)
//   SCREENSHOT_DIR  where screenshots go (default: tests/browser/screenshots)
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO = path.resolve(__dirname, '..', '..');
const BIN = process.env.CHINWAG_BIN || path.join(REPO, 'target', 'debug', 'chinwag');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.resolve(process.env.SCREENSHOT_DIR || path.join(__dirname, 'screenshots'));
const STEP_MS = 10_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** The chinwag server under test: start, stop (SIGTERM), restart on the same port and data dir. */
class Server {
  constructor(port, dataDir, logFile) {
    this.port = port;
    this.dataDir = dataDir;
    this.logFile = logFile;
    this.env = { ...process.env, CHINWAG_SECRET: crypto.randomBytes(32).toString('hex'), RUST_LOG: process.env.RUST_LOG || 'info' };
    this.proc = null;
    this.base = `http://127.0.0.1:${port}`;
    this.args = [];                    // more `serve` flags, e.g. ['--open']
  }
  async start() {
    const log = fs.openSync(this.logFile, 'a');
    this.proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir,
      '--rate', '1000', '--burst', '1000', ...this.args], { env: this.env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    const proc = this.proc;
    let exited = null;
    proc.once('exit', (code, sig) => { exited = { code, sig }; });
    const deadline = Date.now() + STEP_MS;
    while (Date.now() < deadline) {
      if (exited) throw new Error(`server exited at start (${JSON.stringify(exited)}); log: ${this.logFile}`);
      try {
        const r = await fetch(`${this.base}/health`);
        if (r.status === 200) return;
      } catch (_) { /* not up yet */ }
      await sleep(50);
    }
    throw new Error(`server not healthy within ${STEP_MS} ms; log: ${this.logFile}`);
  }
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return null;
    const done = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
    proc.kill('SIGTERM');
    const res = await Promise.race([done, sleep(7000).then(() => null)]);
    if (!res) { proc.kill('SIGKILL'); await done; throw new Error('server did not exit within 7 s of SIGTERM'); }
    this.proc = null;
    return res;
  }
  /** A token from `chinwag token`; extra args such as '--name', 'Alice Liddell', '--ttl', '60s'. */
  token(user, ...args) {
    try {
      return execFileSync(BIN, ['token', user, '--data-dir', this.dataDir, ...args], { env: this.env, encoding: 'utf8', stdio: 'pipe' }).trim();
    } catch (e) {
      // A binary whose `token` lacks --name (PROTOCOL.md section 1): sign the same
      // claims here, with the secret this test gave the server, and say so.
      if (!/unexpected argument '--name'/.test(String(e.stderr))) throw e;
      console.log(`  WARNING: \`chinwag token\` refuses --name; the test signs ${user}'s token itself`);
      return this.mint(user, args);
    }
  }
  /** An HS256 token like `chinwag token` prints, from the same --name/--ttl arguments. */
  mint(user, args) {
    const opt = (k) => { const i = args.indexOf(k); return i >= 0 ? args[i + 1] : undefined; };
    const ttl = opt('--ttl') || '30d';
    const unit = { s: 1, m: 60, h: 3600, d: 86400 }[ttl.slice(-1)];
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: user, exp: now + Number(ttl.slice(0, -1)) * unit, iat: now, jti: crypto.randomBytes(8).toString('hex') };
    if (opt('--name') !== undefined) claims.name = opt('--name');
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
    return `${body}.${crypto.createHmac('sha256', Buffer.from(this.env.CHINWAG_SECRET)).update(body).digest('base64url')}`;
  }
  async api(method, p, token, body) {
    const r = await fetch(this.base + p, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${text}`);
    return JSON.parse(text);
  }
}

/** Runs fn with a deadline so that one stuck step fails with its own name. */
async function step(name, fn, ms = STEP_MS) {
  let timer;
  const t0 = Date.now();
  try {
    return await Promise.race([
      fn(),
      new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`step "${name}" timed out after ${ms} ms`)), ms); }),
    ]);
  } finally {
    clearTimeout(timer);
    console.log(`  step ${name}: ${Date.now() - t0} ms`);
  }
}

const waitFor = (page, fn, arg, ms = STEP_MS) => page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name + '.png') });

/** The messages a page shows for its open room: [{seq, from, text}]. */
const shown = (page) => page.$$eval('#messages .message[data-seq]', (ns) => ns.map((n) => ({
  seq: Number(n.dataset.seq), from: n.dataset.from, text: n.querySelector('.text').textContent,
})));

async function openRoom(page, name) {
  await page.click(`#room-list li[data-room="${name}"] button`);
  await waitFor(page, (n) => document.querySelector(`#room-list li[data-room="${n}"]`)?.getAttribute('aria-current') === 'true', name);
}

async function say(page, text) {
  await page.fill('#composer', text);
  await page.press('#composer', 'Enter');
}

/** Waits until the page shows exactly the texts (in order) in its open room. */
async function waitTexts(page, texts, ms = STEP_MS) {
  try {
    await waitFor(page, (want) => {
      const got = [...document.querySelectorAll('#messages .message[data-seq] .text')].map((n) => n.textContent);
      return JSON.stringify(got) === JSON.stringify(want) && !document.querySelector('#messages .message.pending');
    }, texts, ms);
  } catch (e) {
    throw new Error(`${e.message}\nwanted ${JSON.stringify(texts)}\ngot    ${JSON.stringify(await shown(page))}`);
  }
}

test('web client: chat, typing, presence, DM, XSS, server restart', { timeout: 115_000 }, async (t) => {
  assert.ok(fs.existsSync(BIN), `server binary not found: ${BIN} (set CHINWAG_BIN)`);
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found: ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
  fs.mkdirSync(SHOTS, { recursive: true });
  console.log(`screenshots: ${SHOTS}`);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chinwag-browser-'));
  const server = new Server(await freePort(), path.join(tmp, 'data'), path.join(tmp, 'server.log'));
  console.log(`server log: ${server.logFile}`);
  let browser;
  const dialogs = [];
  const pageErrors = [];
  const cspViolations = [];
  t.after(async () => {
    if (browser) await browser.close().catch(() => {});
    await server.stop().catch(() => {});
  });

  await step('start server', () => server.start());
  const tokA = server.token('alice');
  const tokB = server.token('bob');
  const tokC = server.token('carol');
  assert.match(tokA, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'chinwag token prints a JWT');

  browser = await step('launch chromium', () => chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }), 60000); // A first launch on a fresh machine reads the whole browser from disk.
  const newPage = async (opts = {}) => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 720 }, ...opts });
    const page = await ctx.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    // The page's Content-Security-Policy must not have to block anything.
    page.on('console', (m) => {
      if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
    });
    return page;
  };

  // ---- sign-in screen, token links ---------------------------------------
  await step('sign-in screen without a token', async () => {
    const p = await newPage();
    await p.goto(server.base + '/');
    await p.waitForSelector('#signin:not(.hidden)');
    assert.match(await p.textContent('#signin'), /chinwag token USER --link/);
    await shot(p, '01-signin');
    // This server is not in open mode: a bare user name is refused, and the page says so.
    await p.fill('#user-name', 'dave');
    await p.press('#user-name', 'Enter');
    await waitFor(p, () => /refused/.test(document.querySelector('#signin-error').textContent)
      && !document.querySelector('#signin').classList.contains('hidden'), null, 12_000);
    await p.context().close();
  }, 15_000);

  const A = await newPage();
  const B = await newPage();
  // The page speaks through the client library (clients/js), served beside it.
  const scripts = new Map();           // path -> content type of the scripts A loaded
  A.on('response', (r) => { const u = new URL(r.url()); if (u.pathname.endsWith('.js')) scripts.set(u.pathname, r.headers()['content-type']); });
  const idsSent = [];
  A.on('websocket', (ws) => ws.on('framesent', (f) => { try { idsSent.push(JSON.parse(f.payload).id); } catch (_) { /* not JSON */ } }));
  await step('sign in by token link', async () => {
    await A.goto(`${server.base}/#token=${tokA}`);
    await B.goto(`${server.base}/#token=${tokB}`);
    for (const [p, tok] of [[A, tokA], [B, tokB]]) {
      await waitFor(p, () => document.querySelector('#status').dataset.state === 'online');
      assert.equal(new URL(p.url()).hash, '', 'token removed from the URL');
      assert.equal(await p.evaluate(() => localStorage.getItem('chinwag.token')), tok);
    }
    assert.match(await A.textContent('#me'), /alice/);
    for (const p of ['/app.js', '/chinwag.js', '/msgpack.js']) assert.match(scripts.get(p) || 'not loaded', /^text\/javascript/, p);
  });

  await step('open mode: a user name signs in without a token', async () => {
    const open = new Server(await freePort(), path.join(tmp, 'open-data'), path.join(tmp, 'open-server.log'));
    open.args = ['--open'];
    await open.start();
    try {
      const p = await newPage();
      await p.goto(open.base + '/');
      await p.fill('#user-name', 'dave');
      await p.press('#user-name', 'Enter');
      await waitFor(p, () => document.querySelector('#status').dataset.state === 'online');
      assert.match(await p.textContent('#me-name'), /dave/);
      await p.context().close();
    } finally {
      await open.stop();
    }
  });

  // ---- join ------------------------------------------------------------------
  await step('join a room (with client-side validation)', async () => {
    await A.fill('#join-input', 'Bad Room');
    await A.press('#join-input', 'Enter');
    await waitFor(A, () => document.querySelector('#join-error').textContent.length > 0);
    await A.fill('#join-input', 'lobby');
    await A.press('#join-input', 'Enter');
    await A.waitForSelector('#room-list li[data-room="lobby"][aria-current="true"]');
    await A.waitForSelector('#online li[data-user="alice"].online');
    assert.equal(await A.textContent('#join-error'), '');
    await B.fill('#join-input', 'lobby');
    await B.press('#join-input', 'Enter');
    await B.waitForSelector('#room-list li[data-room="lobby"][aria-current="true"]');
    // presence: bob joined, alice sees him online
    await A.waitForSelector('#online li[data-user="bob"].online');
    await B.waitForSelector('#online li[data-user="alice"].online');
  });

  const lobby = [];
  await step('chat both ways', async () => {
    await say(A, 'hello bob');
    lobby.push('hello bob');
    await waitTexts(B, lobby);
    await say(B, 'hi alice\nsecond line');
    lobby.push('hi alice\nsecond line');
    await waitTexts(A, lobby);
    await waitTexts(B, lobby);
    const a = await shown(A);
    assert.deepEqual(a.map((m) => m.from), ['alice', 'bob']);
    // Request ids are the client library's (`<tag>-<n>`, base 36).
    assert.ok(idsSent.some((id) => typeof id === 'string' && /^[0-9a-z]+-[0-9a-z]+$/.test(id)), `ids sent: ${JSON.stringify(idsSent)}`);
    assert.equal(await A.locator('.day-sep').count(), 1, 'one day separator');
    assert.equal(await A.getAttribute('#messages', 'aria-live'), 'polite');
    assert.equal(await A.getAttribute('#messages', 'role'), 'log');
  });

  await step('typing indicator', async () => {
    await B.click('#composer');
    await B.keyboard.type('I am typ', { delay: 20 });
    await A.waitForSelector('#typing:has-text("bob is typing")');
    await shot(A, '02-typing');
    await B.keyboard.type('ing');
    await B.press('#composer', 'Enter');
    lobby.push('I am typing');
    await waitTexts(A, lobby);
    await waitFor(A, () => document.querySelector('#typing').textContent === '');
  });

  // ---- DM ---------------------------------------------------------------------
  await step('direct message by clicking a user', async () => {
    await A.click('#online li[data-user="bob"] button');
    await A.waitForSelector('#room-title:has-text("bob")');
    await say(A, 'psst, bob');
    await waitTexts(A, ['psst, bob']);
    // bob sees a new DM room named after alice, with one unread message
    await B.waitForSelector('#room-list li[data-dm="alice"][data-unread="1"]');
    await shot(B, '03-dm-unread');
    await openRoom(B, 'dm:alice:bob');
    await waitTexts(B, ['psst, bob']);
    await say(B, 'yes?');
    await waitTexts(A, ['psst, bob', 'yes?']);
    await waitTexts(B, ['psst, bob', 'yes?']);
    await B.waitForSelector('#room-list li[data-dm="alice"][data-unread="0"]');
    await shot(A, '04-dm');
  });

  await step('unread count in the room list', async () => {
    // alice is in the DM room; bob writes in the lobby
    await openRoom(B, 'lobby');
    await say(B, 'back in the lobby');
    lobby.push('back in the lobby');
    await waitTexts(B, lobby);
    await A.waitForSelector('#room-list li[data-room="lobby"][data-unread="1"]');
    await openRoom(A, 'lobby');
    await waitTexts(A, lobby);
    await A.waitForSelector('#room-list li[data-room="lobby"][data-unread="0"]');
  });

  await step('HTML is shown as text', async () => {
    const evil = '<img src=x onerror=alert(1)>';
    await say(A, evil);
    lobby.push(evil);
    await waitTexts(B, lobby);
    await waitTexts(A, lobby);
    assert.equal(await B.locator('#messages img').count(), 0);
    await sleep(300);
    assert.deepEqual(dialogs, [], 'no dialog fired');
    await shot(B, '05-lobby-xss');
  });

  // ---- server restart mid-conversation ----------------------------------------
  await step('server restart: SIGTERM, send while down, restart', async () => {
    await say(A, 'just before the restart');
    lobby.push('just before the restart');
    await waitTexts(B, lobby);
    const exit = await server.stop();
    assert.deepEqual(exit, { code: 0, sig: null }, 'server exits 0 on SIGTERM');
    for (const p of [A, B]) await waitFor(p, () => document.querySelector('#status').dataset.state === 'reconnecting');
    await say(A, 'sent while the server is down');
    lobby.push('sent while the server is down');
    await A.waitForSelector('#messages .message.pending');
    await shot(A, '06-reconnecting');
    // Messages the pages cannot see live: posted through the same data dir on
    // another port the pages do not know, before the server is back on theirs.
    const side = new Server(await freePort(), server.dataDir, server.logFile);
    side.env = server.env;
    await side.start();
    await side.api('POST', '/api/rooms/lobby/join', tokC);
    for (const text of ['carol 1 (missed)', 'carol 2 (missed)']) {
      await side.api('POST', '/api/rooms/lobby/messages', tokC, { text });
      lobby.push(text);
    }
    assert.deepEqual(await side.stop(), { code: 0, sig: null });
    await server.start();
    // and one more right as it comes back, racing the pages' reconnects
    await server.api('POST', '/api/rooms/lobby/messages', tokC, { text: 'carol 3 (racing)' });
    lobby.push('carol 3 (racing)');
  }, 20_000);

  await step('pages recover with nothing missing or doubled', async () => {
    for (const p of [A, B]) await waitFor(p, () => document.querySelector('#status').dataset.state === 'online', null, 15_000);
    await say(B, 'after the restart');
    // The queued message and carol's may land in either order; read the truth from the server.
    const truth = await server.api('GET', '/api/rooms/lobby/messages?limit=100', tokA);
    const expectCount = lobby.length + 1;
    let want;
    for (let i = 0; i < 100; i++) {
      const r = await server.api('GET', '/api/rooms/lobby/messages?limit=100', tokA);
      if (r.messages.length >= expectCount) { want = r.messages; break; }
      await sleep(50);
    }
    assert.ok(want, `server history has ${truth.messages.length} messages, expected ${expectCount}`);
    lobby.push('after the restart');
    assert.deepEqual([...want.map((m) => m.text)].sort(), [...lobby].sort(), 'server history holds each message once');
    assert.deepEqual(want.map((m) => m.seq), want.map((_, i) => i + 1));
    const texts = want.map((m) => m.text);
    await waitTexts(A, texts);
    await waitTexts(B, texts);
    for (const p of [A, B]) {
      const got = await shown(p);
      assert.deepEqual(got, want.map((m) => ({ seq: m.seq, from: m.from, text: m.text })));
    }
    // the DM room resumed too
    await openRoom(A, 'dm:alice:bob');
    await waitTexts(A, ['psst, bob', 'yes?']);
    await openRoom(A, 'lobby');
    await waitTexts(A, texts);
    await shot(A, '07-recovered-alice');
    await shot(B, '08-recovered-bob');
  }, 25_000);

  // ---- scroll-back -------------------------------------------------------------
  await step('scroll-back loads older history', async () => {
    await server.api('POST', '/api/rooms/big/join', tokC);
    for (let i = 1; i <= 120; i++) await server.api('POST', '/api/rooms/big/messages', tokC, { text: `m${i}` });
    await A.fill('#join-input', 'big');
    await A.press('#join-input', 'Enter');
    await waitFor(A, () => document.querySelectorAll('#messages .message[data-seq]').length === 50);
    for (let i = 0; i < 10; i++) {
      const n = await A.locator('#messages .message[data-seq]').count();
      if (n === 120) break;
      await A.$eval('#messages', (m) => { m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); });
      await waitFor(A, (k) => document.querySelectorAll('#messages .message[data-seq]').length > k
        || !document.querySelector('#messages .older'), n);
    }
    const seqs = (await shown(A)).map((m) => m.seq);
    assert.deepEqual(seqs, Array.from({ length: 120 }, (_, i) => i + 1));
    await shot(A, '09-scrollback');
  }, 20_000);

  // ---- phone-sized screen ------------------------------------------------------
  await step('phone-sized screen', async () => {
    const P = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    await P.goto(`${server.base}/#token=${tokA}`);
    await waitFor(P, () => document.querySelector('#status').dataset.state === 'online');
    await P.waitForSelector('#messages .message[data-seq]');
    assert.equal(await P.isVisible('#menu-btn'), true, 'menu button on a phone');
    const sidebarBox = await P.locator('#sidebar').boundingBox();
    assert.ok(!sidebarBox || sidebarBox.x + sidebarBox.width <= 1, 'room list collapsed');
    await shot(P, '10-phone');
    await P.click('#menu-btn');
    await sleep(300);
    await shot(P, '11-phone-menu');
    await P.click('#room-list li[data-room="lobby"] button');
    await sleep(300);
    await P.waitForSelector('#room-title:has-text("lobby")');
    await shot(P, '12-phone-lobby');
    await P.context().close();
  });

  await step('presence: bob goes offline', async () => {
    await openRoom(A, 'lobby');
    await A.waitForSelector('#online li[data-user="bob"].online');
    await B.context().close();
    await A.waitForSelector('#online li[data-user="bob"]:not(.online)');
  });

  assert.deepEqual(dialogs, [], 'no dialog fired');
  assert.deepEqual(pageErrors, [], 'no uncaught page errors');
  assert.deepEqual(cspViolations, [], 'no Content-Security-Policy violations');
});

// ---- team chat -------------------------------------------------------------------

const claims = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString('utf8'));
const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** The timeline row (a locator) whose text is exactly `text`. */
const row = (page, text) => page.locator('#messages .message[data-seq]')
  .filter({ has: page.locator('.text', { hasText: new RegExp('^' + escapeRe(text) + '$') }) });
// Shown: laid out (no display:none on it or above) and not visibility:hidden.
const isShown = (s) => { const n = document.querySelector(s); return !!n && n.getClientRects().length > 0 && getComputedStyle(n).visibility !== 'hidden'; };
const visible = (page, sel) => waitFor(page, isShown, sel);
const hidden = (page, sel) => waitFor(page, (s) => {
  const n = document.querySelector(s);
  return !n || n.getClientRects().length === 0 || getComputedStyle(n).visibility === 'hidden';
}, sel);

/** Hovers a message and clicks one of its actions (react, thread, edit, delete). */
async function act(rowLoc, name) {
  await rowLoc.hover();
  await rowLoc.locator(`.actions button[data-act="${name}"]`).click();
}

/** Waits until the message with `text` shows `emoji` with `count` (0: no chip), highlighted or not as `mine`. */
async function waitReaction(page, text, emoji, count, mine) {
  await waitFor(page, ([text, emoji, count, mine]) => {
    const n = [...document.querySelectorAll('#messages .message[data-seq]')].find((m) => m.querySelector('.text').textContent === text);
    const b = n && [...n.querySelectorAll('.reaction[data-emoji]')].find((x) => x.dataset.emoji === emoji);
    if (count === 0) return !!n && !b;
    return !!b && b.querySelector('.n').textContent === String(count) && b.classList.contains('mine') === mine;
  }, [text, emoji, count, mine]);
}

// Desktop notifications, observed: a stand-in Notification that records what
// the page shows, and a `document.hidden` the test can flip.
function notificationStub() {
  window.__notes = [];
  window.__hidden = false;
  class FakeNotification {
    constructor(title, opts) { window.__notes.push({ title, body: opts && opts.body }); }
    close() {}
  }
  FakeNotification.permission = 'granted';
  FakeNotification.requestPermission = () => Promise.resolve('granted');
  window.Notification = FakeNotification;
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get() { return window.__hidden; } });
}

test('web client: reactions, edit, delete, threads, mentions, search, directory, names, token refresh', { timeout: 150_000 }, async (t) => {
  assert.ok(fs.existsSync(BIN), `server binary not found: ${BIN} (set CHINWAG_BIN)`);
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found: ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chinwag-browser-'));
  const server = new Server(await freePort(), path.join(tmp, 'data'), path.join(tmp, 'server.log'));
  console.log(`server log: ${server.logFile}`);
  let browser;
  const dialogs = [], pageErrors = [], cspViolations = [];
  t.after(async () => {
    if (browser) await browser.close().catch(() => {});
    await server.stop().catch(() => {});
  });

  await step('start server', () => server.start());
  // alice's token lives 60 s: the page must refresh it at once (less than 10 minutes left).
  const tokA = server.token('alice', '--name', 'Alice Liddell', '--ttl', '60s');
  const tokB = server.token('bob', '--name', 'Bob Builder');
  const tokC = server.token('carol', '--name', 'Carol Danvers');
  assert.equal(claims(tokA).name, 'Alice Liddell', 'the name claim');
  assert.ok(claims(tokA).exp - Date.now() / 1000 <= 61, 'a 60 s token');

  const general = [];
  await step('rooms, and an old message to find later', async () => {
    await server.api('POST', '/api/rooms/general/join', tokC);
    await server.api('POST', '/api/rooms/archive/join', tokC);
    await server.api('POST', '/api/rooms/archive/messages', tokC, { text: 'the archive starts here' });
    await server.api('POST', '/api/rooms/archive/messages', tokC, { text: 'an old needle in the haystack' });
    for (let i = 3; i <= 70; i++) await server.api('POST', '/api/rooms/archive/messages', tokC, { text: `archive filler ${i}` });
    for (const text of ['Welcome! The guide: https://example.com/guide?x=1, then ask.', 'no needle here, just hay']) {
      await server.api('POST', '/api/rooms/general/messages', tokC, { text });
      general.push(text);
    }
  }, 20_000);

  browser = await step('launch chromium', () => chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }), 60000);
  const newPage = async (opts = {}, init) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });
    if (init) await ctx.addInitScript(init);
    const page = await ctx.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
      if (m.type() === 'error' && /^chinwag:/.test(m.text())) pageErrors.push(m.text());
    });
    return page;
  };
  const online = (p) => waitFor(p, () => document.querySelector('#status').dataset.state === 'online');
  const A = await newPage({}, notificationStub);
  const B = await newPage();
  const bobFrames = [];               // bob's last WebSocket frames, printed if a step about him fails
  B.on('websocket', (ws) => {
    ws.on('framesent', (f) => bobFrames.push('> ' + String(f.payload).slice(0, 160)));
    ws.on('framereceived', (f) => bobFrames.push('< ' + String(f.payload).slice(0, 160)));
  });

  await step('the room directory opens by itself for a user with no rooms', async () => {
    await A.goto(`${server.base}/#token=${tokA}`);
    await online(A);
    await visible(A, '#directory');
    await visible(A, '#directory-hint');
    await A.waitForSelector('#directory-list li[data-room="general"]');
    assert.deepEqual(await A.$$eval('#directory-list li', (ls) => ls.map((l) => l.dataset.room)), ['archive', 'general']);
    assert.match(await A.textContent('#directory-list li[data-room="general"] .dir-meta'), /^1 member · last active /);
    await shot(A, 'team-01-directory');
    await A.click('#directory-list li[data-room="general"] button');
    await hidden(A, '#directory');
    await A.waitForSelector('#room-list li[data-room="general"][aria-current="true"]');
    await waitTexts(A, general);
  });

  await step('links are links, and only http(s)', async () => {
    const a = A.locator('#messages .text a');
    assert.equal(await a.count(), 1);
    assert.equal(await a.getAttribute('href'), 'https://example.com/guide?x=1');
    assert.equal(await a.textContent(), 'https://example.com/guide?x=1');
    assert.equal(await a.getAttribute('rel'), 'noopener noreferrer');
    assert.equal(await a.getAttribute('target'), '_blank');
  });

  let tokA2;
  await step('token refresh: a short-lived token is replaced and stored', async () => {
    await waitFor(A, (old) => { const v = localStorage.getItem('chinwag.token'); return !!v && v !== old; }, tokA);
    tokA2 = await A.evaluate(() => localStorage.getItem('chinwag.token'));
    const c1 = claims(tokA), c2 = claims(tokA2);
    assert.equal(c2.sub, 'alice');
    assert.equal(c2.name, 'Alice Liddell');
    assert.ok(c2.exp >= c1.exp, 'the new token expires no earlier');
    assert.ok(c2.jti && c2.jti !== c1.jti, 'a new jti');
    // The server takes the new token.
    const dirList = await server.api('GET', '/api/rooms?limit=10', tokA2);
    assert.ok(dirList.rooms.some((r) => r.room === 'general'));
  });

  await step('bob: the directory filters by prefix; display names show', async () => {
    await B.goto(`${server.base}/#token=${tokB}`);
    await online(B);
    await visible(B, '#directory');
    await B.waitForSelector('#directory-list li[data-room="archive"]');
    await B.fill('#directory-filter', 'gen');
    await waitFor(B, () => JSON.stringify([...document.querySelectorAll('#directory-list li')].map((l) => l.dataset.room)) === '["general"]');
    await B.click('#directory-list li[data-room="general"] button');
    await B.waitForSelector('#room-list li[data-room="general"][aria-current="true"]');
    await waitTexts(B, general);
    // names instead of ids, the id on hover
    await waitFor(A, () => document.querySelector('#online li[data-user="bob"] .uname')?.textContent === 'Bob Builder');
    assert.equal(await A.getAttribute('#online li[data-user="bob"] .uname', 'title'), 'bob');
    await waitFor(B, () => document.querySelector('#online li[data-user="alice"] .uname')?.textContent === 'Alice Liddell');
    assert.match(await B.textContent('#me-name'), /Bob Builder/);
    await say(B, 'hello team');
    general.push('hello team');
    await waitTexts(A, general);
    const from = row(A, 'hello team').locator('.from');
    assert.equal(await from.textContent(), 'Bob Builder');
    assert.equal(await from.getAttribute('title'), 'bob');
    assert.equal(await row(A, general[0]).locator('.from').textContent(), 'Carol Danvers');
  });

  await step('react: picker, counts, own highlighted, toggle, who reacted, recently used', async () => {
    await act(row(A, 'hello team'), 'react');
    await visible(A, '#emoji-picker');
    await shot(A, 'team-02-emoji-picker');
    await A.click('#emoji-common button[data-emoji="🎉"]');
    await hidden(A, '#emoji-picker');
    await waitReaction(A, 'hello team', '🎉', 1, true);
    await waitReaction(B, 'hello team', '🎉', 1, false);
    assert.match(await row(B, 'hello team').locator('.reaction[data-emoji="🎉"]').getAttribute('title'), /Alice Liddell/);
    await row(B, 'hello team').locator('.reaction[data-emoji="🎉"]').click();
    await waitReaction(B, 'hello team', '🎉', 2, true);
    await waitReaction(A, 'hello team', '🎉', 2, true);
    assert.match(await row(A, 'hello team').locator('.reaction[data-emoji="🎉"]').getAttribute('title'), /you, Bob Builder/);
    await row(B, 'hello team').locator('.reaction[data-emoji="🎉"]').click();
    await waitReaction(B, 'hello team', '🎉', 1, false);
    await waitReaction(A, 'hello team', '🎉', 1, true);
    assert.deepEqual(JSON.parse(await A.evaluate(() => localStorage.getItem('chinwag.emoji.recent'))), ['🎉']);
    await act(row(A, 'hello team'), 'react');
    await visible(A, '#emoji-recent button[data-emoji="🎉"]');
    await A.click('#emoji-common button[data-emoji="👍"]');
    await waitReaction(B, 'hello team', '👍', 1, false);
    assert.deepEqual(await row(B, 'hello team').locator('.reaction[data-emoji]').evaluateAll((bs) => bs.map((b) => b.dataset.emoji)), ['🎉', '👍']);
  });

  await step('edit your own message', async () => {
    await say(A, 'this has a tpyo');
    await row(B, 'this has a tpyo').waitFor();
    assert.equal(await row(B, 'this has a tpyo').locator('.actions [data-act="edit"]').count(), 0, 'no edit on others\' messages');
    await act(row(A, 'this has a tpyo'), 'edit');
    await A.fill('#messages .message.editing .edit-input', 'this has no typo');
    await shot(A, 'team-03-editing');
    await A.press('#messages .message.editing .edit-input', 'Enter');
    general.push('this has no typo');
    for (const p of [A, B]) {
      await row(p, 'this has no typo').locator('.edited').waitFor();
      assert.equal(await row(p, 'this has a tpyo').count(), 0);
    }
    assert.equal(await row(B, 'this has no typo').locator('.edited').textContent(), '(edited)');
  });

  await step('delete your own message, after an in-page confirmation', async () => {
    await say(A, 'oops, wrong room');
    await row(B, 'oops, wrong room').waitFor();
    const seq = await row(A, 'oops, wrong room').getAttribute('data-seq');
    await act(row(A, 'oops, wrong room'), 'delete');
    await visible(A, '#confirm');
    assert.equal(await A.textContent('#confirm-text'), 'oops, wrong room');
    await shot(A, 'team-04-delete-confirm');
    await A.click('#confirm-cancel');
    await hidden(A, '#confirm');
    assert.equal(await row(A, 'oops, wrong room').count(), 1, 'cancel keeps it');
    await act(row(A, 'oops, wrong room'), 'delete');
    await visible(A, '#confirm');
    await A.click('#confirm-ok');
    for (const p of [A, B]) {
      await waitFor(p, (s) => document.querySelector(`#messages .message[data-seq="${s}"].deleted .text`)?.textContent === 'message deleted', seq);
      assert.equal(await row(p, 'oops, wrong room').count(), 0);
    }
    general.push('message deleted');
  });

  await step('thread: reply beside the room, count and last reply under the root', async () => {
    await act(row(B, 'this has no typo'), 'thread');
    await visible(B, '#thread');
    assert.equal(await B.textContent('#thread-root .text'), 'this has no typo');
    await B.fill('#thread-composer', 'a reply in the thread');
    await B.press('#thread-composer', 'Enter');
    await B.waitForSelector('#thread-list .message[data-seq] .text:text-is("a reply in the thread")');
    await waitFor(A, () => {
      const n = [...document.querySelectorAll('#messages .message[data-seq]')].find((m) => m.querySelector('.text').textContent === 'this has no typo');
      const s = n && n.querySelector('.thread-summary');
      return !!s && s.querySelector('.count').textContent === '1 reply' && /^Last reply /.test(s.querySelector('.last').textContent);
    });
    // replies live in the thread, not in the room's timeline
    await waitTexts(A, general);
    await row(A, 'this has no typo').locator('.thread-summary').click();
    await visible(A, '#thread');
    await A.waitForSelector('#thread-list .message[data-seq] .text:text-is("a reply in the thread")');
    await A.fill('#thread-composer', 'thanks, fixed now');
    await A.press('#thread-composer', 'Enter');
    await B.waitForSelector('#thread-list .message[data-seq] .text:text-is("thanks, fixed now")');
    assert.equal(await B.textContent('#thread-count'), '2 replies');
    await waitFor(B, () => {
      const n = [...document.querySelectorAll('#messages .message[data-seq]')].find((m) => m.querySelector('.text').textContent === 'this has no typo');
      return n?.querySelector('.thread-summary .count')?.textContent === '2 replies';
    });
    await waitTexts(B, general);
    await shot(A, 'team-05-thread');
    await B.click('#thread-close');
    await hidden(B, '#thread');
  });

  await step('the directory from the sidebar: join another room', async () => {
    await B.click('#browse-btn');
    await visible(B, '#directory');
    assert.equal(await B.isVisible('#directory-hint'), false, 'no "no rooms" hint for a member');
    await B.fill('#directory-filter', '');
    await B.waitForSelector('#directory-list li[data-room="archive"]');
    await waitFor(B, () => document.querySelector('#directory-list li[data-room="general"] button')?.textContent === 'Open');
    assert.match(await B.textContent('#directory-list li[data-room="general"] .dir-meta'), /^3 members/);
    await B.click('#directory-list li[data-room="archive"] button');
    await hidden(B, '#directory');
    await B.waitForSelector('#room-list li[data-room="archive"][aria-current="true"]');
    await waitFor(B, () => document.querySelectorAll('#messages .message[data-seq]').length > 0);
  });

  const mentionText = '@bob can you check the deploy?';
  await step('@mention: autocomplete, badge and highlight on the other side', async () => {
    await A.click('#composer');
    await A.keyboard.type('@bo');
    await visible(A, '#mention-menu li[data-user="bob"]');
    assert.match(await A.textContent('#mention-menu li[data-user="bob"]'), /Bob Builder/);
    assert.equal(await A.locator('#mention-menu li[data-user="alice"]').count(), 0, 'not yourself');
    await shot(A, 'team-06-mention-autocomplete');
    await A.keyboard.press('Enter');
    assert.equal(await A.inputValue('#composer'), '@bob ', 'Enter picks the name');
    await A.keyboard.type('can you check the deploy?');
    await A.keyboard.press('Enter');
    general.push(mentionText);
    await waitTexts(A, general);
    await row(A, mentionText).locator('.mention[data-user="bob"]').waitFor();
    assert.equal(await row(A, mentionText).locator('.mention[data-user="bob"]').textContent(), '@bob');
    assert.equal(await row(A, mentionText).evaluate((n) => n.classList.contains('mentions-me')), false);
    // bob is in another room: a mention badge on general
    await B.waitForSelector('#room-list li[data-room="general"][data-mentions="1"] .mention-badge');
    assert.equal(await B.textContent('#room-list li[data-room="general"] .mention-badge'), '@1');
    await shot(B, 'team-07-mention-badge');
    await openRoom(B, 'general');
    await waitTexts(B, general);
    const mine = row(B, mentionText);
    assert.equal(await mine.evaluate((n) => n.classList.contains('mentions-me')), true, 'highlighted for bob');
    assert.equal(await mine.locator('.mention.me').textContent(), '@bob');
    await B.waitForSelector('#room-list li[data-room="general"][data-mentions="0"]');
    // the "new messages" line sits above the mention bob had not read
    await waitFor(B, () => {
      const d = document.querySelector('#messages .new-divider');
      let n = d && d.nextElementSibling;
      while (n && !n.matches('.message[data-seq]')) n = n.nextElementSibling;
      return !!n && n.querySelector('.text').textContent === '@bob can you check the deploy?';
    });
    await shot(B, 'team-08-mentioned');
  });

  await step('desktop notifications for mentions and DMs while the tab is hidden', async () => {
    await A.evaluate(() => { window.__hidden = true; });
    await say(B, '@alice the deploy looks fine');
    general.push('@alice the deploy looks fine');
    await waitFor(A, () => window.__notes.some((n) => n.title === 'Bob Builder mentioned you in #general' && n.body === '@alice the deploy looks fine'));
    await B.click('#online li[data-user="alice"] button');
    await B.waitForSelector('#room-title:has-text("Alice Liddell")');
    await say(B, 'a private word');
    await waitFor(A, () => window.__notes.some((n) => n.title === 'Bob Builder (direct message)' && n.body === 'a private word'));
    assert.equal(await A.evaluate(() => window.__notes.length), 2, 'nothing else notified');
    await A.evaluate(() => { window.__hidden = false; });
    await A.waitForSelector('#room-list li[data-dm="bob"][data-unread="1"]');
    assert.equal(await A.textContent('#room-list li[data-dm="bob"] .name'), 'Bob Builder');
    await openRoom(B, 'general');
  });

  await step('search: results by room, words highlighted, a click jumps to an old message', async () => {
    await openRoom(B, 'archive');
    await waitFor(B, () => document.querySelectorAll('#messages .message[data-seq]').length >= 50);
    assert.equal(await B.locator('#messages .message[data-seq="2"]').count(), 0, 'not loaded yet');
    for (let i = 0; i < 10; i++) {
      await B.fill('#search-input', 'NEEDL');
      await B.press('#search-input', 'Enter');
      await waitFor(B, () => !/Searching/.test(document.querySelector('#search-results').textContent));
      if (await B.locator('#search-results .search-group[data-room="archive"] .search-hit').count()) break;
      await sleep(300); // the index may trail a write by up to 2 s
    }
    await visible(B, '#search-panel');
    assert.deepEqual(await B.$$eval('#search-results .search-group', (gs) => gs.map((g) => g.dataset.room)), ['general', 'archive']);
    assert.deepEqual(await B.$$eval('#search-results mark', (ms) => ms.map((m) => m.textContent)), ['needle', 'needle']);
    await shot(B, 'team-09-search');
    await B.click('#search-results .search-group[data-room="archive"] .search-hit');
    try {
      await B.waitForSelector('#messages .message[data-seq="2"].flash');
    } catch (e) {
      const seqs = await B.$$eval('#messages .message[data-seq]', (ns) => ns.map((n) => Number(n.dataset.seq)));
      throw new Error(`${e.message}\nshown seqs ${JSON.stringify(seqs)}\nlast frames:\n${bobFrames.slice(-10).join('\n')}`);
    }
    assert.equal(await B.textContent('#messages .message[data-seq="2"] .text'), 'an old needle in the haystack');
    const inView = await B.$eval('#messages', (box) => {
      const n = box.querySelector('.message[data-seq="2"]');
      const a = box.getBoundingClientRect(), b = n.getBoundingClientRect();
      return b.top >= a.top && b.bottom <= a.bottom;
    });
    assert.ok(inView, 'the message is scrolled into view');
    await shot(B, 'team-10-search-jump');
    // and back to the latest messages
    await B.click('#search-close');
    // (a DOM click: scrolling down to the button would load the newer messages by itself)
    await B.$eval('#messages .newer', (b) => b.click());
    await waitFor(B, () => {
      const t = [...document.querySelectorAll('#messages .message[data-seq] .text')].map((n) => n.textContent);
      return t[t.length - 1] === 'archive filler 70' && !document.querySelector('#messages .newer');
    });
  }, 20_000); // search, two screenshots and two history round trips: room to spare on a busy machine

  await step('phone: thread full screen, actions by tap, search, directory', async () => {
    const P = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    await P.goto(`${server.base}/#token=${tokC}`);
    await online(P);
    await P.click('#menu-btn');
    await P.click('#room-list li[data-room="general"] button');
    await P.waitForSelector('#room-title:has-text("general")');
    await row(P, mentionText).waitFor();
    await hidden(P, '#sidebar');
    await shot(P, 'team-11-phone-room');
    await row(P, 'hello team').locator('.text').tap();
    await visible(P, '#messages .message.active .actions');
    await row(P, 'hello team').locator('.actions [data-act="react"]').tap();
    await visible(P, '#emoji-picker');
    await shot(P, 'team-12-phone-picker');
    await P.tap('#emoji-common button[data-emoji="❤️"]');
    await waitReaction(A, 'hello team', '❤️', 1, false);
    await row(P, 'this has no typo').locator('.thread-summary').tap();
    await visible(P, '#thread');
    const box = await P.locator('#thread').boundingBox();
    assert.ok(box.x <= 0 && box.width >= 389, `the thread covers the screen: ${JSON.stringify(box)}`);
    await P.waitForSelector('#thread-list .message[data-seq] .text:text-is("thanks, fixed now")');
    await shot(P, 'team-13-phone-thread');
    await P.tap('#thread-close');
    await P.fill('#search-input', 'deploy');
    await P.press('#search-input', 'Enter');
    await P.waitForSelector('#search-results .search-hit');
    await shot(P, 'team-14-phone-search');
    await P.tap('#search-close');
    await P.click('#menu-btn');
    await P.click('#browse-btn');
    await visible(P, '#directory');
    await P.waitForSelector('#directory-list li[data-room="general"]');
    await shot(P, 'team-15-phone-directory');
    await P.tap('#directory-close');
    await P.context().close();
  }, 20_000);

  await step('missed edits, deletes and mentions apply on resume (server restart)', async () => {
    await openRoom(B, 'general');
    await waitTexts(B, general);
    await openRoom(B, 'archive');      // bob is elsewhere: the mention below counts in his hello
    await B.waitForSelector('#room-list li[data-room="general"][data-mentions="0"][data-unread="0"]');
    assert.deepEqual(await server.stop(), { code: 0, sig: null });
    for (const p of [A, B]) await waitFor(p, () => document.querySelector('#status').dataset.state === 'reconnecting');
    // Changes the pages cannot see live: made through the same data dir on another port.
    const side = new Server(await freePort(), server.dataDir, server.logFile);
    side.env = server.env;
    await side.start();
    const hist = await side.api('GET', '/api/rooms/general/messages?limit=100', tokC);
    const seqOf = (text) => hist.messages.find((m) => m.type !== 'edit' && m.text === text).seq;
    await side.api('PATCH', `/api/rooms/general/messages/${seqOf('no needle here, just hay')}`, tokC, { text: 'no needle here, only hay' });
    await side.api('DELETE', `/api/rooms/general/messages/${seqOf(general[0])}`, tokC);
    await side.api('POST', '/api/rooms/general/messages', tokC, { text: '@bob ping while you were away' });
    assert.deepEqual(await side.stop(), { code: 0, sig: null });
    await server.start();
    general[0] = 'message deleted';
    general[1] = 'no needle here, only hay';
    general.push('@bob ping while you were away');
    await waitFor(B, () => document.querySelector('#status').dataset.state === 'online', null, 15_000);
    await B.waitForSelector('#room-list li[data-room="general"][data-mentions="1"][data-unread="1"] .mention-badge');
    await openRoom(B, 'general');
    await B.waitForSelector('#room-list li[data-room="general"][data-mentions="0"]');
    for (const p of [A, B]) {
      await waitFor(p, () => document.querySelector('#status').dataset.state === 'online', null, 15_000);
      await waitTexts(p, general, 15_000);
      await row(p, 'no needle here, only hay').locator('.edited').waitFor();
    }
  }, 40_000);

  await step('reload: the stored, refreshed token signs in', async () => {
    const stored = await A.evaluate(() => localStorage.getItem('chinwag.token'));
    assert.notEqual(stored, tokA);
    await A.reload();
    await online(A);
    assert.match(await A.textContent('#me-name'), /Alice Liddell/);
    await A.waitForSelector('#room-list li[data-room="general"]');
  });

  assert.deepEqual(dialogs, [], 'no dialog fired');
  assert.deepEqual(pageErrors, [], 'no uncaught page errors');
  assert.deepEqual(cspViolations, [], 'no Content-Security-Policy violations');
});
