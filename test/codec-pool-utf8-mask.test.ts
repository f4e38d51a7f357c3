import t from 'tap';
import { implementations } from './codec-impls.js';

for (const [name, impl] of implementations) {
  t.test(`${name}: pool statistics move as documented`, async (t) => {
    const before = impl.poolStats();
    const a = impl.acquire(100);
    t.equal(a.length, 4096, 'a small request gets the 4 KiB tier');
    const b = impl.acquire(5000);
    t.equal(b.length, 65536, '5000 bytes gets the 64 KiB tier');
    const c = impl.acquire(65537);
    t.equal(c.length, 1024 * 1024, 'just over 64 KiB gets the 1 MiB tier');
    let s = impl.poolStats();
    t.equal(s.inUse, before.inUse + 3, 'inUse counts acquired buffers');
    t.ok(s.highWater >= s.inUse, 'highWater is at least inUse');
    t.equal(s.hits + s.misses, before.hits + before.misses + 3, 'every acquire is a hit or a miss');
    impl.release(a);
    impl.release(b);
    impl.release(c);
    s = impl.poolStats();
    t.equal(s.inUse, before.inUse, 'release gives them back');
    t.equal(s.freeBytes, before.freeBytes + 4096 + 65536 + 1024 * 1024, 'free lists hold the released bytes');
    const highWater = s.highWater;
    const again = impl.acquire(4000);
    s = impl.poolStats();
    t.ok(s.hits > before.hits, 'a released buffer is handed out again as a hit');
    t.equal(s.freeBytes, before.freeBytes + 65536 + 1024 * 1024, 'and leaves the free list');
    t.equal(s.highWater, highWater, 'highWater does not move below it');
    impl.release(again);
    // Free lists are capped: releasing many 1 MiB buffers keeps a bounded amount.
    const many = Array.from({ length: 40 }, () => impl.acquire(1024 * 1024));
    for (const m of many) impl.release(m);
    t.ok(impl.poolStats().freeBytes <= 64 * 1024 * 1024, 'free lists are capped');
    t.ok(impl.poolStats().freeBytes < before.freeBytes + 40 * 1024 * 1024 + 4096 + 65536, 'not every released 1 MiB buffer is kept');
    const huge = impl.acquire(3 * 1024 * 1024);
    t.ok(huge.length >= 3 * 1024 * 1024, 'above the top tier: at least the size asked');
    impl.release(huge);
  });

  t.test(`${name}: isUtf8`, async (t) => {
    const valid: Array<[string, number[]]> = [
      ['empty', []], ['ASCII', [0x48, 0x69]], ['2-byte é', [0xc3, 0xa9]], ['3-byte €', [0xe2, 0x82, 0xac]],
      ['4-byte 𝄞', [0xf0, 0x9d, 0x84, 0x9e]], ['U+10FFFF', [0xf4, 0x8f, 0xbf, 0xbf]], ['U+D7FF', [0xed, 0x9f, 0xbf]],
      ['U+E000', [0xee, 0x80, 0x80]], ['NUL', [0x00]],
    ];
    const invalid: Array<[string, number[]]> = [
      ['overlong /', [0xc0, 0xaf]], ['overlong 3-byte', [0xe0, 0x80, 0xaf]], ['overlong 4-byte', [0xf0, 0x80, 0x80, 0xaf]],
      ['surrogate D800', [0xed, 0xa0, 0x80]], ['surrogate DFFF', [0xed, 0xbf, 0xbf]], ['above U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
      ['F5 lead', [0xf5, 0x80, 0x80, 0x80]], ['truncated 2-byte', [0xc3]], ['truncated 4-byte', [0xf0, 0x9d, 0x84]],
      ['lone continuation', [0x80]], ['FF', [0xff]], ['C1 lead', [0xc1, 0xbf]],
    ];
    for (const [what, bytes] of valid) t.equal(impl.isUtf8(Buffer.from(bytes)), true, `valid: ${what}`);
    for (const [what, bytes] of invalid) {
      t.equal(impl.isUtf8(Buffer.from(bytes)), false, `invalid: ${what}`);
      // The same fault after a long valid prefix (the vectorised path) and before a valid suffix.
      const padded = Buffer.concat([Buffer.alloc(100, 0x61), Buffer.from(bytes), Buffer.alloc(3, 0x61)]);
      t.equal(impl.isUtf8(padded), false, `invalid inside a long run: ${what}`);
    }
    t.equal(impl.isUtf8(Buffer.from('héllo wörld €𝄞 '.repeat(100))), true, 'long mixed text');
  });

  t.test(`${name}: mask and unmask`, async (t) => {
    const key = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
    for (const n of [0, 1, 3, 4, 5, 31, 63, 64, 65, 127, 1000, 65536 + 3]) {
      const source = Buffer.alloc(n + 7);
      for (let i = 0; i < source.length; i++) source[i] = (i * 29 + 1) & 0xff;
      for (const srcShift of [0, 1, 3]) {
        for (const outShift of [0, 2]) {
          const src = source.subarray(srcShift, srcShift + n);
          const out = Buffer.alloc(n + 8, 0xee);
          impl.mask(src, key, out, outShift, n);
          let ok = true;
          for (let i = 0; i < n; i++) if (out[outShift + i] !== (src[i] ^ key[i & 3])) ok = false;
          t.ok(ok, `mask ${n} bytes, source +${srcShift}, output +${outShift}`);
          t.ok(out.subarray(0, outShift).every((b) => b === 0xee) && out.subarray(outShift + n).every((b) => b === 0xee), 'nothing outside the range is written');
          const back = Buffer.from(out.subarray(outShift, outShift + n));
          impl.unmask(back, key);
          t.ok(back.equals(src), `unmask undoes mask (${n})`);
        }
      }
    }
    const rfcMasked = Buffer.from([0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    impl.unmask(rfcMasked, key);
    t.equal(rfcMasked.toString(), 'Hello', 'RFC 6455 §5.7 masked "Hello"');
  });
}
