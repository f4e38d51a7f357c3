/**
 * RFC 6455 conformance through the proxy, with raw frames, modelled on the case families
 * of the Autobahn|Testsuite fuzzing client: framing at every length boundary, ping/pong,
 * reserved bits, reserved opcodes, fragmentation, UTF-8, close handling, masking, limits.
 *
 * Both hops are tested. Client → upstream: a raw client (every frame on the wire seen,
 * masked or not, with FIN and RSV) against a `ws` WebSocketServer echo backend, an
 * independent RFC 6455 implementation that also reports the close code and reason it got.
 * Upstream → client: a raw upstream (fixtures/raw-upstream.ts) that completes the
 * handshake and then writes raw server frames and reads what the proxy sends it.
 *
 * Every case runs on a fresh connection and ends with `proxy.sessions.size` back at 0; each
 * family ends with a fresh `ws` client echoing through the proxy. A valid case ends with a
 * sentinel message (so "nothing else came" is checked without sleeping) and a close 1000.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import type { WebSocket } from 'ws';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, nextMessage, startWsBackend, until } from './fixtures/peers.js';
import {
  Op, cf, sf, closeBody, startRawUpstream, wireConnect,
  type WireFrame, type WirePeer, type WriteMode,
} from './fixtures/raw-upstream.js';

async function proxyFor(t: Test, config: ProxyConfigInput): Promise<{ proxy: Proxy; port: number; base: string }> {
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...config });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 200 }));
  return { proxy, port, base: `ws://127.0.0.1:${port}` };
}

type Px = Awaited<ReturnType<typeof proxyFor>>;

/** How long a failed connection gets to see its close frame and TCP end ("promptly"). */
const CLOSE_WAIT_MS = 3000;
/** How long a valid case gets for its sentinel to come back. */
const ECHO_WAIT_MS = 5000;
const LIMIT = 1024;
const SENTINEL = 'sentinel';
/**
 * Once the close frames are exchanged the TCP connection must end within CLOSE_WAIT_MS. The
 * raw client, like `ws`, half-closes after the close handshake, but only after
 * CLIENT_FIN_GRACE_MS (fixtures/raw-upstream.ts), so the proxy gets the chance to close
 * first (RFC 6455 §7.1.1).
 */
const STILL_OPEN = 'still open';

// ------------------------------------------------------------------------------ peers

const backend = await startWsBackend();
t.teardown(backend.close);
const raw = await startRawUpstream({ echo: true });
t.teardown(raw.close);
const routes = [
  { path: '/ws', upstreams: [{ url: backend.url }] },
  { path: '/raw', upstreams: [{ url: raw.url }] },
];
// Heartbeats far away: a proxy ping must not land in the middle of a case.
const heartbeat = { pingIntervalSeconds: 300, pongTimeoutSeconds: 600 };
const main = await proxyFor(t, { limits: { maxFrameBytes: 70_000 }, heartbeat, routes });
const small = await proxyFor(t, { limits: { maxFrameBytes: LIMIT }, heartbeat, routes });

// ------------------------------------------------------------------------------ payloads

const bin = (n: number, seed = 7) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
const txt = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => 0x21 + ((i * 7) % 94))); // printable ASCII
const u8 = (...parts: Array<string | number[]>) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p))));
const payloadFor = (op: number, n: number) => (op === Op.Text ? txt(n) : bin(n));

// ------------------------------------------------------------------------------ reporting

const OPNAME: Record<number, string> = { 0: 'cont', 1: 'text', 2: 'binary', 8: 'close', 9: 'ping', 10: 'pong' };
const opName = (op: number) => OPNAME[op] ?? `op${op.toString(16)}`;
/** A payload as a short exact string: hex when small, length and digest when large. */
function repr(b: Buffer | string): string {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b, 'utf8');
  if (buf.length <= 48) return `${buf.length}:${buf.toString('hex')}`;
  return `${buf.length}:sha1=${createHash('sha1').update(buf).digest('hex').slice(0, 16)}`;
}
type Msg = [op: number, payload: Buffer | string];
type Frm = [op: number, fin: boolean, payload: Buffer | string];
const showMsgs = (ms: Msg[]) => ms.map(([op, p]) => `${opName(op)} ${repr(p)}`);
const showFrames = (fs: Frm[]) => fs.map(([op, fin, p]) => `${opName(op)}${fin ? '' : ' (no FIN)'} ${repr(p)}`);
const wireFrames = (fs: WireFrame[]): Frm[] => fs.map((f) => [f.opcode, f.fin, f.payload]);

/** Data frames put back together into messages (as a receiver would). */
function messages(frames: WireFrame[]): Msg[] {
  const out: Msg[] = [];
  let open: { op: number; parts: Buffer[] } | null = null;
  for (const f of frames) {
    if (f.opcode > Op.Binary) continue;
    if (f.opcode === Op.Cont) {
      if (open === null) {
        out.push([f.opcode, Buffer.from('stray continuation')]);
        continue;
      }
      open.parts.push(f.payload);
    } else {
      if (open !== null) out.push([open.op, Buffer.concat([Buffer.from('(unfinished) '), ...open.parts])]);
      open = { op: f.opcode, parts: [f.payload] };
    }
    if (f.fin) {
      out.push([open.op, Buffer.concat(open.parts)]);
      open = null;
    }
  }
  if (open !== null) out.push([open.op, Buffer.concat([Buffer.from('(unfinished) '), ...open.parts])]);
  return out;
}

/** Frames that break the wire rules for their direction (masking, RSV, minimal length). */
function wireProblems(frames: WireFrame[], mustBeMasked: boolean): string[] {
  return frames
    .filter((f) => f.masked !== mustBeMasked || f.rsv !== 0 || !f.minimalLength)
    .map((f) => `${opName(f.opcode)} masked=${f.masked} rsv=${f.rsv} minimalLength=${f.minimalLength}`);
}

const isSentinel = (f: WireFrame) => f.opcode === Op.Text && f.fin && f.payload.toString('latin1') === SENTINEL;

function withTimeout<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(fallback), ms);
    p.then((v) => {
      clearTimeout(timer);
      resolve(v);
    }, () => {
      clearTimeout(timer);
      resolve(fallback);
    });
  });
}

const settle = (px: Px, ms = 3000) => until(() => px.proxy.sessions.size === 0, ms).then(() => true, () => false);

/** Expected close: a code, or a code and the exact reason. */
type CloseExp = number | [code: number, reason: string];
const closeShape = (e: CloseExp) => (typeof e === 'number' ? { code: e } : { code: e[0], reason: e[1] });
const seenShape = (e: CloseExp, code: number | null, reason: Buffer | string) =>
  (typeof e === 'number' ? { code } : { code, reason: Buffer.isBuffer(reason) ? reason.toString('utf8') : reason });

// ------------------------------------------------------------------------------ client → upstream (ws backend)

