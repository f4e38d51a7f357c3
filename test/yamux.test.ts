/**
 * Our yamux (src/tunnel/yamux.ts) against itself over a transport that cuts and packs the
 * wire anyhow, and against hand-built frames for what a peer may do that ours never does
 * (data on SYN and FIN frames, a window overrun, a bad version, a SYN of the wrong parity).
 * Interop with an independent implementation is in tunnel-interop.test.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import t from 'tap';
import { Flag, FrameType, HEADER_BYTES, INITIAL_WINDOW, YamuxSession, type YamuxStream } from '../src/tunnel/yamux.js';

function frame(type: number, flags: number, id: number, length: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h[1] = type;
  h.writeUInt16BE(flags, 2);
  h.writeUInt32BE(id, 4);
  h.writeUInt32BE(length, 8);
  return Buffer.concat([h, payload]);
}

/** Every frame of a wire capture: [type, flags, id, length, payload]. */
function frames(wire: Buffer): Array<[number, number, number, number, Buffer]> {
  const out: Array<[number, number, number, number, Buffer]> = [];
  let at = 0;
  while (at + HEADER_BYTES <= wire.length) {
    const type = wire[at + 1];
    const len = wire.readUInt32BE(at + 8);
    const n = type === FrameType.Data ? len : 0;
    out.push([type, wire.readUInt16BE(at + 2), wire.readUInt32BE(at + 4), len, wire.subarray(at + 12, at + 12 + n)]);
    at += HEADER_BYTES + n;
  }
  return out;
}

/** A deterministic PRNG (xorshift32), so a failure replays. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
}

/**
 * Two sessions back to back. Each send is delivered later (setImmediate), re-cut at random
 * points and sometimes joined with the next send, so frame boundaries never match
 * deliveries. `hold(side)` stops delivery towards a side (its transport reports full).
 */
function pair(seed: number, opts: { onServerStream?(s: YamuxStream): void; window?: number } = {}) {
  const random = rng(seed);
  const queues: Record<'toServer' | 'toClient', Buffer[]> = { toServer: [], toClient: [] };
  let scheduled = false;
  const wireBytes = { toServer: 0, toClient: 0 };
  const deliver = () => {
    scheduled = false;
    for (const dir of ['toServer', 'toClient'] as const) {
      const q = queues[dir];
      if (q.length === 0) continue;
      const all = Buffer.concat(q.splice(0));
      const target = dir === 'toServer' ? server : client;
      let at = 0;
      while (at < all.length) {
        const n = Math.max(1, Math.floor(random() * Math.min(all.length - at, 70000)) + (random() < 0.3 ? 0 : 1));
        target.push(all.subarray(at, Math.min(all.length, at + n)));
        at += n;
      }
    }
  };
  const transport = (dir: 'toServer' | 'toClient') => (chunks: Buffer[]) => {
    for (const c of chunks) {
      wireBytes[dir] += c.length;
      queues[dir].push(Buffer.from(c)); // a copy: the sender may reuse nothing, but be strict
    }
    if (!scheduled) {
      scheduled = true;
      setImmediate(deliver);
    }
    return true;
  };
  const client: YamuxSession = new YamuxSession({ client: true, send: transport('toServer'), window: opts.window });
  const server: YamuxSession = new YamuxSession({
    client: false, send: transport('toClient'), window: opts.window,
    onStream: (s) => opts.onServerStream?.(s),
  });
  return { client, server, wireBytes };
}

