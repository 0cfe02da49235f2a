// End-to-end test of the embedded web client: the real server binary, two
// users in two headless Chromium contexts, a server restart mid-conversation.
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
  }
  async start() {
    const log = fs.openSync(this.logFile, 'a');
    this.proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir,
      '--rate', '1000', '--burst', '1000'], { env: this.env, stdio: ['ignore', log, log] });
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
  token(user) {
    return execFileSync(BIN, ['token', user, '--data-dir', this.dataDir], { env: this.env, encoding: 'utf8' }).trim();
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
  await step('sign in by token link', async () => {
    await A.goto(`${server.base}/#token=${tokA}`);
    await B.goto(`${server.base}/#token=${tokB}`);
    for (const [p, tok] of [[A, tokA], [B, tokB]]) {
      await waitFor(p, () => document.querySelector('#status').dataset.state === 'online');
      assert.equal(new URL(p.url()).hash, '', 'token removed from the URL');
      assert.equal(await p.evaluate(() => localStorage.getItem('chinwag.token')), tok);
    }
    assert.match(await A.textContent('#me'), /alice/);
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