interface UpLog {
  ws: WebSocket;
  messages: Msg[];
  pings: number;
  pongs: number;
  closed: Promise<{ code: number; reason: string }>;
}

/** The backend's next connection, with what it receives logged. */
function nextBackendConn(): Promise<UpLog> {
  return new Promise((resolve) => {
    backend.server.once('connection', (ws: WebSocket) => {
      const log: UpLog = {
        ws,
        messages: [],
        pings: 0,
        pongs: 0,
        closed: new Promise((res) => ws.once('close', (code: number, reason: Buffer) => res({ code, reason: reason.toString('utf8') }))),
      };
      ws.on('message', (d: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
        const data = Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d as Buffer);
        log.messages.push([isBinary ? Op.Binary : Op.Text, data]);
      });
      ws.on('ping', () => log.pings++);
      ws.on('pong', () => log.pongs++);
      resolve(log);
    });
  });
}

interface ClientCase {
  name: string;
  /** Client frames (encode with cf(), masked). */
  send: Buffer[];
  mode?: WriteMode;
  /** A valid case: the messages echoed back (the `ws` backend echoes whole messages). */
  echo?: Msg[];
  /** Payloads of the pongs the proxy must answer with, in order. */
  pongs?: Array<Buffer | string>;
  /** A closing case: what the client's close frame holds, and what the upstream was told. */
  client?: CloseExp;
  upstream?: CloseExp;
  /** Closing case: the data messages the client gets before the close. */
  before?: Msg[];
  /** Closing case: the messages the upstream gets. */
  upstreamGot?: Msg[];
}

/** Close 1000 from the client: it comes back, the TCP connection ends, the upstream saw 1000 'done'. */
async function cleanClose(t: Test, name: string, c: WirePeer, upClosed: Promise<{ code: number; reason: string } | null>) {
  await c.sendClose(1000, 'done');
  const [o, u] = await Promise.all([c.outcome(CLOSE_WAIT_MS), upClosed]);
  t.same({ client: o.code, upstream: u }, { client: 1000, upstream: { code: 1000, reason: 'done' } }, `${name}: close 1000 completes`);
  t.not(o.tcp, STILL_OPEN, `${name}: then the TCP connection ends (within ${CLOSE_WAIT_MS} ms)`);
}

async function runClient(t: Test, k: ClientCase, px: Px = main): Promise<void> {
  const upP = nextBackendConn();
  let c: WirePeer;
  try {
    c = await wireConnect(px.port, '/ws');
  } catch (err) {
    t.fail(`${k.name}: handshake (${(err as Error).message})`);
    return;
  }
  const up = await withTimeout(upP, 3000, null);
  if (up === null) {
    t.fail(`${k.name}: the upstream leg opens`);
    c.destroy();
    await settle(px);
    return;
  }
  const upClosed = withTimeout<{ code: number; reason: string } | null>(up.closed, CLOSE_WAIT_MS, null);
  try {
    await c.send(k.send, k.mode);
    if (k.echo) {
      await c.send(cf(Op.Text, SENTINEL));
      await c.waitFor(() => c.frames.some(isSentinel) || c.close.code !== null || c.ended, ECHO_WAIT_MS);
      const got = c.nonClose();
      const i = got.findIndex(isSentinel);
      const before = i < 0 ? got : got.slice(0, i);
      const upMsgs = up.messages.filter(([op, p]) => !(op === Op.Text && p.toString('latin1') === SENTINEL));
      t.same({
        echoed: showMsgs(messages(before)),
        pongs: before.filter((f) => f.opcode === Op.Pong).map((f) => repr(f.payload)),
        otherControl: before.filter((f) => f.opcode > Op.Binary && f.opcode !== Op.Pong).map((f) => opName(f.opcode)),
        upstreamGot: showMsgs(upMsgs),
        pingsOrPongsForwarded: up.pings + up.pongs,
        sentinelBack: i >= 0,
        wire: wireProblems(c.frames, false),
      }, {
        echoed: showMsgs(k.echo),
        pongs: (k.pongs ?? []).map(repr),
        otherControl: [],
        upstreamGot: showMsgs(k.echo),
        pingsOrPongsForwarded: 0,
        sentinelBack: true,
        wire: [],
      }, `${k.name}: echoed`);
      if (i >= 0) await cleanClose(t, k.name, c, upClosed);
    } else {
      const [o, u] = await Promise.all([c.outcome(CLOSE_WAIT_MS), upClosed]);
      const exp: Record<string, unknown> = { client: closeShape(k.client!), upstream: closeShape(k.upstream!) };
      const act: Record<string, unknown> = {
        client: seenShape(k.client!, o.code, o.reason),
        upstream: u === null ? 'no close within 3 s' : seenShape(k.upstream!, u.code, u.reason),
      };
      if (k.before) {
        exp.before = showMsgs(k.before);
        act.before = showMsgs(messages(c.frames));
      }
      if (k.upstreamGot) {
        exp.upstreamGot = showMsgs(k.upstreamGot);
        act.upstreamGot = showMsgs(up.messages);
      }
      // No pong or other control frame comes before the close (nothing here solicits one).
      exp.controlBefore = [];
      act.controlBefore = c.nonClose().filter((f) => f.opcode > Op.Binary).map((f) => opName(f.opcode));
      exp.wire = [];
      act.wire = wireProblems(c.frames, false);
      t.same(act, exp, `${k.name}: client ${k.client}, upstream ${k.upstream}`);
      t.not(o.tcp, STILL_OPEN, `${k.name}: then the TCP connection ends (within ${CLOSE_WAIT_MS} ms)`);
    }
  } finally {
    c.destroy();
    const ok = await settle(px);
    t.ok(ok, `${k.name}: session ended (proxy.sessions.size back to 0)`);
    if (!ok) {
      up.ws.terminate();
      await settle(px);
    }
  }
}

// ------------------------------------------------------------------------------ upstream → client (raw upstream)

interface UpstreamCase {
  name: string;
  /** Server frames (encode with sf(), unmasked). */
  send: Buffer[];
  mode?: WriteMode;
  /** A valid case: the messages the client gets. */
  deliver?: Msg[];
  /** The exact frames the client gets, when they differ from one frame per message (fragments). */
  frames?: Frm[];
  /** Payloads of the pongs the upstream must get, in order. */
  pongs?: Array<Buffer | string>;
  /** A closing case: what the client's close frame holds, and what the upstream's holds. */
  client?: CloseExp;
  upstream?: CloseExp | 'any';
  /** Closing case: the data messages the client gets before the close. */
  before?: Msg[];
}

async function rawPair(t: Test, name: string, px: Px): Promise<{ c: WirePeer; up: WirePeer } | null> {
  const idx = raw.conns.length;
  let c: WirePeer;
  try {
    c = await wireConnect(px.port, '/raw');
  } catch (err) {
    t.fail(`${name}: handshake (${(err as Error).message})`);
    return null;
  }
  try {
    return { c, up: await raw.conn(idx, 3000) };
  } catch {
    t.fail(`${name}: the upstream leg opens`);
    c.destroy();
    await settle(px);
    return null;
  }
}