/** Everything the stream's readable side gives until its end (the stream is not destroyed). */
async function readAll(s: YamuxStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (c: Buffer) => parts.push(c));
  await once(s, 'end');
  return Buffer.concat(parts);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('20 streams × 1 MiB echoed through a wire cut and packed anyhow arrive whole, and every stream ends', async (t) => {
  for (const seed of [1, 7, 1234]) {
    const { client, server } = pair(seed, { onServerStream: (s) => s.pipe(s) });
    const sent: Buffer[] = [];
    const got = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const s = client.open();
      const data = randomBytes(1 << 20);
      sent[i] = data;
      const reading = readAll(s);
      // Written in uneven pieces.
      let at = 0;
      const r = rng(seed + i);
      while (at < data.length) {
        const n = Math.floor(r() * 100000) + 1;
        if (!s.write(data.subarray(at, at + n))) await once(s, 'drain');
        at += n;
      }
      s.end();
      return reading;
    }));
    for (let i = 0; i < 20; i++) t.equal(sha(got[i]), sha(sent[i]), `seed ${seed}: stream ${i} intact`);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    t.equal(client.size, 0, `seed ${seed}: no stream left on the client`);
    t.equal(server.size, 0, `seed ${seed}: no stream left on the server`);
  }
});

t.test('flow control: a stream nobody reads holds at most its window, and the others go on', async (t) => {
  let stalled: YamuxStream | null = null;
  const { client, server } = pair(3, {
    onServerStream: (s) => {
      if (stalled === null) {
        stalled = s; // never read
        return;
      }
      s.pipe(s);
    },
  });
  const slow = client.open();
  let written = 0;
  const chunk = Buffer.alloc(16 * 1024, 1);
  // Write until the stream refuses (its window is spent and our buffer full).
  for (let i = 0; i < 200; i++) {
    written += chunk.length;
    if (!slow.write(chunk)) break;
  }
  const other = client.open();
  const data = randomBytes(3 << 20);
  const reading = readAll(other);
  other.end(data);
  t.equal(sha(await reading), sha(data), 'a 3 MiB echo on another stream completes while the first is stalled');
  t.ok(stalled !== null, 'the stalled stream arrived');
  const held = stalled!.readableLength;
  t.ok(held <= INITIAL_WINDOW, `the unread stream holds ${held} bytes, at most the window (${INITIAL_WINDOW})`);
  t.ok(held >= INITIAL_WINDOW - 16 * 1024, 'and the sender used that window');
  // Reading it releases the rest.
  const rest = readAll(stalled!);
  slow.end();
  const total = (await rest).length;
  t.equal(total, written, 'once read, every byte written to the stalled stream arrives');
});

t.test('half-close: each side ends its own direction; reset reaches the peer as ECONNRESET', async (t) => {
  let serverSide: YamuxStream | null = null;
  const { client } = pair(9, { onServerStream: (s) => { serverSide = s; } });
  const s = client.open();
  s.end(Buffer.from('request'));
  await new Promise((r) => setTimeout(r, 20));
  const got = await readAll(serverSide!);
  t.equal(got.toString(), 'request', 'the server read the client\'s bytes and its FIN');
  serverSide!.write('answer part 1 ');
  serverSide!.end('and 2');
  t.equal((await readAll(s)).toString(), 'answer part 1 and 2', 'the answer after the client half-closed');

  const r = client.open();
  r.write('x');
  await new Promise((r) => setTimeout(r, 20));
  const errored = once(serverSide!, 'error');
  r.destroy();
  const [err] = await errored;
  t.equal((err as NodeJS.ErrnoException).code, 'ECONNRESET', 'destroying one end resets the other');
});

