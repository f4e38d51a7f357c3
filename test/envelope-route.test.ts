/**
 * Envelope routes end to end: negotiation, v2 bytes and v1 JSON on the wire exactly as
 * DESIGN draws them, unwrap/wrap, ping/pong, close both ways, malformed frames, control
 * and error frames, and the backpressure flag against a slow upstream. Frames are built
 * by hand here (not with our encoder) so the test checks the wire format itself.
 */
import t, { type Test } from 'tap';
import { WebSocket } from 'ws';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, nextMessage, startRawWsUpstream, startWsBackend, until } from './fixtures/peers.js';

/** A v2 frame: version 0x02, type, flags, reserved 0x00, big-endian uint32 length, payload. */
function v2(type: number, flags: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const p = Buffer.from(payload);
  const h = Buffer.alloc(8);
  h[0] = 0x02;
  h[1] = type;
  h[2] = flags;
  h[3] = 0x00;
  h.writeUInt32BE(p.length, 4);
  return Buffer.concat([h, p]);
}

async function envelopeProxy(t: Test, extra: ProxyConfigInput, upstreamUrl: string, hooks = {}, routeExtra: object = {}) {
  const proxy: Proxy = createProxy(
    {
      listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...extra,
      routes: [{ path: '/e', mode: 'envelope', ...routeExtra, upstreams: [{ url: upstreamUrl }] }],
    } as ProxyConfigInput,
    hooks,
  );
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  return { proxy, url: `ws://127.0.0.1:${port}/e` };
}

t.test('negotiation: v2 when offered and allowed, else v1; neither → v1 (legacy)', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const cases: Array<[('v1' | 'v2'), string[], string, string]> = [
    // allowed, offered, answered subprotocol, version spoken
    ['v2', ['sluice.v2'], 'sluice.v2', 'v2'],
    ['v2', ['sluice.v1'], 'sluice.v1', 'v1'],
    ['v2', ['sluice.v2', 'sluice.v1'], 'sluice.v2', 'v2'],
    ['v2', [], '', 'v1'],
    ['v1', ['sluice.v2'], '', 'v1'],
    ['v1', ['sluice.v1'], 'sluice.v1', 'v1'],
    ['v1', ['sluice.v2', 'sluice.v1'], 'sluice.v1', 'v1'],
    ['v1', [], '', 'v1'],
  ];
  for (const [allowed, offered, answer, spoken] of cases) {
    const { url, proxy } = await envelopeProxy(t, { protocol: allowed }, backend.url);
    if (answer === '' && offered.length > 0) {
      // Only sluice.v2 offered, v1 allowed: sluice answers without a subprotocol (v1), and
      // a client that insists on its offer (ws does, per RFC 6455 §4.1) gives up.
      await t.rejects(connect(url, { protocols: offered }), /no subprotocol/, `allowed ${allowed}, offered [${offered}] → no subprotocol`);
      continue;
    }
    const ws = await connect(url, { protocols: offered });
    t.equal(ws.protocol, answer, `allowed ${allowed}, offered [${offered}] → "${answer}"`);
    t.same(proxy.stats().routes[0].envelope, { v1: spoken === 'v1' ? 1 : 0, v2: spoken === 'v2' ? 1 : 0 }, `speaks ${spoken} (/stats)`);
    // Prove it by speaking it: a data frame round trip through the echo backend.
    if (spoken === 'v2') {
      ws.send(v2(1, 0x04, 'ping-pong'));
      const m = await nextMessage(ws);
      t.ok(m.isBinary);
      t.same(m.data, v2(1, 0x04, 'ping-pong'), 'v2 data frame back, byte for byte');
    } else {
      ws.send(JSON.stringify({ type: 'data', data: Buffer.from('hello').toString('base64') }));
      const m = await nextMessage(ws);
      t.equal(m.isBinary, false);
      t.same(JSON.parse(m.data.toString()), { type: 'data', data: Buffer.from('hello').toString('base64'), flags: ['final'] }, 'v1 JSON back');
    }
    ws.close();
    await closed(ws);
  }
});