async function endPair(t: Test, name: string, px: Px, c: WirePeer, up: WirePeer) {
  c.destroy();
  const ok = await settle(px);
  t.ok(ok, `${name}: session ended (proxy.sessions.size back to 0)`);
  if (!ok) {
    up.destroy();
    await settle(px);
  }
}

/** Close 1000 from the client over the raw route. */
async function cleanCloseRaw(t: Test, name: string, c: WirePeer, up: WirePeer) {
  await c.sendClose(1000, 'done');
  const o = await c.outcome(CLOSE_WAIT_MS);
  await up.waitFor(() => up.close.code !== null, 1000);
  t.same({ client: o.code, upstream: { code: up.close.code, reason: up.close.reason.toString() } },
    { client: 1000, upstream: { code: 1000, reason: 'done' } }, `${name}: close 1000 completes`);
  t.not(o.tcp, STILL_OPEN, `${name}: then the TCP connection ends (within ${CLOSE_WAIT_MS} ms)`);
}

async function runUpstream(t: Test, k: UpstreamCase, px: Px = main): Promise<void> {
  const pair = await rawPair(t, k.name, px);
  if (pair === null) return;
  const { c, up } = pair;
  try {
    await up.send(k.send, k.mode);
    if (k.deliver) {
      await up.send(sf(Op.Text, SENTINEL));
      await c.waitFor(() => c.frames.some(isSentinel) || c.close.code !== null || c.ended, ECHO_WAIT_MS);
      // The pongs travel the other hop: the sentinel reaching the client does not order them.
      const nPongs = (k.pongs ?? []).length;
      await up.waitFor(() => up.frames.filter((f) => f.opcode === Op.Pong).length >= nPongs, 2000);
      const got = c.nonClose();
      const i = got.findIndex(isSentinel);
      const before = i < 0 ? got : got.slice(0, i);
      t.same({
        delivered: showMsgs(messages(before)),
        controlToClient: before.filter((f) => f.opcode > Op.Binary).map((f) => opName(f.opcode)),
        upstreamGot: up.frames.map((f) => `${opName(f.opcode)} ${repr(f.payload)}`),
        sentinelBack: i >= 0,
        wire: wireProblems(c.frames, false),
        wireUp: wireProblems(up.frames, true),
      }, {
        delivered: showMsgs(k.deliver),
        controlToClient: [],
        upstreamGot: (k.pongs ?? []).map((p) => `pong ${repr(p)}`),
        sentinelBack: true,
        wire: [],
        wireUp: [],
      }, `${k.name}: delivered`);
      if (k.frames) {
        t.same(showFrames(wireFrames(before)), showFrames(k.frames), `${k.name}: frame boundaries, opcodes and FIN preserved`);
      }
      if (i >= 0) await cleanCloseRaw(t, k.name, c, up);
    } else {
      const o = await c.outcome(CLOSE_WAIT_MS);
      await up.waitFor(() => up.close.code !== null, 1000);
      const exp: Record<string, unknown> = {
        client: closeShape(k.client!),
        upstream: k.upstream === 'any' ? 'a close frame' : closeShape(k.upstream!),
      };
      const act: Record<string, unknown> = {
        client: seenShape(k.client!, o.code, o.reason),
        upstream: k.upstream === 'any' ? (up.close.code === null ? 'no close frame' : 'a close frame') : seenShape(k.upstream!, up.close.code, up.close.reason),
      };
      if (k.before) {
        exp.before = showMsgs(k.before);
        act.before = showMsgs(messages(c.frames));
      }
      exp.controlBefore = [];
      act.controlBefore = c.nonClose().filter((f) => f.opcode > Op.Binary).map((f) => opName(f.opcode));
      exp.wire = [];
      act.wire = [...wireProblems(c.frames, false), ...wireProblems(up.frames, true)];
      t.same(act, exp, `${k.name}: client ${k.client}, upstream ${k.upstream}`);
      t.not(o.tcp, STILL_OPEN, `${k.name}: then the TCP connection ends (within ${CLOSE_WAIT_MS} ms)`);
    }
  } finally {
    await endPair(t, k.name, px, c, up);
  }
}

// ------------------------------------------------------------------------------ client → raw upstream (frame by frame)

interface PassCase {
  name: string;
  send: Buffer[];
  mode?: WriteMode;
  /** The frames the upstream gets (and echoes back frame by frame to the client). */
  frames: Frm[];
  pongs?: Array<Buffer | string>;
}

/** Client frames reach the upstream as they were sent (re-masked), and the upstream's frames reach the client (unmasked). */
async function runPass(t: Test, k: PassCase, px: Px = main): Promise<void> {
  const pair = await rawPair(t, k.name, px);
  if (pair === null) return;
  const { c, up } = pair;
  try {
    await c.send(k.send, k.mode);
    await c.send(cf(Op.Text, SENTINEL));
    await c.waitFor(() => c.frames.some(isSentinel) || c.close.code !== null || c.ended, ECHO_WAIT_MS);
    const upData = up.frames.filter((f) => !isSentinel(f));
    const got = c.nonClose();
    const i = got.findIndex(isSentinel);
    const before = i < 0 ? got : got.slice(0, i);
    const expMsgs = messages(k.frames.map(([opcode, fin, p]) => ({ opcode, fin, payload: Buffer.from(p), rsv: 0, masked: true, minimalLength: true })));
    t.same({
      upstreamGot: showMsgs(messages(upData)),
      upstreamControl: upData.filter((f) => f.opcode > Op.Binary).map((f) => opName(f.opcode)),
      clientGot: showMsgs(messages(before)),
      pongs: before.filter((f) => f.opcode === Op.Pong).map((f) => repr(f.payload)),
      sentinelBack: i >= 0,
      wire: wireProblems(c.frames, false),
      wireUp: wireProblems(up.frames, true),
    }, {
      upstreamGot: showMsgs(expMsgs),
      upstreamControl: [],
      clientGot: showMsgs(expMsgs),
      pongs: (k.pongs ?? []).map(repr),
      sentinelBack: true,
      wire: [],
      wireUp: [],
    }, `${k.name}: messages and masking`);
    t.same({
      upstreamFrames: showFrames(wireFrames(upData)),
      clientFrames: showFrames(wireFrames(before.filter((f) => f.opcode <= Op.Binary))),
    }, {
      upstreamFrames: showFrames(k.frames),
      clientFrames: showFrames(k.frames),
    }, `${k.name}: frame boundaries, opcodes and FIN preserved both ways`);
    if (i >= 0) await cleanCloseRaw(t, k.name, c, up);
  } finally {
    await endPair(t, k.name, px, c, up);
  }
}

// ------------------------------------------------------------------------------ the proxy is unharmed

