// The real chinwag server for the tests: start it on a free port with a temp
// data dir and a secret of ours (CHINWAG_SECRET), stop it with SIGTERM, start
// it again on the same port and data dir; tokens are HS256 JWTs signed here.
//
//   CHINWAG_BIN     server binary (default: <repo>/target/debug/chinwag)
//   CHINWAG_SECRET  the secret (>= 32 bytes) given to the server (default: random)

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..', '..');
export const BIN = process.env.CHINWAG_BIN || path.join(REPO, 'target', 'debug', 'chinwag');
const SECRET = process.env.CHINWAG_SECRET || crypto.randomBytes(32).toString('hex');
if (Buffer.byteLength(SECRET) < 32) throw new Error('CHINWAG_SECRET must be at least 32 bytes');

if (typeof globalThis.WebSocket !== 'function') {
  throw new Error('no global WebSocket: use Node >= 22, or Node 20 with --experimental-websocket (clients/js/test.sh does that)');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Resolves with fn()'s value once it is truthy; fails with `what` after ms. */
export async function until(what, fn, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Races p against a deadline, failing with `what`. */
export function within(what, p, ms = 10_000) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

export class Server {
  constructor(port, { args = [] } = {}) {
    this.port = port;
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chinwag-js-'));
    this.logFile = path.join(this.dataDir, '..', `${path.basename(this.dataDir)}.log`);
    this.args = args;
    this.env = { ...process.env, CHINWAG_SECRET: SECRET, RUST_LOG: process.env.RUST_LOG || 'warn' };
    this.proc = null;
    this.base = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/ws`;
  }

  static async start(opts) {
    const s = new Server(await freePort(), opts);
    await s.start();
    return s;
  }

  async start() {
    if (!fs.existsSync(BIN)) throw new Error(`no server binary at ${BIN}: run cargo build, or set CHINWAG_BIN`);
    const log = fs.openSync(this.logFile, 'a');
    this.proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, ...this.args],
      { env: this.env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    const proc = this.proc;
    let exited = null;
    proc.once('exit', (code, sig) => { exited = { code, sig }; });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (exited) throw new Error(`server exited at start (${JSON.stringify(exited)}); log: ${this.logFile}`);
      try {
        const r = await fetch(`${this.base}/health`);
        if (r.status === 200) return;
      } catch (_) { /* not up yet */ }
      await sleep(30);
    }
    throw new Error(`server not healthy within 10 s; log: ${this.logFile}`);
  }

  /** SIGTERM; resolves with {code, sig}. */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return null;
    const done = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
    proc.kill('SIGTERM');
    let timer;
    const res = await Promise.race([done, new Promise((r) => { timer = setTimeout(() => r(null), 7000); })]);
    clearTimeout(timer);
    if (!res) { proc.kill('SIGKILL'); await done; throw new Error('server did not exit within 7 s of SIGTERM'); }
    this.proc = null;
    return res;
  }

  async destroy() {
    await this.stop().catch(() => {});
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** An HS256 token; claims override (exp, iat, name, admin...). */
  token(user, claims = {}) {
    const now = Math.floor(Date.now() / 1000);
    const c = { sub: user, iat: now, exp: now + 3600, jti: crypto.randomBytes(8).toString('hex'), ...claims };
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(c)}`;
    return `${body}.${crypto.createHmac('sha256', Buffer.from(SECRET)).update(body).digest('base64url')}`;
  }

  /** An HTTP API call with a bearer token: [status, parsed body]. */
  async api(method, p, token, body) {
    const r = await fetch(this.base + p, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    return [r.status, text ? JSON.parse(text) : null];
  }
}
