// index.d.ts stays in sync with index.js: the same exports, every server
// frame type declared and listed as an event. (A full compile check:
// support/types-check.ts, with TypeScript.)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import * as lib from '../index.js';

const dts = fs.readFileSync(new URL('../index.d.ts', import.meta.url), 'utf8');

test('index.d.ts declares what index.js exports', () => {
  const declared = new Set(['default', 'encodeMsgpack', 'decodeMsgpack']);
  for (const m of dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)) declared.add(m[1]);
  assert.deepEqual([...declared].sort(), Object.keys(lib).sort());
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  assert.equal(lib.VERSION, pkg.version);
  assert.match(dts, new RegExp(`VERSION: '${pkg.version}'`));
});

test('index.d.ts has every server frame of revision 2, as a frame and as an event', () => {
  const union = dts.match(/export type ServerFrame =([^;]+);/)[1].split('|').map((s) => s.trim()).filter(Boolean);
  const types = union.map((name) => {
    const body = dts.match(new RegExp(`export interface ${name} (?:extends \\w+ )?\\{([\\s\\S]*?)\\n\\}`))[1];
    return body.match(/^\s+type: '(\w+)';/m)[1];
  });
  assert.deepEqual([...types].sort(), [...lib.SERVER_FRAME_TYPES].sort());
  const events = dts.match(/export interface ClientEventMap \{([\s\S]*?)\n\}/)[1];
  for (const t of lib.SERVER_FRAME_TYPES) assert.match(events, new RegExp(`^\\s+${t}: `, 'm'), t);
  for (const t of ['open', 'close', 'reconnecting', 'auth_error', 'frame']) assert.match(events, new RegExp(`^\\s+${t}: `, 'm'), t);
});