async function unharmed(t: Test, px: Px, what: string): Promise<void> {
  for (const path of ['/ws', '/raw']) {
    let echoed = '';
    try {
      const ws = await connect(`${px.base}${path}`);
      const text = `still here after ${what}`;
      ws.send(text);
      echoed = (await nextMessage(ws, 3000)).data.toString() === text ? 'echoes' : 'wrong echo';
      ws.close(1000);
      await closed(ws, 3000);
    } catch (err) {
      echoed = `failed: ${(err as Error).message}`;
    }
    t.same({ [path]: echoed, sessionsEnd: await settle(px) }, { [path]: 'echoes', sessionsEnd: true }, `after ${what}: a fresh ws client echoes on ${path}`);
  }
}

/** A family: every case in order, then the unharmed check. */
function family<K>(name: string, cases: K[], run: (t: Test, k: K) => Promise<void>, px: Px = main) {
  return async (t: Test) => {
    for (const k of cases) await run(t, k);
    await unharmed(t, px, name);
  };
}

// ------------------------------------------------------------------------------ case tables

const LENGTHS = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537];
const DATA_OPS = [Op.Text, Op.Binary];

/** Client-side protocol violation: client 1002, upstream 1001. */
const c1002 = (name: string, send: Buffer[], mode?: WriteMode): ClientCase => ({ name, send, mode, client: 1002, upstream: 1001 });
/** Upstream-side protocol violation: upstream 1002, client 1014. */
const u1002 = (name: string, send: Buffer[], mode?: WriteMode): UpstreamCase => ({ name, send, mode, upstream: 1002, client: 1014 });

// --- 1. framing
const framingClient: ClientCase[] = [
  ...LENGTHS.flatMap((n) => DATA_OPS.map((op): ClientCase => {
    const p = payloadFor(op, n);
    return { name: `${opName(op)} ${n} bytes`, send: [cf(op, p)], echo: [[op, p]] };
  })),
  ...[0, 1, 125, 126, 127, 128].map((n): ClientCase => ({ name: `text ${n} bytes, one byte per write`, send: [cf(Op.Text, txt(n))], mode: 'bytes', echo: [[Op.Text, txt(n)]] })),
  { name: 'binary 128 bytes, one byte per write', send: [cf(Op.Binary, bin(128))], mode: 'bytes', echo: [[Op.Binary, bin(128)]] },
  { name: 'binary 65536 bytes in 997-byte writes', send: [cf(Op.Binary, bin(65536))], mode: 997, echo: [[Op.Binary, bin(65536)]] },
  { name: 'text 65535 bytes in 1000-byte writes', send: [cf(Op.Text, txt(65535))], mode: 1000, echo: [[Op.Text, txt(65535)]] },
  {
    name: 'three messages in one write',
    send: [cf(Op.Text, 'one'), cf(Op.Binary, bin(3)), cf(Op.Text, 'three')],
    echo: [[Op.Text, 'one'], [Op.Binary, bin(3)], [Op.Text, 'three']],
  },
  c1002('64-bit length with the top bit set', [cf(Op.Binary, bin(16), { len: 1n << 63n })]),
];
const framingUpstream: UpstreamCase[] = [
  ...LENGTHS.flatMap((n) => DATA_OPS.map((op): UpstreamCase => {
    const p = payloadFor(op, n);
    return { name: `${opName(op)} ${n} bytes`, send: [sf(op, p)], deliver: [[op, p]] };
  })),
  ...[0, 1, 125, 126, 127, 128].map((n): UpstreamCase => ({ name: `binary ${n} bytes, one byte per write`, send: [sf(Op.Binary, bin(n))], mode: 'bytes', deliver: [[Op.Binary, bin(n)]] })),
  { name: 'text 128 bytes, one byte per write', send: [sf(Op.Text, txt(128))], mode: 'bytes', deliver: [[Op.Text, txt(128)]] },
  { name: 'binary 65536 bytes in 997-byte writes', send: [sf(Op.Binary, bin(65536))], mode: 997, deliver: [[Op.Binary, bin(65536)]] },
  { name: 'text 65535 bytes in 1000-byte writes', send: [sf(Op.Text, txt(65535))], mode: 1000, deliver: [[Op.Text, txt(65535)]] },
  {
    name: 'three messages in one write',
    send: [sf(Op.Text, 'one'), sf(Op.Binary, bin(3)), sf(Op.Text, 'three')],
    deliver: [[Op.Text, 'one'], [Op.Binary, bin(3)], [Op.Text, 'three']],
  },
  u1002('64-bit length with the top bit set', [sf(Op.Binary, bin(16), { len: 1n << 63n })]),
];

// --- 2. ping / pong
const tenPings = Array.from({ length: 10 }, (_, i) => `ping ${i}`);
const pingClient: ClientCase[] = [
  { name: 'ping, empty', send: [cf(Op.Ping, '')], echo: [], pongs: [''] },
  { name: 'ping "Hello, world!"', send: [cf(Op.Ping, 'Hello, world!')], echo: [], pongs: ['Hello, world!'] },
  { name: 'ping, 125 binary bytes', send: [cf(Op.Ping, bin(125))], echo: [], pongs: [bin(125)] },
  { name: 'ping, 125 bytes, one byte per write', send: [cf(Op.Ping, bin(125, 3))], mode: 'bytes', echo: [], pongs: [bin(125, 3)] },
  c1002('ping, 126 bytes (control frame over 125)', [cf(Op.Ping, bin(126))]),
  c1002('pong, 126 bytes (control frame over 125)', [cf(Op.Pong, bin(126))]),
  { name: 'unsolicited pong, empty (ignored)', send: [cf(Op.Pong, '')], echo: [] },
  { name: 'unsolicited pong with payload (ignored)', send: [cf(Op.Pong, 'unsolicited')], echo: [] },
  { name: 'unsolicited pong, then ping', send: [cf(Op.Pong, 'unsolicited'), cf(Op.Ping, 'after pong')], echo: [], pongs: ['after pong'] },
  { name: '10 pings in one write', send: tenPings.map((p) => cf(Op.Ping, p)), echo: [], pongs: tenPings },
  { name: '10 pings, one write each (10 ms apart)', send: tenPings.map((p) => cf(Op.Ping, p)), mode: 'frames', echo: [], pongs: tenPings },
  {
    name: 'ping between two messages',
    send: [cf(Op.Text, 'a'), cf(Op.Ping, 'between'), cf(Op.Binary, 'b')],
    echo: [[Op.Text, 'a'], [Op.Binary, 'b']],
    pongs: ['between'],
  },
];
const pingUpstream: UpstreamCase[] = [
  { name: 'ping, empty', send: [sf(Op.Ping, '')], deliver: [], pongs: [''] },
  { name: 'ping "Hello, world!"', send: [sf(Op.Ping, 'Hello, world!')], deliver: [], pongs: ['Hello, world!'] },
  { name: 'ping, 125 binary bytes', send: [sf(Op.Ping, bin(125))], deliver: [], pongs: [bin(125)] },
  { name: 'ping, 125 bytes, one byte per write', send: [sf(Op.Ping, bin(125, 3))], mode: 'bytes', deliver: [], pongs: [bin(125, 3)] },
  u1002('ping, 126 bytes (control frame over 125)', [sf(Op.Ping, bin(126))]),
  u1002('pong, 126 bytes (control frame over 125)', [sf(Op.Pong, bin(126))]),
  { name: 'unsolicited pong, empty (ignored)', send: [sf(Op.Pong, '')], deliver: [] },
  { name: 'unsolicited pong with payload (ignored)', send: [sf(Op.Pong, 'unsolicited')], deliver: [] },
  { name: 'unsolicited pong, then ping', send: [sf(Op.Pong, 'unsolicited'), sf(Op.Ping, 'after pong')], deliver: [], pongs: ['after pong'] },
  { name: '10 pings in one write', send: tenPings.map((p) => sf(Op.Ping, p)), deliver: [], pongs: tenPings },
  { name: '10 pings, one write each (10 ms apart)', send: tenPings.map((p) => sf(Op.Ping, p)), mode: 'frames', deliver: [], pongs: tenPings },
  {
    name: 'ping between two messages',
    send: [sf(Op.Text, 'a'), sf(Op.Ping, 'between'), sf(Op.Binary, 'b')],
    deliver: [[Op.Text, 'a'], [Op.Binary, 'b']],
    pongs: ['between'],
  },
];

