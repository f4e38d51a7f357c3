/**
 * Wire compatibility of tunnels with an independent yamux implementation
 * (@chainsafe/libp2p-yamux; test/fixtures/libp2p-yamux.ts says where it differs from
 * hashicorp/yamux and how the fixture bridges it): our yamux against it both ways, then
 * an agent built on it talking to our gateway, and our agent talking to a gateway side
 * built on it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import t from 'tap';
import { WebSocket, WebSocketServer } from 'ws';
import { createProxy } from '../src/index.js';
import { connectAgent } from '../src/tunnel/agent.js';
import { YamuxSession, type YamuxStream } from '../src/tunnel/yamux.js';
import { createLibp2pYamuxPeer, type Libp2pYamuxPeer, type PeerStream } from './fixtures/libp2p-yamux.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Delivers later, re-cut at random points, so frames never line up with deliveries. */
function wire(deliver: (b: Buffer) => void, seed: number): (b: Uint8Array) => boolean {
  let x = seed;
  const random = () => { x = (x * 1103515245 + 12345) >>> 0; return x / 0x100000000; };
  let queue: Buffer[] = [];
  let scheduled = false;
  return (b) => {
    queue.push(Buffer.from(b));
    if (!scheduled) {
      scheduled = true;
      setImmediate(() => {
        scheduled = false;
        const all = Buffer.concat(queue);
        queue = [];
        let at = 0;
        while (at < all.length) {
          const n = 1 + Math.floor(random() * (random() < 0.2 ? 13 : 90000));
          deliver(all.subarray(at, Math.min(all.length, at + n)));
          at += n;
        }
      });
    }
    return true;
  };
}

async function readStream(s: YamuxStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (c: Buffer) => parts.push(c));
  await once(s, 'end');
  return Buffer.concat(parts);
}

async function echoPeerStream(s: PeerStream): Promise<void> {
  for await (const c of s.chunks()) await s.write(c);
  await s.end();
}

t.test('our yamux client ↔ libp2p-yamux server: 20 streams × 512 KiB echoed, FIN both ways', async (t) => {
  let peer: Libp2pYamuxPeer | null = null;
  const ours = new YamuxSession({ client: true, send: (chunks) => { for (const c of chunks) toPeer(c); return true; } });
  const toPeer = wire((b) => peer!.push(b), 5);
  peer = createLibp2pYamuxPeer({ role: 'server', send: wire((b) => ours.push(b), 6), onStream: (s) => void echoPeerStream(s) });
  const inputs = Array.from({ length: 20 }, () => randomBytes(512 * 1024));
  const outputs = await Promise.all(inputs.map(async (data) => {
    const s = ours.open();
    const reading = readStream(s);
    s.end(data);
    return reading;
  }));
  t.equal(outputs.filter((o, i) => sha(o) === sha(inputs[i])).length, 20, 'all 20 echoed intact by libp2p-yamux');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(ours.size, 0, 'every stream closed on our side');
  await peer.close();
  ours.destroy();
});

t.test('libp2p-yamux client ↔ our yamux server: 20 streams × 512 KiB echoed; resets both ways', async (t) => {
  let peer: Libp2pYamuxPeer | null = null;
  const accepted: YamuxStream[] = [];
  const ours = new YamuxSession({
    client: false,
    send: (chunks) => { for (const c of chunks) toPeer(c); return true; },
    onStream: (s) => {
      accepted.push(s);
      s.on('error', () => {});
      s.pipe(s);
    },
  });
  const toPeer = wire((b) => peer!.push(b), 7);
  peer = createLibp2pYamuxPeer({ role: 'client', send: wire((b) => ours.push(b), 8) });
  const inputs = Array.from({ length: 20 }, () => randomBytes(512 * 1024));
  const outputs = await Promise.all(inputs.map(async (data) => {
    const s = await peer!.open();
    const reading = s.readAll();
    for (let at = 0; at < data.length; at += 100_000) await s.write(data.subarray(at, at + 100_000));
    await s.end();
    return reading;
  }));
  t.equal(outputs.filter((o, i) => sha(o) === sha(inputs[i])).length, 20, 'all 20 echoed intact by our yamux');
  t.equal(new Set(accepted.map((s) => s.id % 2)).size, 1, 'the client opened odd ids only');
  t.equal(accepted[0].id % 2, 1);

  // Their reset reaches our stream as ECONNRESET.
  const r1 = await peer.open();
  await r1.write(Buffer.from('x'));
  await new Promise((r) => setTimeout(r, 20));
  const mine = accepted[accepted.length - 1];
  const errored = once(mine, 'error');
  r1.reset();
  const [err] = await errored;
  t.equal((err as NodeJS.ErrnoException).code, 'ECONNRESET', 'libp2p reset → our stream errors ECONNRESET');

  // Our reset reaches theirs.
  const r2 = await peer.open();
  await r2.write(Buffer.from('y'));
  await new Promise((r) => setTimeout(r, 20));
  accepted[accepted.length - 1].destroy();
  await t.rejects(r2.readAll(), 'our RST makes their read fail');
  await peer.close();
  ours.destroy();
});