t.test('frames a peer may send: data on SYN and on FIN, all in one push or byte by byte', async (t) => {
  for (const byteByByte of [false, true]) {
    const sent: Buffer[] = [];
    const accepted: YamuxStream[] = [];
    const server = new YamuxSession({ client: false, send: (c) => { sent.push(...c); return true; }, onStream: (s) => accepted.push(s) });
    const wire = Buffer.concat([
      frame(FrameType.Data, Flag.SYN, 1, 5, Buffer.from('hello')),
      frame(FrameType.Data, 0, 1, 1, Buffer.from(' ')),
      frame(FrameType.Data, Flag.FIN, 1, 5, Buffer.from('world')),
      frame(FrameType.WindowUpdate, Flag.SYN | Flag.FIN, 3, 0),
    ]);
    if (byteByByte) for (let i = 0; i < wire.length; i++) server.push(wire.subarray(i, i + 1));
    else server.push(wire);
    t.equal(accepted.length, 2, 'two streams opened');
    t.equal((await readAll(accepted[0])).toString(), 'hello world', 'data on the SYN and FIN frames is delivered');
    t.equal((await readAll(accepted[1])).length, 0, 'SYN|FIN: an empty stream that ends');
    await new Promise((r) => process.nextTick(r));
    const out = frames(Buffer.concat(sent));
    const acks = out.filter(([type, flags]) => type === FrameType.WindowUpdate && (flags & Flag.ACK));
    t.same(acks.map((f) => f[2]), [1, 3], 'each stream is acknowledged once (window update, ACK)');
  }
});

t.test('protocol errors end the session with go-away 1: a window overrun, version 1, a SYN of our parity, a stream opened twice', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['window overrun', Buffer.concat([frame(FrameType.WindowUpdate, Flag.SYN, 1, 0), frame(FrameType.Data, 0, 1, INITIAL_WINDOW + 1)])],
    ['version 1', Buffer.from([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])],
    ['SYN with the server\'s parity', frame(FrameType.WindowUpdate, Flag.SYN, 2, 0)],
    ['opened twice', Buffer.concat([frame(FrameType.WindowUpdate, Flag.SYN, 1, 0), frame(FrameType.WindowUpdate, Flag.SYN, 1, 0)])],
    ['unknown type', frame(7, 0, 0, 0)],
  ];
  for (const [name, wire] of cases) {
    const sent: Buffer[] = [];
    let closedWith: Error | null = null;
    const server = new YamuxSession({
      client: false, send: (c) => { sent.push(...c); return true; },
      onStream: (s) => s.on('error', () => {}), onClose: (e) => { closedWith = e; },
    });
    server.push(wire);
    t.ok(server.isClosed, `${name}: the session ended`);
    t.match(closedWith, { code: 'SLUICE_ERR_YAMUX' }, `${name}: with a protocol error`);
    const goAway = frames(Buffer.concat(sent)).find(([type]) => type === FrameType.GoAway);
    t.same(goAway?.slice(0, 4), [FrameType.GoAway, 0, 0, 1], `${name}: go-away with code 1 sent`);
  }
});

t.test('frames for unknown streams are read past; ping is answered; go-away stops new streams', async (t) => {
  const sent: Buffer[] = [];
  const accepted: YamuxStream[] = [];
  const server = new YamuxSession({ client: false, send: (c) => { sent.push(...c); return true; }, onStream: (s) => accepted.push(s) });
  server.push(Buffer.concat([
    frame(FrameType.Data, 0, 41, 3, Buffer.from('abc')), // stream never opened: dropped
    frame(FrameType.WindowUpdate, 0, 43, 100),
    frame(FrameType.Ping, Flag.SYN, 0, 0xdeadbeef),
    frame(FrameType.Data, Flag.SYN, 5, 2, Buffer.from('ok')),
  ]));
  t.equal(accepted.length, 1);
  t.equal(accepted[0].id, 5, 'the stream after the stray frames opened');
  await new Promise((r) => process.nextTick(r));
  const pong = frames(Buffer.concat(sent)).find(([type]) => type === FrameType.Ping);
  t.same(pong?.slice(0, 4), [FrameType.Ping, Flag.ACK, 0, 0xdeadbeef], 'ping answered with its value');
  server.push(frame(FrameType.GoAway, 0, 0, 0));
  t.throws(() => server.open(), /going away/, 'no new stream after the peer\'s go-away');
  accepted[0].destroy();

  const { client, server: s2 } = pair(11, { onServerStream: (s) => s.pipe(s) });
  const rtt = await client.ping();
  t.ok(rtt >= 0 && rtt < 5000, `ping round trip ${rtt.toFixed(2)} ms`);
  s2.destroy();
});

