// A small MessagePack encoder and decoder (https://msgpack.org/), enough for
// the chinwag wire protocol: maps, arrays, strings, integers (exact up to
// 2^53), floats, booleans, nil and bin. No dependencies; browsers and Node.

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Encodes a value as MessagePack.
 * Objects become maps (keys in insertion order; `undefined` values are left
 * out, like JSON.stringify), `Map`s become maps, arrays become arrays,
 * `Uint8Array`/`ArrayBuffer`/other typed arrays become bin, safe integers
 * become the shortest int format, other numbers float 64, `null`/`undefined`
 * nil, bigints int 64/uint 64.
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function encode(value) {
  const w = new Writer();
  w.write(value, 0);
  return w.result();
}

/**
 * Decodes one MessagePack value that fills the whole buffer.
 * Integers beyond 2^53 come back as (rounded) numbers; bin as Uint8Array;
 * maps as plain objects (keys converted to strings); ext types are refused.
 * @param {Uint8Array | ArrayBuffer | ArrayBufferView} bytes
 * @returns {unknown}
 */
export function decode(bytes) {
  const r = new Reader(toBytes(bytes));
  const v = r.read(0);
  if (r.pos !== r.buf.length) throw new RangeError(`msgpack: ${r.buf.length - r.pos} trailing bytes`);
  return v;
}

const MAX_DEPTH = 512;