// --- 3. reserved bits (no extension is negotiated on either hop)
const rsvCases = (f: typeof cf) => [
  ['RSV1 on text', [f(Op.Text, 'Hello', { rsv: 4 })]],
  ['RSV2 on text', [f(Op.Text, 'Hello', { rsv: 2 })]],
  ['RSV3 on text', [f(Op.Text, 'Hello', { rsv: 1 })]],
  ['RSV1+RSV2 on text', [f(Op.Text, 'Hello', { rsv: 6 })]],
  ['RSV1+RSV3 on binary', [f(Op.Binary, bin(8), { rsv: 5 })]],
  ['RSV2+RSV3 on ping', [f(Op.Ping, 'Hello', { rsv: 3 })]],
  ['RSV1+RSV2+RSV3 on close', [f(Op.Close, closeBody(1000), { rsv: 7 })]],
  ['RSV1 on a continuation', [f(Op.Text, 'frag', { fin: false }), f(Op.Cont, 'ment', { rsv: 4 })]],
  ['RSV2 on text after a valid text', [f(Op.Text, 'valid'), f(Op.Text, 'Hello', { rsv: 2 })]],
] as Array<[string, Buffer[]]>;
const rsvClient = rsvCases(cf).map(([n, s]) => c1002(n, s));
const rsvUpstream = rsvCases(sf).map(([n, s]) => u1002(n, s));

// --- 4. reserved opcodes
const RESERVED_OPS = [0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf];
const opClient = RESERVED_OPS.map((op, i) => c1002(`reserved opcode 0x${op.toString(16)}${i % 2 ? ' with payload' : ''}`, [cf(op, i % 2 ? 'reserved' : '')]));
const opUpstream = RESERVED_OPS.map((op, i) => u1002(`reserved opcode 0x${op.toString(16)}${i % 2 ? ' with payload' : ''}`, [sf(op, i % 2 ? 'reserved' : '')]));

// --- 5. fragmentation
/** Valid fragmented sequences: frames (op, fin, payload), the pings among them, and the messages they make. */
interface FragSeq { name: string; frames: Frm[]; mode?: WriteMode; messages: Msg[]; pongs?: string[] }
const fivePieces = ['one ', 'two ', 'three ', 'four ', 'five'];
const hundred = Array.from({ length: 100 }, (_, i) => String.fromCharCode(0x41 + (i % 26)));
const fragValid: FragSeq[] = [
  { name: 'text in 2 fragments', frames: [[Op.Text, false, 'fragment1'], [Op.Cont, true, 'fragment2']], messages: [[Op.Text, 'fragment1fragment2']] },
  { name: 'binary in 3 fragments', frames: [[Op.Binary, false, bin(10)], [Op.Cont, false, bin(20, 1)], [Op.Cont, true, bin(30, 2)]], messages: [[Op.Binary, Buffer.concat([bin(10), bin(20, 1), bin(30, 2)])]] },
  { name: 'text in 2 fragments, one byte per write', frames: [[Op.Text, false, 'fragment1'], [Op.Cont, true, 'fragment2']], mode: 'bytes', messages: [[Op.Text, 'fragment1fragment2']] },
  { name: 'text in 2 fragments, one write each', frames: [[Op.Text, false, 'fragment1'], [Op.Cont, true, 'fragment2']], mode: 'frames', messages: [[Op.Text, 'fragment1fragment2']] },
  {
    name: 'ping between 2 fragments',
    frames: [[Op.Text, false, 'fragment1'], [Op.Ping, true, 'inside'], [Op.Cont, true, 'fragment2']],
    messages: [[Op.Text, 'fragment1fragment2']], pongs: ['inside'],
  },
  {
    name: 'ping between 2 fragments, one byte per write',
    frames: [[Op.Text, false, 'fragment1'], [Op.Ping, true, 'inside'], [Op.Cont, true, 'fragment2']], mode: 'bytes',
    messages: [[Op.Text, 'fragment1fragment2']], pongs: ['inside'],
  },
  {
    name: 'text in 5 fragments, a ping after each but the last, one write each',
    frames: fivePieces.flatMap((p, i): Frm[] => (i < 4 ? [[i === 0 ? Op.Text : Op.Cont, false, p], [Op.Ping, true, `ping ${i}`]] : [[Op.Cont, true, p]])),
    mode: 'frames',
    messages: [[Op.Text, fivePieces.join('')]], pongs: ['ping 0', 'ping 1', 'ping 2', 'ping 3'],
  },
  {
    name: 'unsolicited pong between fragments (ignored)',
    frames: [[Op.Binary, false, 'ab'], [Op.Pong, true, 'unsolicited'], [Op.Cont, true, 'cd']],
    messages: [[Op.Binary, 'abcd']],
  },
  { name: 'zero-length text in 3 zero-length fragments', frames: [[Op.Text, false, ''], [Op.Cont, false, ''], [Op.Cont, true, '']], messages: [[Op.Text, '']] },
  { name: 'zero-length fragment in the middle', frames: [[Op.Text, false, 'ab'], [Op.Cont, false, ''], [Op.Cont, true, 'c']], messages: [[Op.Text, 'abc']] },
  { name: 'zero-length first fragment', frames: [[Op.Text, false, ''], [Op.Cont, true, 'abc']], messages: [[Op.Text, 'abc']] },
  { name: 'zero-length last fragment', frames: [[Op.Binary, false, 'abc'], [Op.Cont, true, '']], messages: [[Op.Binary, 'abc']] },
  { name: 'binary in 2 large fragments (40000 + 25000)', frames: [[Op.Binary, false, bin(40000)], [Op.Cont, true, bin(25000, 9)]], messages: [[Op.Binary, Buffer.concat([bin(40000), bin(25000, 9)])]] },
  {
    name: 'text in 100 one-byte fragments',
    frames: hundred.map((ch, i): Frm => [i === 0 ? Op.Text : Op.Cont, i === 99, ch]),
    messages: [[Op.Text, hundred.join('')]],
  },
  {
    name: 'two fragmented messages back to back',
    frames: [[Op.Text, false, 'a'], [Op.Cont, true, 'b'], [Op.Binary, false, 'c'], [Op.Cont, true, 'd']],
    messages: [[Op.Text, 'ab'], [Op.Binary, 'cd']],
  },
];
const fragBad = (f: typeof cf): Array<[string, Buffer[]]> => [
  ['fragmented ping', [f(Op.Ping, 'frag', { fin: false }), f(Op.Cont, 'ment')]],
  ['fragmented pong', [f(Op.Pong, 'frag', { fin: false }), f(Op.Cont, 'ment')]],
  ['fragmented close', [f(Op.Close, closeBody(1000), { fin: false }), f(Op.Cont, 'ment')]],
  ['continuation (FIN) with no message open', [f(Op.Cont, 'orphan')]],
  ['continuation (no FIN) with no message open', [f(Op.Cont, 'orphan', { fin: false })]],
  ['continuation after a finished message', [f(Op.Text, 'done'), f(Op.Cont, 'orphan')]],
  ['new text frame inside a fragmented message', [f(Op.Text, 'frag', { fin: false }), f(Op.Text, 'new')]],
  ['new binary fragment inside a fragmented text message', [f(Op.Text, 'frag', { fin: false }), f(Op.Binary, 'new', { fin: false }), f(Op.Cont, 'end')]],
];
const encodeSeq = (f: typeof cf, frames: Frm[]) => frames.map(([op, fin, p]) => f(op, p, { fin }));
const dataFrames = (frames: Frm[]) => frames.filter(([op]) => op <= Op.Binary);
const fragClient: ClientCase[] = [
  ...fragValid.map((s): ClientCase => ({ name: s.name, send: encodeSeq(cf, s.frames), mode: s.mode, echo: s.messages, pongs: s.pongs })),
  ...fragBad(cf).map(([n, s]) => c1002(n, s)),
];
const fragUpstream: UpstreamCase[] = [
  ...fragValid.map((s): UpstreamCase => ({
    name: s.name, send: encodeSeq(sf, s.frames), mode: s.mode, deliver: s.messages, pongs: s.pongs,
    frames: dataFrames(s.frames).length > s.messages.length ? dataFrames(s.frames) : undefined,
  })),
  ...fragBad(sf).map(([n, s]) => u1002(n, s)),
];
const fragPass: PassCase[] = fragValid
  .filter((s) => dataFrames(s.frames).length > s.messages.length && s.mode !== 'bytes')
  .map((s) => ({ name: s.name, send: encodeSeq(cf, s.frames), mode: s.mode, frames: dataFrames(s.frames), pongs: s.pongs }));