t.test('v2: data is unwrapped for the upstream and wrapped for the client; ping → pong; the upstream never sees envelopes', async (t) => {
  const seen: Buffer[] = [];
  let upstream: WebSocket | undefined;
  const backend = await startWsBackend({
    onConnection: (ws) => {
      upstream = ws;
      ws.on('message', (d) => seen.push(Buffer.from(d as Buffer)));
    },
  });
  t.teardown(backend.close);
  const { url } = await envelopeProxy(t, { protocol: 'v2' }, backend.url);
  const ws = await connect(url, { protocols: ['sluice.v2'] });
  await until(() => upstream !== undefined);
  ws.send(v2(1, 0x04, Buffer.from([1, 2, 3, 250])));
  await until(() => seen.length === 1);
  t.same(seen[0], Buffer.from([1, 2, 3, 250]), 'the upstream gets the bare payload');
  t.notOk(backend.requests[0].headers['sec-websocket-protocol'], 'sluice.v2 is not offered upstream');
  upstream!.send(Buffer.alloc(300, 9));
  const m = await nextMessage(ws);
  const expected = v2(1, 0x04, Buffer.alloc(300, 9));
  t.same(m.data, expected, 'header 02 01 04 00 + big-endian 300 + payload');
  t.same([...m.data.subarray(0, 8)], [0x02, 0x01, 0x04, 0x00, 0x00, 0x00, 0x01, 0x2c]);
  ws.send(v2(2, 0, 'are you there'));
  t.same((await nextMessage(ws)).data, v2(3, 0, 'are you there'), 'ping frame answered with a pong frame');
  ws.close();
  await closed(ws);
});

t.test('close frames close the session with their code and reason, both ways', async (t) => {
  let upstream: WebSocket | undefined;
  let upstreamClose: Promise<{ code: number; reason: string }> | undefined;
  const backend = await startWsBackend({
    onConnection: (ws) => {
      upstream = ws;
      upstreamClose = closed(ws);
    },
  });
  t.teardown(backend.close);
  const { url } = await envelopeProxy(t, { protocol: 'v2' }, backend.url);
  // Client's envelope close → upstream.
  const ws = await connect(url, { protocols: ['sluice.v2'] });
  await until(() => upstream !== undefined);
  const payload = Buffer.concat([Buffer.from([0x0f, 0xa1]), Buffer.from('agent done')]); // 4001
  const cws = closed(ws);
  ws.send(v2(4, 0, payload));
  t.same(await upstreamClose, { code: 4001, reason: 'agent done' });
  t.same(await cws, { code: 4001, reason: 'agent done' });
  // Upstream close → client: an envelope close frame, then the WebSocket close.
  upstream = undefined;
  const ws2 = await connect(url, { protocols: ['sluice.v2'] });
  await until(() => upstream !== undefined);
  const frames: Buffer[] = [];
  ws2.on('message', (d) => frames.push(Buffer.from(d as Buffer)));
  const c2 = closed(ws2);
  upstream!.close(4100, 'server says bye');
  t.same(await c2, { code: 4100, reason: 'server says bye' });
  t.same(frames.at(-1), v2(4, 0, Buffer.concat([Buffer.from([0x10, 0x04]), Buffer.from('server says bye')])));
});

t.test('v1 JSON: exact shapes; bad base64 → 1007; malformed → 1002; binary → 1003; too big → 1009', async (t) => {
  let upstream: WebSocket | undefined;
  const got: Buffer[] = [];
  const backend = await startWsBackend({
    onConnection: (ws) => {
      upstream = ws;
      ws.on('message', (d) => got.push(Buffer.from(d as Buffer)));
    },
  });
  t.teardown(backend.close);
  const { url } = await envelopeProxy(t, { protocol: 'v1', limits: { maxFrameBytes: 1000 } }, backend.url);
  const ws = await connect(url, { protocols: ['sluice.v1'] });
  await until(() => upstream !== undefined);
  ws.send(JSON.stringify({ type: 'data', data: Buffer.from('abc').toString('base64') }));
  await until(() => got.length === 1);
  t.equal(got[0].toString(), 'abc');
  ws.send(JSON.stringify({ type: 'ping' }));
  t.same(JSON.parse((await nextMessage(ws)).data.toString()), { type: 'pong' });
  upstream!.send('x');
  t.same(JSON.parse((await nextMessage(ws)).data.toString()), { type: 'data', data: 'eA==', flags: ['final'] });

  for (const [what, msg, code] of [
    ['bad base64', JSON.stringify({ type: 'data', data: 'not*base64' }), 1007],
    ['not JSON', '{"type":', 1002],
    ['unknown type', JSON.stringify({ type: 'launch' }), 1002],
    ['payload over the limit', JSON.stringify({ type: 'data', data: Buffer.alloc(1001).toString('base64') }), 1009],
    ['binary message on v1', Buffer.from('{}'), 1003],
  ] as const) {
    const w = await connect(url, { protocols: ['sluice.v1'] });
    const c = closed(w);
    w.send(msg);
    t.equal((await c).code, code, `${what} → ${code}`);
  }
});

