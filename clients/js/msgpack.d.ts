// Type declarations for chinwag-client/msgpack.

/**
 * MessagePack bytes of a value: objects and Maps as maps (undefined values
 * left out), arrays, strings, safe integers in the shortest int format, other
 * numbers as float 64, booleans, null/undefined as nil, bigints as int 64,
 * Uint8Array/ArrayBuffer/typed arrays as bin.
 */
export declare function encode(value: unknown): Uint8Array;

/**
 * The value of MessagePack bytes (all of them): maps as plain objects, bin as
 * Uint8Array, integers as numbers (exact up to 2^53). Ext types are refused.
 */
export declare function decode(bytes: Uint8Array | ArrayBuffer | ArrayBufferView): unknown;
