/**
 * UTF-8 validation of a text message that arrives in fragments (RFC 6455 §8.1: a text
 * message must be valid UTF-8 as a whole; a code point may be split across fragments).
 *
 * Each fragment is checked as it arrives, so a bad message fails at the fragment that
 * proves it bad (fail fast) rather than at its end. The bulk of each fragment goes through
 * `isUtf8` (simdutf inside Node); only the up to three bytes of a code point cut by a
 * fragment boundary are carried, and checked against the prefixes a valid sequence can
 * start with, so an impossible prefix fails at once too.
 */
import { isUtf8 } from './utf8.js';

/** Bytes a sequence with lead byte `b` has in all; 0 for a byte that cannot lead. */
function sequenceLength(b: number): number {
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 0;
}

/** Whether `bytes[0..n)` (n < the sequence's length) can still become a valid sequence. */
function validPrefix(bytes: Uint8Array, n: number): boolean {
  const lead = bytes[0];
  if (sequenceLength(lead) <= n) return false;
  if (n >= 2) {
    const b = bytes[1];
    // The second byte's range depends on the lead (no overlongs, surrogates, > U+10FFFF).
    const lo = lead === 0xe0 ? 0xa0 : lead === 0xf0 ? 0x90 : 0x80;
    const hi = lead === 0xed ? 0x9f : lead === 0xf4 ? 0x8f : 0xbf;
    if (b < lo || b > hi) return false;
  }
  if (n >= 3 && (bytes[2] < 0x80 || bytes[2] > 0xbf)) return false;
  return true;
}

/** A streaming validator for one text message at a time (reset per message). */
export class Utf8Stream {
  /** Bytes of a code point cut by the previous fragment's end (0..3 used). */
  private readonly held = new Uint8Array(4);
  private heldLength = 0;

  /** Forget any held bytes (a new message starts). */
  reset(): void {
    this.heldLength = 0;
  }

  /**
   * Check the next fragment of the message; `fin` when it is the last. Returns false as
   * soon as the message cannot be valid UTF-8. After false the state is undefined until
   * `reset()`.
   */
  push(fragment: Uint8Array, fin: boolean): boolean {
    let start = 0;
    const n = fragment.length;
    if (this.heldLength > 0) {
      // Complete the held code point with the first bytes of this fragment.
      const need = sequenceLength(this.held[0]) - this.heldLength;
      const take = Math.min(need, n);
      for (let i = 0; i < take; i++) this.held[this.heldLength + i] = fragment[i];
      const have = this.heldLength + take;
      if (take < need) {
        this.heldLength = have;
        return !fin && validPrefix(this.held, have);
      }
      if (!isUtf8(this.held.subarray(0, have))) return false;
      this.heldLength = 0;
      start = take;
    }
    // Find a code point cut by this fragment's end: scan back over continuation bytes.
    let end = n;
    if (!fin && n > start) {
      let i = n - 1;
      const floor = Math.max(start, n - 3);
      while (i > floor && (fragment[i] & 0xc0) === 0x80) i--;
      const len = sequenceLength(fragment[i]);
      if (len > 1 && i + len > n) end = i;
    }
    if (end > start && !isUtf8(start === 0 && end === n ? fragment : fragment.subarray(start, end))) return false;
    if (end < n) {
      const tail = n - end;
      for (let i = 0; i < tail; i++) this.held[i] = fragment[end + i];
      this.heldLength = tail;
      if (!validPrefix(this.held, tail)) return false;
    }
    return true;
  }
}