t.test('v2 malformed frames: version, reserved, type, flags, length → 1002; text → 1003; over the limit → 1009', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { url, proxy } = await envelopeProxy(t, { protocol: 'v2', limits: { maxFrameBytes: 1000 } }, backend.url);
  const bad = (f: (b: Buffer) => void) => {
    const b = v2(1, 0x04, 'abc');
    f(b);
    return b;
  };
  for (const [what, msg, code] of [
    ['version 0x01', bad((b) => (b[0] = 0x01)), 1002],
    ['reserved byte set', bad((b) => (b[3] = 0x01)), 1002],
    ['type 0x07', bad((b) => (b[1] = 0x07)), 1002],
    ['unknown flag 0x10', bad((b) => (b[2] = 0x10)), 1002],
    ['length says more than present', bad((b) => b.writeUInt32BE(4, 4)), 1002],
    ['length says less than present', bad((b) => b.writeUInt32BE(2, 4)), 1002],
    ['short header', Buffer.from([0x02, 0x01, 0x00]), 1002],
    ['text message on v2', 'hello', 1003],
    ['length over the limit', v2(1, 0, Buffer.alloc(1001)), 1009],
  ] as const) {
    const w = await connect(url, { protocols: ['sluice.v2'] });
    const c = closed(w);
    w.send(msg);
    t.equal((await c).code, code, `${what} → ${code}`);
  }
  // An error frame is logged and counted; the session goes on.
  const w = await connect(url, { protocols: ['sluice.v2'] });
  w.send(v2(5, 0, 'disk full on agent'));
  w.send(v2(1, 0x04, 'still ok'));
  t.same((await nextMessage(w)).data, v2(1, 0x04, 'still ok'));
  t.equal(proxy.counters.envelopeErrors, 1, 'error frame counted');
  w.close();
  await closed(w);
});

t.test('control frames reach the library hook', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const controls: unknown[] = [];
  const { url } = await envelopeProxy(t, { protocol: 'v2' }, backend.url, { onControl: (_s: unknown, p: unknown) => controls.push(p) });
  const ws = await connect(url, { protocols: ['sluice.v2'] });
  ws.send(v2(6, 0, JSON.stringify({ agent: 'a-1', capabilities: ['logs'] })));
  await until(() => controls.length === 1);
  t.same(controls[0], { agent: 'a-1', capabilities: ['logs'] });
  ws.close();
  await closed(ws);
});

t.test('backpressure flag raised against a slow upstream and cleared when it drains', async (t) => {
  // An upstream that stops reading for a while, then reads again.
  let resumeUpstream: (() => void) | undefined;
  const raw = await startRawWsUpstream((s) => {
    s.pause();
    resumeUpstream = () => {
      s.on('data', () => {});
      s.resume();
    };
  });
  t.teardown(raw.close);
  const { url } = await envelopeProxy(
    t,
    { protocol: 'v2', limits: { channelCapacity: 20, channelBytes: 64 * 1024 * 1024 } },
    raw.url,
    {},
    { backpressure: 'drop' },
  );
  const ws = await connect(url, { protocols: ['sluice.v2'] });
  const controls: Array<{ flags: number; json: unknown }> = [];
  ws.on('message', (d) => {
    const b = Buffer.from(d as Buffer);
    if (b[1] === 6) controls.push({ flags: b[2], json: JSON.parse(b.subarray(8).toString()) });
  });
  const chunk = v2(1, 0x04, Buffer.alloc(256 * 1024, 1));
  const flood = setInterval(() => {
    if (ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 4 * 1024 * 1024) for (let i = 0; i < 4; i++) ws.send(chunk);
  }, 10);
  t.teardown(() => clearInterval(flood));
  await until(() => controls.length >= 1, 8000, 'backpressure control frame');
  t.equal(controls[0].flags & 0x08, 0x08, 'the first control frame has the backpressure flag');
  t.match(controls[0].json, { backpressure: true });
  clearInterval(flood);
  resumeUpstream!();
  await until(() => controls.length >= 2, 8000, 'cleared control frame');
  t.equal(controls[1].flags & 0x08, 0, 'then one without it when the channel drains');
  t.match(controls[1].json, { backpressure: false });
  ws.terminate();
});