t.test('more streams than allowed: the extra SYN is reset, the session lives', async (t) => {
  const sent: Buffer[] = [];
  const server = new YamuxSession({ client: false, maxStreams: 2, send: (c) => { sent.push(...c); return true; }, onStream: (s) => s.on('error', () => {}) });
  server.push(Buffer.concat([1, 3, 5].map((id) => frame(FrameType.WindowUpdate, Flag.SYN, id, 0))));
  await new Promise((r) => process.nextTick(r));
  const rst = frames(Buffer.concat(sent)).filter(([, flags]) => flags & Flag.RST).map((f) => f[2]);
  t.same(rst, [5], 'the third stream is reset');
  t.notOk(server.isClosed, 'the session goes on');
  t.equal(server.size, 2);
  server.destroy();
});

t.test('a full transport holds data back until resume(), and nothing is lost', async (t) => {
  const wire: Buffer[] = [];
  let full = true;
  const client = new YamuxSession({ client: true, send: (c) => { wire.push(...c.map((b) => Buffer.from(b))); return !full; } });
  const received: Buffer[] = [];
  const server = new YamuxSession({
    client: false, send: () => true,
    onStream: (s) => s.on('data', (d: Buffer) => received.push(d)).on('error', () => {}),
  });
  const s = client.open();
  s.on('error', () => {}); // the session is destroyed under it at the end
  s.write(Buffer.alloc(10000, 7));
  await new Promise((r) => process.nextTick(r));
  const before = wire.reduce((n, b) => n + b.length, 0);
  s.write(Buffer.alloc(10000, 8));
  await new Promise((r) => setImmediate(r));
  t.equal(wire.reduce((n, b) => n + b.length, 0), before, 'no data frame while the transport is full');
  full = false;
  client.resume();
  await new Promise((r) => setImmediate(r));
  server.push(Buffer.concat(wire));
  await new Promise((r) => setImmediate(r));
  const all = Buffer.concat(received);
  t.equal(all.length, 20000, 'both writes arrived after resume()');
  t.equal(all[9999], 7);
  t.equal(all[10000], 8);
  client.destroy();
  server.destroy();
});

t.test('window growth: while the reader keeps up each top-up doubles the window, up to maxWindow', async (t) => {
  const toClient: Buffer[] = [];
  const queue: Array<[YamuxSession, Buffer]> = [];
  const flush = () => {
    for (const [target, chunk] of queue.splice(0)) target.push(chunk);
  };
  const via = (target: () => YamuxSession, capture: Buffer[] | null) => (chunks: Buffer[]) => {
    for (const c of chunks) {
      const copy = Buffer.from(c);
      capture?.push(copy);
      queue.push([target(), copy]);
    }
    setImmediate(flush);
    return true;
  };
  let read = 0;
  const client: YamuxSession = new YamuxSession({ client: true, send: via(() => server, null) });
  const server: YamuxSession = new YamuxSession({
    client: false, maxWindow: 2 * 1024 * 1024, send: via(() => client, toClient),
    onStream: (s) => {
      s.on('error', () => {});
      s.on('data', (c: Buffer) => { read += c.length; });
    },
  });
  const s = client.open();
  s.on('error', () => {});
  const total = 16 << 20;
  const chunk = Buffer.alloc(64 * 1024, 7);
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!s.write(chunk)) await once(s, 'drain');
  }
  s.end();
  while (read < total) await new Promise((r) => setImmediate(r));
  const deltas = frames(Buffer.concat(toClient)).filter(([type, , id]) => type === FrameType.WindowUpdate && id === s.id).map(([, , , len]) => len);
  const largest = Math.max(...deltas);
  t.ok(largest > INITIAL_WINDOW, `the reader kept up: a top-up of ${largest} bytes, more than the first window`);
  t.ok(largest <= 2 * 1024 * 1024, 'never more than maxWindow at once');
  t.equal(read, total, 'every byte arrived');
  client.destroy();
  server.destroy();
});