function toBytes(b) {
  if (b instanceof Uint8Array) return b;
  if (b instanceof ArrayBuffer) return new Uint8Array(b);
  if (ArrayBuffer.isView(b)) return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  throw new TypeError('msgpack: expected bytes');
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  result() {
    return this.buf.slice(0, this.pos);
  }

  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v) { this.ensure(1); this.buf[this.pos++] = v; }
  u16(v) { this.ensure(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.ensure(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  bytes(b) { this.ensure(b.length); this.buf.set(b, this.pos); this.pos += b.length; }

  write(v, depth) {
    if (depth > MAX_DEPTH) throw new RangeError('msgpack: value nested too deeply');
    if (v === null || v === undefined) return this.u8(0xc0);
    switch (typeof v) {
      case 'boolean': return this.u8(v ? 0xc3 : 0xc2);
      case 'number': return this.number(v);
      case 'bigint': return this.bigint(v);
      case 'string': return this.string(v);
      case 'object': break;
      default: throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
    }
    if (Array.isArray(v)) {
      this.header(v.length, 0x90, 0xdc, 0xdd);
      for (const x of v) this.write(x, depth + 1);
      return undefined;
    }
    if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return this.bin(toBytes(v));
    if (v instanceof Map) {
      this.header(v.size, 0x80, 0xde, 0xdf);
      for (const [k, x] of v) { this.write(k, depth + 1); this.write(x, depth + 1); }
      return undefined;
    }
    if (typeof v.toJSON === 'function') return this.write(v.toJSON(), depth + 1);
    const keys = Object.keys(v).filter((k) => v[k] !== undefined && typeof v[k] !== 'function');
    this.header(keys.length, 0x80, 0xde, 0xdf);
    for (const k of keys) { this.string(k); this.write(v[k], depth + 1); }
    return undefined;
  }

  /** fix (up to 15), 16-bit or 32-bit length header for arrays and maps. */
  header(n, fix, h16, h32) {
    if (n < 16) this.u8(fix | n);
    else if (n < 0x10000) { this.u8(h16); this.u16(n); }
    else { this.u8(h32); this.u32(n); }
  }

  number(v) {
    if (!Number.isSafeInteger(v) || Object.is(v, -0)) {
      this.u8(0xcb); this.ensure(8); this.view.setFloat64(this.pos, v); this.pos += 8;
      return;
    }
    if (v >= 0) {
      if (v < 0x80) this.u8(v);
      else if (v < 0x100) { this.u8(0xcc); this.u8(v); }
      else if (v < 0x10000) { this.u8(0xcd); this.u16(v); }
      else if (v < 0x100000000) { this.u8(0xce); this.u32(v); }
      else { this.u8(0xcf); this.u32(Math.floor(v / 0x100000000)); this.u32(v >>> 0); }
    } else if (v >= -32) this.u8(v & 0xff);
    else if (v >= -0x80) { this.u8(0xd0); this.ensure(1); this.view.setInt8(this.pos++, v); }
    else if (v >= -0x8000) { this.u8(0xd1); this.ensure(2); this.view.setInt16(this.pos, v); this.pos += 2; }
    else if (v >= -0x80000000) { this.u8(0xd2); this.ensure(4); this.view.setInt32(this.pos, v); this.pos += 4; }
    else { this.u8(0xd3); this.ensure(8); this.view.setBigInt64(this.pos, BigInt(v)); this.pos += 8; }
  }

  bigint(v) {
    this.ensure(9);
    if (v >= 0n) {
      if (v >= 1n << 64n) throw new RangeError('msgpack: integer too large');
      if (v <= BigInt(Number.MAX_SAFE_INTEGER)) return this.number(Number(v));
      this.u8(0xcf); this.view.setBigUint64(this.pos, v); this.pos += 8;
    } else {
      if (v < -(1n << 63n)) throw new RangeError('msgpack: integer too small');
      if (v >= BigInt(Number.MIN_SAFE_INTEGER)) return this.number(Number(v));
      this.u8(0xd3); this.view.setBigInt64(this.pos, v); this.pos += 8;
    }
    return undefined;
  }

  string(s) {
    const b = utf8Encoder.encode(s);
    const n = b.length;
    if (n < 32) this.u8(0xa0 | n);
    else if (n < 0x100) { this.u8(0xd9); this.u8(n); }
    else if (n < 0x10000) { this.u8(0xda); this.u16(n); }
    else { this.u8(0xdb); this.u32(n); }
    this.bytes(b);
  }

  bin(b) {
    const n = b.length;
    if (n < 0x100) { this.u8(0xc4); this.u8(n); }
    else if (n < 0x10000) { this.u8(0xc5); this.u16(n); }
    else { this.u8(0xc6); this.u32(n); }
    this.bytes(b);
  }
}

class Reader {
  constructor(buf) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.buf.length) throw new RangeError('msgpack: unexpected end of data');
  }

  u8() { this.need(1); return this.buf[this.pos++]; }
  u16() { this.need(2); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }

  read(depth) {
    if (depth > MAX_DEPTH) throw new RangeError('msgpack: value nested too deeply');
    const t = this.u8();
    if (t < 0x80) return t;
    if (t < 0x90) return this.map(t & 0x0f, depth);
    if (t < 0xa0) return this.array(t & 0x0f, depth);
    if (t < 0xc0) return this.str(t & 0x1f);
    if (t >= 0xe0) return t - 0x100;
    const v = this.view;
    let x;
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.u8());
      case 0xc5: return this.bin(this.u16());
      case 0xc6: return this.bin(this.u32());
      case 0xca: this.need(4); x = v.getFloat32(this.pos); this.pos += 4; return x;
      case 0xcb: this.need(8); x = v.getFloat64(this.pos); this.pos += 8; return x;
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: { const hi = this.u32(); const lo = this.u32(); return hi * 0x100000000 + lo; }
      case 0xd0: this.need(1); x = v.getInt8(this.pos); this.pos += 1; return x;
      case 0xd1: this.need(2); x = v.getInt16(this.pos); this.pos += 2; return x;
      case 0xd2: this.need(4); x = v.getInt32(this.pos); this.pos += 4; return x;
      case 0xd3: { this.need(8); const hi = v.getInt32(this.pos); const lo = v.getUint32(this.pos + 4); this.pos += 8; return hi * 0x100000000 + lo; }
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      default: throw new RangeError(`msgpack: unsupported type byte 0x${t.toString(16)}`);
    }
  }

  str(n) {
    this.need(n);
    const s = utf8Decoder.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }

  bin(n) {
    this.need(n);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  array(n, depth) {
    // Every element takes at least one byte: refuse lengths the data cannot hold.
    this.need(n);
    const a = new Array(n);
    for (let i = 0; i < n; i++) a[i] = this.read(depth + 1);
    return a;
  }

  map(n, depth) {
    this.need(n * 2);
    const o = {};
    for (let i = 0; i < n; i++) {
      const k = this.read(depth + 1);
      const key = typeof k === 'string' ? k : String(k);
      const val = this.read(depth + 1);
      if (key === '__proto__') Object.defineProperty(o, key, { value: val, enumerable: true, writable: true, configurable: true });
      else o[key] = val;
    }
    return o;
  }
}