t.test('an agent built on libp2p-yamux, through our gateway (a TCP tunnel)', async (t) => {
  const key = 'interop-agent-key-0123456789abcdef';
  const echo = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  t.teardown(() => echo.close());
  const proxy = createProxy({
    listen: { port: 0 }, log: { level: 'silent' },
    routes: [{ path: '/agent', mode: 'agent', auth: { apiKeys: { header: 'authorization', sha256: [createHash('sha256').update(key).digest('hex')] } } }],
    tunnels: [{ listen: '127.0.0.1:0', agent: 'lp', service: 'echo' }],
  });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));

  // The agent: ws + libp2p-yamux (server role), the tunnel's wire by hand.
  const ws = new WebSocket(`ws://127.0.0.1:${port}/agent`, ['sluice.tunnel.v1'], { headers: { authorization: `Bearer ${key}` } });
  t.teardown(() => ws.terminate());
  const echoPort = (echo.address() as net.AddressInfo).port;
  const peer = createLibp2pYamuxPeer({
    role: 'server',
    send: (b) => { ws.send(b, { binary: true }); return true; },
    onStream: (s) => void (async () => {
      // The open line, then raw bytes to the service.
      let buf = Buffer.alloc(0);
      const it = s.chunks();
      let nl = -1;
      while (nl < 0) {
        const { value, done } = await it.next();
        if (done) return;
        buf = Buffer.concat([buf, value]);
        nl = buf.indexOf(0x0a);
      }
      const open = JSON.parse(buf.subarray(0, nl).toString()) as { service: string };
      if (open.service !== 'echo') {
        await s.write(Buffer.from('{"ok":false,"error":"no such service"}\n'));
        await s.end();
        return;
      }
      const sock = net.connect(echoPort, '127.0.0.1');
      await once(sock, 'connect');
      await s.write(Buffer.from('{"ok":true}\n'));
      if (buf.length > nl + 1) sock.write(buf.subarray(nl + 1));
      sock.on('data', (d: Buffer) => void s.write(d));
      sock.on('end', () => void s.end());
      for await (const c of { [Symbol.asyncIterator]: () => it }) sock.write(c);
      sock.end();
    })(),
  });
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (isBinary) peer.push(data);
    else if (JSON.parse(data.toString()).type === 'gateway_hello') {
      ws.send(JSON.stringify({ type: 'gateway_hello_ack', version: 1, use_yamux: true, name: 'lp', services: ['echo'] }));
    }
  });
  const deadline = Date.now() + 5000;
  while (!proxy.stats().agents.some((a) => a.name === 'lp') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(proxy.stats().agents.some((a) => a.name === 'lp'), 'the libp2p-based agent registered');

  const data = randomBytes(4 << 20);
  const c = net.connect({ port: proxy.tunnelPort(0), host: '127.0.0.1', allowHalfOpen: true });
  const parts: Buffer[] = [];
  c.on('data', (d: Buffer) => parts.push(d));
  c.end(data);
  await once(c, 'end');
  t.equal(sha(Buffer.concat(parts)), sha(data), '4 MiB through the tunnel and back, intact');
  await peer.close();
});

t.test('our agent, served by a gateway side built on libp2p-yamux', async (t) => {
  const echo = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  t.teardown(() => echo.close());
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has('sluice.tunnel.v1') ? 'sluice.tunnel.v1' : false) });
  await once(wss, 'listening');
  t.teardown(() => wss.close());
  const gateway = new Promise<{ ws: WebSocket; peer: Libp2pYamuxPeer; ack: Record<string, unknown> }>((resolve) => {
    wss.on('connection', (ws, req) => {
      t.equal(req.headers.authorization, 'Bearer any-token', 'the agent sends its token as a bearer credential');
      const peer = createLibp2pYamuxPeer({ role: 'client', send: (b) => { ws.send(b, { binary: true }); return true; } });
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (isBinary) peer.push(data);
        else resolve({ ws, peer, ack: JSON.parse(data.toString()) as Record<string, unknown> });
      });
      ws.send(JSON.stringify({ type: 'gateway_hello', version: 1, use_yamux: true }));
    });
  });
  const port = (wss.address() as net.AddressInfo).port;
  const agent = connectAgent({
    server: `ws://127.0.0.1:${port}/`, token: 'any-token', name: 'ours',
    expose: { echo: `127.0.0.1:${(echo.address() as net.AddressInfo).port}` },
  });
  t.teardown(() => agent.close());
  const { peer, ack } = await gateway;
  t.same(ack, { type: 'gateway_hello_ack', version: 1, use_yamux: true, name: 'ours', services: ['echo'] }, 'the hello answer, as the wire fixes it');

  const refused = await peer.open();
  await refused.write(Buffer.from('{"service":"ssh","protocol":"tcp"}\n'));
  const no = JSON.parse((await refused.readAll()).toString().trim()) as { ok: boolean; error: string };
  t.equal(no.ok, false, 'a service the agent does not expose is refused');
  t.match(no.error, /not exposed/);

  const s = await peer.open();
  const data = randomBytes(2 << 20);
  await s.write(Buffer.concat([Buffer.from('{"service":"echo","protocol":"tcp"}\n'), data.subarray(0, 1000)]));
  for (let at = 1000; at < data.length; at += 65536) await s.write(data.subarray(at, at + 65536));
  await s.end();
  const back = await s.readAll();
  t.equal(back.subarray(0, 12).toString(), '{"ok":true}\n', 'the answer line first');
  t.equal(sha(back.subarray(12)), sha(data), '2 MiB echoed through our agent, intact, ended by FIN');
  await peer.close();
});
