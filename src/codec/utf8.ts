/**
 * UTF-8 validation twin. Node's `buffer.isUtf8` (simdutf inside) already is the strict
 * RFC 3629 check the contract asks for: no overlongs, no surrogates, nothing above U+10FFFF.
 */
import { isUtf8 as bufferIsUtf8 } from 'node:buffer';

/** True when `buf` is valid UTF-8 (RFC 3629). */
export function isUtf8(buf: Uint8Array): boolean {
  return bufferIsUtf8(buf);
}