// --- 6. UTF-8
const KOSME = u8('κόσμε'); // ce ba e1 bd b9 cf 83 ce bc ce b5
const utf8Valid: Array<[string, Buffer]> = [
  ['Hello-µ@ßöäüàá-UTF-8!!', u8('Hello-µ@ßöäüàá-UTF-8!!')],
  ['κόσμε', KOSME],
  ['U+0000', u8([0x00])],
  ['U+007F', u8([0x7f])],
  ['U+0080', u8([0xc2, 0x80])],
  ['U+07FF', u8([0xdf, 0xbf])],
  ['U+0800', u8([0xe0, 0xa0, 0x80])],
  ['U+D7FF (before the surrogates)', u8([0xed, 0x9f, 0xbf])],
  ['U+E000 (after the surrogates)', u8([0xee, 0x80, 0x80])],
  ['U+FEFF', u8([0xef, 0xbb, 0xbf])],
  ['U+FFFD', u8([0xef, 0xbf, 0xbd])],
  ['U+FFFF', u8([0xef, 0xbf, 0xbf])],
  ['U+10000', u8([0xf0, 0x90, 0x80, 0x80])],
  ['U+1F600', u8([0xf0, 0x9f, 0x98, 0x80])],
  ['U+10FFFF', u8([0xf4, 0x8f, 0xbf, 0xbf])],
];
const GRIN = [0xf0, 0x9f, 0x98, 0x80];
/** Valid text split inside code points: the fragments, and the whole. */
const utf8ValidSplit: Array<[string, Buffer[]]> = [
  ['κόσμε in one-byte fragments', [...KOSME].map((b) => Buffer.from([b]))],
  ['U+1F600 split 1|3', [u8('a', GRIN.slice(0, 1)), u8(GRIN.slice(1), 'b')]],
  ['U+1F600 split 2|2', [u8('a', GRIN.slice(0, 2)), u8(GRIN.slice(2), 'b')]],
  ['U+1F600 split 3|1', [u8('a', GRIN.slice(0, 3)), u8(GRIN.slice(3), 'b')]],
  ['U+10FFFF split 2|2', [u8([0xf4, 0x8f]), u8([0xbf, 0xbf])]],
  ['U+1F600 split 2|0|2 (an empty fragment inside the code point)', [u8('a', GRIN.slice(0, 2)), u8(''), u8(GRIN.slice(2), 'b')]],
];
const utf8Invalid: Array<[string, Buffer]> = [
  ['surrogate U+D800 (ED A0 80) inside κόσμε', u8('κόσμε', [0xed, 0xa0, 0x80], 'edited')],
  ['surrogate U+DFFF (ED BF BF)', u8('a', [0xed, 0xbf, 0xbf])],
  ['above U+10FFFF (F4 90 80 80)', u8('a', [0xf4, 0x90, 0x80, 0x80])],
  ['above U+10FFFF (F7 BF BF BF)', u8([0xf7, 0xbf, 0xbf, 0xbf])],
  ['overlong "/" in 2 bytes (C0 AF)', u8([0xc0, 0xaf])],
  ['overlong "/" in 3 bytes (E0 80 AF)', u8([0xe0, 0x80, 0xaf])],
  ['overlong "/" in 4 bytes (F0 80 80 AF)', u8([0xf0, 0x80, 0x80, 0xaf])],
  ['overlong NUL (C0 80)', u8('a', [0xc0, 0x80], 'b')],
  ['largest 2-byte overlong (C1 BF)', u8([0xc1, 0xbf])],
  ['largest 3-byte overlong (E0 9F BF)', u8([0xe0, 0x9f, 0xbf])],
  ['largest 4-byte overlong (F0 8F BF BF)', u8([0xf0, 0x8f, 0xbf, 0xbf])],
  ['lone continuation byte 80', u8('a', [0x80], 'b')],
  ['lone continuation byte BF', u8([0xbf])],
  ['byte FE', u8('a', [0xfe])],
  ['byte FF', u8([0xff], 'a')],
  ['5-byte sequence (F8 88 80 80 80)', u8([0xf8, 0x88, 0x80, 0x80, 0x80])],
  ['truncated sequence in the middle (E2 82 then "b")', u8('a', [0xe2, 0x82], 'b')],
  ['truncated 3-byte sequence at message end (E2 82)', u8('abc', [0xe2, 0x82])],
  ['truncated 4-byte sequence at message end (F0 9F 98)', u8('abc', [0xf0, 0x9f, 0x98])],
  ['truncated 2-byte sequence at message end (C3)', u8('abc', [0xc3])],
];
const utf8InvalidSplit: Array<[string, Buffer[]]> = [
  ['surrogate ED|A0 80 across fragments', [u8('κόσμε', [0xed]), u8([0xa0, 0x80], 'edited')]],
  ['above U+10FFFF F4|90 80 80 across fragments', [u8('ab', [0xf4]), u8([0x90, 0x80, 0x80])]],
  ['overlong C0|AF across fragments', [u8('ab', [0xc0]), u8([0xaf])]],
  ['truncated at message end: E2|82 and nothing more', [u8('ab', [0xe2]), u8([0x82])]],
  ['truncated at message end: E2 82 then an empty final fragment', [u8('ab', [0xe2, 0x82]), u8('')]],
  ['truncated across fragments: E2 82|"cd"', [u8('ab', [0xe2, 0x82]), u8('cd')]],
];
const textFrags = (f: typeof cf, parts: Buffer[]) => parts.map((p, i) => f(i === 0 ? Op.Text : Op.Cont, p, { fin: i === parts.length - 1 }));
const utf8Client: ClientCase[] = [
  ...utf8Valid.map(([n, b]): ClientCase => ({ name: `valid ${n}`, send: [cf(Op.Text, b)], echo: [[Op.Text, b]] })),
  ...utf8ValidSplit.map(([n, parts]): ClientCase => ({ name: `valid, ${n}`, send: textFrags(cf, parts), echo: [[Op.Text, Buffer.concat(parts)]] })),
  ...utf8Invalid.map(([n, b]): ClientCase => ({ name: `invalid: ${n}`, send: [cf(Op.Text, b)], client: 1007, upstream: 1001 })),
  ...utf8InvalidSplit.map(([n, parts]): ClientCase => ({ name: `invalid: ${n}`, send: textFrags(cf, parts), client: 1007, upstream: 1001 })),
  {
    name: 'invalid: surrogate in the first fragment of a message never finished (fail fast)',
    send: [cf(Op.Text, u8('ab', [0xed, 0xa0, 0x80]), { fin: false })], client: 1007, upstream: 1001,
  },
];
const utf8Upstream: UpstreamCase[] = [
  ...utf8Valid.map(([n, b]): UpstreamCase => ({ name: `valid ${n}`, send: [sf(Op.Text, b)], deliver: [[Op.Text, b]] })),
  ...utf8ValidSplit.map(([n, parts]): UpstreamCase => ({
    name: `valid, ${n}`, send: textFrags(sf, parts), deliver: [[Op.Text, Buffer.concat(parts)]],
    frames: parts.map((p, i): Frm => [i === 0 ? Op.Text : Op.Cont, i === parts.length - 1, p]),
  })),
  ...utf8Invalid.map(([n, b]): UpstreamCase => ({ name: `invalid: ${n}`, send: [sf(Op.Text, b)], upstream: 1007, client: 1014 })),
  ...utf8InvalidSplit.map(([n, parts]): UpstreamCase => ({ name: `invalid: ${n}`, send: textFrags(sf, parts), upstream: 1007, client: 1014 })),
  {
    name: 'invalid: surrogate in the first fragment of a message never finished (fail fast)',
    send: [sf(Op.Text, u8('ab', [0xed, 0xa0, 0x80]), { fin: false })], upstream: 1007, client: 1014,
  },
];

