import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encode, decode } from '../msgpack.js';

const hex = (b) => Buffer.from(b).toString('hex');

test('msgpack: known encodings', () => {
  const cases = [
    [null, 'c0'], [false, 'c2'], [true, 'c3'],
    [0, '00'], [127, '7f'], [128, 'cc80'], [255, 'ccff'], [256, 'cd0100'], [65535, 'cdffff'],
    [65536, 'ce00010000'], [4294967295, 'ceffffffff'], [4294967296, 'cf0000000100000000'],
    [2 ** 53 - 1, 'cf001fffffffffffff'],
    [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'], [-128, 'd080'], [-129, 'd1ff7f'], [-32768, 'd18000'],
    [-32769, 'd2ffff7fff'], [-(2 ** 31), 'd280000000'], [-(2 ** 31) - 1, 'd3ffffffff7fffffff'],
    [1.5, 'cb3ff8000000000000'], [-0, 'cb8000000000000000'],
    ['', 'a0'], ['a', 'a161'], ['é', 'a2c3a9'], ['x'.repeat(32), 'd920' + '78'.repeat(32)],
    [[], '90'], [[1, 2], '920102'], [{}, '80'], [{ a: 1 }, '81a16101'],
    [new Uint8Array([1, 2, 3]), 'c403010203'],
  ];
  for (const [v, h] of cases) {
    assert.equal(hex(encode(v)), h, `encode ${JSON.stringify(v)}`);
    const back = decode(Buffer.from(h, 'hex'));
    if (v instanceof Uint8Array) assert.deepEqual([...back], [...v]);
    else assert.deepEqual(back, v, `decode ${h}`);
  }
});

test('msgpack: round trips of frames, long strings, arrays and maps', () => {
  const frame = {
    type: 'hello', user: 'alice', name: 'Ålice 😀', server_time: 1732250000000, node: 'n1',
    rooms: Array.from({ length: 20 }, (_, i) => ({ room: `r${i}`, seq: i * 1000, read: i, unread: 0, mentions: 0 })),
    limits: { max_text: 4000, max_frame: 65536, rate: 20, burst: 40 },
    text: 'y'.repeat(70000), neg: -123456789012, f: 0.1, nested: { a: [true, false, null, { b: 'c' }] },
  };
  assert.deepEqual(decode(encode(frame)), frame);
  const big = Array.from({ length: 70000 }, (_, i) => i);
  assert.deepEqual(decode(encode(big)), big);
  const m = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, i]));
  assert.deepEqual(decode(encode(m)), m);
  // undefined fields are left out, like JSON.stringify
  assert.deepEqual(decode(encode({ a: 1, b: undefined })), { a: 1 });
  // a float 32 from another encoder
  assert.equal(decode(Buffer.from('ca3fc00000', 'hex')), 1.5);
  // bin 16
  const bin = new Uint8Array(300).fill(7);
  assert.deepEqual([...decode(encode(bin))], [...bin]);
});

test('msgpack: refuses truncated, trailing and unknown data', () => {
  assert.throws(() => decode(Buffer.from('cd01', 'hex')), /end of data/);
  assert.throws(() => decode(Buffer.from('0000', 'hex')), /trailing/);
  assert.throws(() => decode(Buffer.from('c1', 'hex')), /unsupported/);
  assert.throws(() => decode(Buffer.from('dd7fffffff', 'hex')), /end of data/);
  assert.throws(() => encode(() => 1), /cannot encode/);
});
