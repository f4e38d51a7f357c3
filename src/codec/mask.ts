/**
 * RFC 6455 §5.3 masking, the TypeScript twin of native/mask.cc.
 *
 * Short runs are XORed byte by byte (creating typed-array views costs more than it saves
 * below WORD_LOOP_MIN_BYTES). Longer runs are XORed four bytes at a time through an
 * Int32Array over the whole ArrayBuffer (Int32, not Uint32, so every element stays a small
 * integer for V8), with byte loops for the unaligned head and tail.
 */

/** Below this many bytes the byte loop wins over building word views (bench/codec.js, mask op). */
export const WORD_LOOP_MIN_BYTES = 64;

/** Four scratch bytes whose Int32 view turns a rotated key into one word in host byte order. */
const keyBytes = new Uint8Array(4);
const keyWord = new Int32Array(keyBytes.buffer);

/** An Int32Array over all whole words of `u8`'s ArrayBuffer (word i = bytes 4i..4i+3). */
export function wordView(u8: Uint8Array): Int32Array {
  const buf = u8.buffer;
  return new Int32Array(buf, 0, buf.byteLength >>> 2);
}

/**
 * XOR `bytes[start..end)` in place with the 4-byte `key`, key byte `(i - start + phase) & 3`
 * for index i. `words` must be `wordView(bytes)` (or null to have it made when worthwhile);
 * callers that XOR many frames of one chunk pass one view for all of them.
 */
export function xorInPlace(
  bytes: Uint8Array, words: Int32Array | null, start: number, end: number, key: ArrayLike<number>, phase: number,
): void {
  let i = start;
  let p = phase;
  if (end - start >= WORD_LOOP_MIN_BYTES) {
    const base = bytes.byteOffset;
    // Byte loop up to the first 4-aligned address.
    const headEnd = i + ((4 - ((base + i) & 3)) & 3);
    for (; i < headEnd; i++, p++) bytes[i] ^= key[p & 3];
    keyBytes[0] = key[p & 3];
    keyBytes[1] = key[(p + 1) & 3];
    keyBytes[2] = key[(p + 2) & 3];
    keyBytes[3] = key[(p + 3) & 3];
    const k = keyWord[0];
    const w = words ?? wordView(bytes);
    let wi = (base + i) >>> 2;
    const wordCount = (end - i) >>> 2;
    const wEnd = wi + wordCount;
    const wEnd4 = wi + (wordCount & ~3);
    for (; wi < wEnd4; wi += 4) {
      w[wi] ^= k;
      w[wi + 1] ^= k;
      w[wi + 2] ^= k;
      w[wi + 3] ^= k;
    }
    for (; wi < wEnd; wi++) w[wi] ^= k;
    // Whole words keep the key phase unchanged.
    i += wordCount << 2;
  }
  for (; i < end; i++, p++) bytes[i] ^= key[p & 3];
}

/**
 * XOR `length` bytes of `source` with the 4-byte `mask` into `output` at `offset` (the
 * signature of ws's bufferutil). `source` and `output` may be the same memory.
 */
export function mask(source: Uint8Array, key: Uint8Array, output: Uint8Array, offset: number, length: number): void {
  if (length < WORD_LOOP_MIN_BYTES) {
    for (let i = 0; i < length; i++) output[offset + i] = source[i] ^ key[i & 3];
    return;
  }
  const sameMemory = source.buffer === output.buffer && source.byteOffset === output.byteOffset + offset;
  if (!sameMemory) {
    // One memcpy, then an aligned in-place pass: faster in V8 than a two-view loop, and
    // correct whatever the relative alignment of source and output.
    output.set(length === source.length ? source : source.subarray(0, length), offset);
  }
  xorInPlace(output, null, offset, offset + length, key, 0);
}

/** XOR `buffer` in place with the 4-byte `mask`. */
export function unmask(buffer: Uint8Array, key: Uint8Array): void {
  const n = buffer.length;
  if (n < WORD_LOOP_MIN_BYTES) {
    for (let i = 0; i < n; i++) buffer[i] ^= key[i & 3];
    return;
  }
  xorInPlace(buffer, null, 0, n, key, 0);
}