// --- 7. close
const VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999];
const INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535];
const reasonFor = (code: number) => `reason ${code} ✓`;
const REASON_123 = `${'x'.repeat(120)}✓`; // 123 bytes: the longest a close frame holds
const REASON_124 = `${'x'.repeat(121)}✓`; // payload 126 bytes: a control frame over 125
const BAD_REASON = u8('ab', [0xed, 0xa0, 0x80]);
const closeClient: ClientCase[] = [
  ...VALID_CODES.map((code): ClientCase => ({ name: `close ${code} with a reason`, send: [cf(Op.Close, closeBody(code, reasonFor(code)))], client: code, upstream: [code, reasonFor(code)] })),
  { name: 'close 1000 without a reason', send: [cf(Op.Close, closeBody(1000))], client: 1000, upstream: [1000, ''] },
  { name: 'close 1000 with a 123-byte reason', send: [cf(Op.Close, closeBody(1000, REASON_123))], client: 1000, upstream: [1000, REASON_123] },
  { name: 'close with an empty payload', send: [cf(Op.Close, '')], client: 1005, upstream: [1005, ''] },
  { name: 'close 1000, one byte per write', send: [cf(Op.Close, closeBody(1000, 'slow'))], mode: 'bytes', client: 1000, upstream: [1000, 'slow'] },
  ...INVALID_CODES.map((code) => c1002(`close with invalid code ${code}`, [cf(Op.Close, closeBody(code, 'bad'))])),
  c1002('close with a 1-byte payload', [cf(Op.Close, Buffer.from([0x03]))]),
  c1002('close with a 124-byte reason (payload over 125)', [cf(Op.Close, closeBody(1000, REASON_124))]),
  { name: 'close reason not UTF-8', send: [cf(Op.Close, closeBody(1000, BAD_REASON))], client: 1007, upstream: 1001 },
  { name: 'text, then close: the echo comes before the close', send: [cf(Op.Text, 'last words'), cf(Op.Close, closeBody(1000, 'bye'))], client: 1000, upstream: [1000, 'bye'], before: [[Op.Text, 'last words']], upstreamGot: [[Op.Text, 'last words']] },
  { name: 'close, then text: the text goes nowhere', send: [cf(Op.Close, closeBody(1000, 'bye')), cf(Op.Text, 'too late')], client: 1000, upstream: [1000, 'bye'], before: [], upstreamGot: [] },
  { name: 'close, then ping: no pong', send: [cf(Op.Close, closeBody(1000, 'bye')), cf(Op.Ping, 'too late')], client: 1000, upstream: [1000, 'bye'], before: [] },
  { name: 'close twice: the second is ignored', send: [cf(Op.Close, closeBody(1000, 'bye')), cf(Op.Close, closeBody(1001, 'again'))], client: 1000, upstream: [1000, 'bye'] },
  { name: 'close in the middle of a fragmented message', send: [cf(Op.Text, 'frag', { fin: false }), cf(Op.Close, closeBody(1000, 'bye'))], client: 1000, upstream: [1000, 'bye'], upstreamGot: [] },
];
const closeUpstream: UpstreamCase[] = [
  ...VALID_CODES.map((code): UpstreamCase => ({ name: `close ${code} with a reason`, send: [sf(Op.Close, closeBody(code, reasonFor(code)))], client: [code, reasonFor(code)], upstream: 'any' })),
  { name: 'close 1000 without a reason', send: [sf(Op.Close, closeBody(1000))], client: [1000, ''], upstream: 'any' },
  { name: 'close 1000 with a 123-byte reason', send: [sf(Op.Close, closeBody(1000, REASON_123))], client: [1000, REASON_123], upstream: 'any' },
  { name: 'close with an empty payload', send: [sf(Op.Close, '')], client: 1005, upstream: 'any' },
  { name: 'close 1000, one byte per write', send: [sf(Op.Close, closeBody(1000, 'slow'))], mode: 'bytes', client: [1000, 'slow'], upstream: 'any' },
  ...INVALID_CODES.map((code) => u1002(`close with invalid code ${code}`, [sf(Op.Close, closeBody(code, 'bad'))])),
  u1002('close with a 1-byte payload', [sf(Op.Close, Buffer.from([0x03]))]),
  u1002('close with a 124-byte reason (payload over 125)', [sf(Op.Close, closeBody(1000, REASON_124))]),
  { name: 'close reason not UTF-8', send: [sf(Op.Close, closeBody(1000, BAD_REASON))], upstream: 1007, client: 1014 },
  { name: 'text, then close: the text comes before the close', send: [sf(Op.Text, 'last words'), sf(Op.Close, closeBody(1000, 'bye'))], client: [1000, 'bye'], upstream: 'any', before: [[Op.Text, 'last words']] },
  { name: 'close, then text: the text goes nowhere', send: [sf(Op.Close, closeBody(1000, 'bye')), sf(Op.Text, 'too late')], client: [1000, 'bye'], upstream: 'any', before: [] },
];

// --- 8. masking
const maskClient: ClientCase[] = [
  c1002('unmasked text', [cf(Op.Text, 'Hello, world!', { masked: false })]),
  c1002('unmasked binary', [cf(Op.Binary, bin(32), { masked: false })]),
  c1002('unmasked ping', [cf(Op.Ping, 'Hello', { masked: false })]),
  c1002('unmasked close', [cf(Op.Close, closeBody(1000, 'bye'), { masked: false })]),
  c1002('masked first fragment, unmasked continuation', [cf(Op.Text, 'frag', { fin: false }), cf(Op.Cont, 'ment', { masked: false })]),
];
const maskUpstream: UpstreamCase[] = [
  u1002('masked text', [sf(Op.Text, 'Hello, world!', { masked: true })]),
  u1002('masked binary', [sf(Op.Binary, bin(32), { masked: true })]),
  u1002('masked ping', [sf(Op.Ping, 'Hello', { masked: true })]),
  u1002('masked close', [sf(Op.Close, closeBody(1000, 'bye'), { masked: true })]),
  u1002('unmasked first fragment, masked continuation', [sf(Op.Text, 'frag', { fin: false }), sf(Op.Cont, 'ment', { masked: true })]),
];
const maskPass: PassCase[] = [{
  name: 'client frames re-masked towards the upstream, upstream frames unmasked to the client',
  send: [cf(Op.Text, 'masked text'), cf(Op.Ping, 'p'), cf(Op.Binary, bin(300))],
  frames: [[Op.Text, true, 'masked text'], [Op.Binary, true, bin(300)]],
  pongs: ['p'],
}];

// --- 9. limits (maxFrameBytes = LIMIT on the small proxy)
const limitSeqs = (f: typeof cf): Array<[string, Buffer[], Msg | null]> => [
  [`binary of exactly ${LIMIT} bytes`, [f(Op.Binary, bin(LIMIT))], [Op.Binary, bin(LIMIT)]],
  [`text of exactly ${LIMIT} bytes`, [f(Op.Text, txt(LIMIT))], [Op.Text, txt(LIMIT)]],
  [`fragments adding up to exactly ${LIMIT} bytes`, [f(Op.Binary, bin(512), { fin: false }), f(Op.Cont, bin(512, 1))], [Op.Binary, Buffer.concat([bin(512), bin(512, 1)])]],
  [`binary of ${LIMIT + 1} bytes`, [f(Op.Binary, bin(LIMIT + 1))], null],
  [`text of ${LIMIT + 1} bytes`, [f(Op.Text, txt(LIMIT + 1))], null],
  ['binary of 65536 bytes (far over)', [f(Op.Binary, bin(65536))], null],
  [`2 fragments adding up to ${LIMIT + 1} bytes`, [f(Op.Binary, bin(512), { fin: false }), f(Op.Cont, bin(513, 1))], null],
  [`5 text fragments adding up to ${LIMIT + 1} bytes`, Array.from({ length: 5 }, (_, i) => f(i === 0 ? Op.Text : Op.Cont, txt(205), { fin: i === 4 })), null],
  ['11 fragments of 100 bytes (1100)', Array.from({ length: 11 }, (_, i) => f(i === 0 ? Op.Binary : Op.Cont, bin(100, i), { fin: i === 10 })), null],
];
const limitClient: ClientCase[] = limitSeqs(cf).map(([name, send, m]) => (m ? { name, send, echo: [m] } : { name, send, client: 1009, upstream: 1009 }));
const limitUpstream: UpstreamCase[] = limitSeqs(sf).map(([name, send, m]) => (m ? { name, send, deliver: [m] } : { name, send, upstream: 1009, client: 1009 }));

// ------------------------------------------------------------------------------ the families

const both = (name: string, clientCases: ClientCase[], upstreamCases: UpstreamCase[], px: Px = main) => {
  t.test(`${name}: client → upstream`, family(name, clientCases, (t, k) => runClient(t, k, px), px));
  t.test(`${name}: upstream → client`, family(name, upstreamCases, (t, k) => runUpstream(t, k, px), px));
};

both('framing', framingClient, framingUpstream);
both('ping/pong', pingClient, pingUpstream);
both('reserved bits', rsvClient, rsvUpstream);
both('reserved opcodes', opClient, opUpstream);
both('fragmentation', fragClient, fragUpstream);
t.test('fragmentation: client frames reach the upstream frame by frame', family('fragmentation pass-through', fragPass, (t, k) => runPass(t, k)));
both('UTF-8', utf8Client, utf8Upstream);
both('close', closeClient, closeUpstream);
both('masking', maskClient, maskUpstream);
t.test('masking: re-masked towards the upstream, unmasked to the client', family('masking pass-through', maskPass, (t, k) => runPass(t, k)));
both('limits', limitClient, limitUpstream, small);
