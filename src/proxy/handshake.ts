/**
 * The upstream leg's opening: connect (net or tls), send the HTTP/1.1 upgrade request,
 * read and check the answer (RFC 6455 §4.1). Resolves with the socket and whatever
 * bytes followed the response headers (the first frames may share the packet).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { SluiceError } from '../errors.js';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** The longest upstream response head we read before calling it garbage. */
const MAX_RESPONSE_HEAD = 16 * 1024;
/** The longest body of an upstream refusal that we pass through to the client. */
const MAX_REFUSAL_BODY = 16 * 1024;

/** A failed dial; `status` is the HTTP status the client's upgrade is answered with. */
export class UpstreamError extends SluiceError {
  readonly status: number;
  /** For a refusal passed through: the upstream's status line text and body. */
  readonly statusText: string;
  readonly body: Buffer | undefined;
  /** A refusal: the upstream's own status and body, whatever is passed on. */
  readonly answer: { status: number; body: Buffer } | undefined;
  constructor(code: string, status: number, message: string, statusText = '', body?: Buffer, answer?: { status: number; body: Buffer }) {
    super(code, message, 1014);
    this.name = 'UpstreamError';
    this.status = status;
    this.statusText = statusText;
    this.body = body;
    this.answer = answer;
  }
}

export interface DialOptions {
  url: URL;
  /** Request target: path and query. */
  target: string;
  /** End-to-end headers to send, already filtered of hop-by-hop ones. */
  headers: Array<[string, string]>;
  protocols: string[];
  /** Sec-WebSocket-Extensions to offer (the client's permessage-deflate offer, passed on), or ''. */
  extensions?: string;
  timeoutMs: number;
  tls?: { caFile?: string; rejectUnauthorized: boolean; servername?: string };
  /**
   * An upstream through a tunnel agent: the byte stream to run the handshake over (a yamux
   * stream the agent answered ok), instead of a TCP or TLS connection to `url`.
   */
  open?: () => Promise<Duplex>;
}

export interface DialResult {
  /** A TCP or TLS socket, or a tunnel's stream: the session uses only what a Duplex has. */
  socket: Duplex;
  /**
   * Where the socket's data goes from now on. For ws:// upstreams the chunk is a view
   * of a read buffer shared by every upstream socket of this thread (net's `onread`):
   * valid only during the call, so whatever must outlive it is copied (the codec's
   * carry-over and fragment assembly do exactly that).
   */
  setDataHandler(fn: (chunk: Buffer) => void): void;
  /** The chunks are views of the shared read buffer (ws://): nothing may keep them. */
  readsBorrowed: boolean;
  /** The subprotocol the upstream picked, or ''. */
  protocol: string;
  /** The extensions the upstream accepted (Sec-WebSocket-Extensions of its 101), or ''. */
  extensions: string;
  /** Bytes that arrived after the response head. */
  head: Buffer;
}

const caCache = new Map<string, Buffer>();

/**
 * One read buffer for every plain upstream socket of this thread. Reads into it are
 * handled synchronously, so sharing is safe; it saves a 64 KiB allocation per read and
 * the per-read 'data' event (measured with bench/run.js and perf: malloc and
 * EventEmitter work were visible per message on the upstream leg).
 */
let sharedReadBuffer: Buffer | null = null;
const READ_BUFFER_BYTES = 64 * 1024;

/** A mutable data route, so the handshake and then the session can own the reads. */
interface DataRoute {
  fn: (chunk: Buffer) => void;
}

function connect(opts: DialOptions, route: DataRoute): net.Socket {
  const { url } = opts;
  const secure = url.protocol === 'wss:';
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const port = Number(url.port || (secure ? 443 : 80));
  if (!secure) {
    sharedReadBuffer ??= Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
    return net.connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: sharedReadBuffer,
        callback: (nread: number, buf: Uint8Array) => {
          route.fn((buf as Buffer).subarray(0, nread));
          return true;
        },
      },
    });
  }
  let ca: Buffer | undefined;
  if (opts.tls?.caFile) {
    ca = caCache.get(opts.tls.caFile);
    if (!ca) {
      ca = readFileSync(opts.tls.caFile);
      caCache.set(opts.tls.caFile, ca);
    }
  }
  const servername = opts.tls?.servername ?? (net.isIP(host) ? undefined : host);
  const socket = tls.connect({
    host,
    port,
    servername,
    ca,
    rejectUnauthorized: opts.tls?.rejectUnauthorized ?? true,
    ALPNProtocols: ['http/1.1'],
  });
  socket.on('data', (chunk: Buffer) => route.fn(chunk));
  return socket;
}

/** Dial the upstream and complete the WebSocket handshake. */
export function dial(opts: DialOptions): Promise<DialResult> {
  return new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64');
    const expectedAccept = createHash('sha1').update(key + WS_GUID).digest('base64');
    let socket: Duplex | null = null;
    const route: DataRoute = { fn: (chunk) => onHandshakeData(chunk) };
    let settled = false;
    let received: Buffer = Buffer.alloc(0);
    let refusal: { status: number; text: string; bodyStart: number; contentLength: number } | undefined;

    const fail = (err: UpstreamError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      route.fn = () => {};
      if (socket !== null) {
        socket.on('error', () => {});
        socket.destroy();
      }
      reject(err);
    };
    const timer = setTimeout(() => {
      fail(new UpstreamError('SLUICE_ERR_UPSTREAM_TIMEOUT', 504, `upstream ${opts.url.host} did not complete the handshake within ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);

    const secure = opts.url.protocol === 'wss:';
    const sendRequest = (s: Duplex) => {
      const hostHeader = opts.url.host;
      let req = `GET ${opts.target} HTTP/1.1\r\nHost: ${hostHeader}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n`;
      if (opts.protocols.length > 0) req += `Sec-WebSocket-Protocol: ${opts.protocols.join(', ')}\r\n`;
      if (opts.extensions) req += `Sec-WebSocket-Extensions: ${opts.extensions}\r\n`;
      for (const [name, value] of opts.headers) req += `${name}: ${value}\r\n`;
      s.write(req + '\r\n');
    };
    const onError = (err: NodeJS.ErrnoException) => {
      fail(new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, `upstream ${opts.url.host}: ${err.code ?? err.message}`));
    };
    const onClose = () => {
      if (refusal) {
        finishRefusal();
        return;
      }
      fail(new UpstreamError('SLUICE_ERR_UPSTREAM_BAD_HANDSHAKE', 502, `upstream ${opts.url.host} closed during the handshake`));
    };

    const finishRefusal = () => {
      const r = refusal!;
      const body = received.subarray(r.bodyStart, r.bodyStart + Math.min(r.contentLength, MAX_REFUSAL_BODY));
      const passThrough = r.status >= 400 && r.status < 500;
      fail(new UpstreamError(
        'SLUICE_ERR_UPSTREAM_REFUSED',
        passThrough ? r.status : 502,
        `upstream ${opts.url.host} answered ${r.status} ${r.text}`,
        passThrough ? r.text : '',
        passThrough ? Buffer.from(body) : undefined,
        { status: r.status, body: Buffer.from(body) },
      ));
    };

    const onHandshakeData = (chunk: Buffer) => {
      // Copied: the chunk may be a view of the shared read buffer.
      received = Buffer.concat([received, chunk]);
      if (refusal) {
        if (received.length - refusal.bodyStart >= Math.min(refusal.contentLength, MAX_REFUSAL_BODY)) finishRefusal();
        return;
      }
      const end = received.indexOf('\r\n\r\n');
      if (end < 0) {
        if (received.length > MAX_RESPONSE_HEAD) {
          fail(new UpstreamError('SLUICE_ERR_UPSTREAM_BAD_HANDSHAKE', 502, `upstream ${opts.url.host} sent an oversized response head`));
        }
        return;
      }
      const lines = received.subarray(0, end).toString('latin1').split('\r\n');
      const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0]);
      if (!m) {
        fail(new UpstreamError('SLUICE_ERR_UPSTREAM_BAD_HANDSHAKE', 502, `upstream ${opts.url.host} answered garbage`));
        return;
      }
      const status = Number(m[1]);
      const headers = new Map<string, string>();
      for (let i = 1; i < lines.length; i++) {
        const colon = lines[i].indexOf(':');
        if (colon <= 0) continue;
        const name = lines[i].slice(0, colon).trim().toLowerCase();
        const value = lines[i].slice(colon + 1).trim();
        headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
      }
      if (status !== 101) {
        const cl = Number(headers.get('content-length') ?? '0');
        refusal = { status, text: m[2] ?? '', bodyStart: end + 4, contentLength: Number.isFinite(cl) && cl > 0 ? cl : 0 };
        if (received.length - refusal.bodyStart >= Math.min(refusal.contentLength, MAX_REFUSAL_BODY)) finishRefusal();
        return;
      }
      const bad = (why: string) =>
        fail(new UpstreamError('SLUICE_ERR_UPSTREAM_BAD_HANDSHAKE', 502, `upstream ${opts.url.host}: ${why}`));
      if ((headers.get('upgrade') ?? '').toLowerCase() !== 'websocket') return bad('101 without Upgrade: websocket');
      if (!/(^|,)\s*upgrade\s*(,|$)/i.test(headers.get('connection') ?? '')) return bad('101 without Connection: Upgrade');
      if (headers.get('sec-websocket-accept') !== expectedAccept) return bad('wrong Sec-WebSocket-Accept');
      const protocol = headers.get('sec-websocket-protocol') ?? '';
      if (protocol !== '' && !opts.protocols.includes(protocol)) return bad(`picked subprotocol "${protocol}" that was not offered`);
      const extensions = headers.get('sec-websocket-extensions') ?? '';
      if (extensions !== '' && (!opts.extensions || !/^\s*permessage-deflate\b/i.test(extensions) || extensions.includes(','))) {
        return bad('negotiated an extension that was not offered');
      }
      settled = true;
      clearTimeout(timer);
      // Only ours: a TLSSocket has internal 'close' listeners (freeing its SSL state).
      const s = socket!;
      s.off('close', onClose);
      s.off('error', onError);
      s.pause();
      route.fn = () => {};
      resolve({
        socket: s,
        protocol,
        extensions,
        head: received.subarray(end + 4),
        setDataHandler(fn) {
          route.fn = fn;
        },
        readsBorrowed: opts.url.protocol !== 'wss:' && opts.open === undefined,
      });
    };

    const start = (s: Duplex, connected: boolean) => {
      socket = s;
      s.on('error', onError);
      s.on('close', onClose);
      if (connected) sendRequest(s);
      else s.once(secure ? 'secureConnect' : 'connect', () => sendRequest(s));
    };
    if (opts.open !== undefined) {
      // Through an agent: its stream, once the agent answered ok, carries the handshake.
      opts.open().then((stream) => {
        if (settled) {
          stream.destroy();
          return;
        }
        stream.on('data', (chunk: Buffer) => route.fn(chunk));
        start(stream, true);
      }, (err: Error & { code?: string }) => {
        const slow = err.code === 'SLUICE_ERR_AGENT_TIMEOUT';
        fail(new UpstreamError(slow ? 'SLUICE_ERR_UPSTREAM_TIMEOUT' : 'SLUICE_ERR_UPSTREAM_UNREACHABLE', slow ? 504 : 502, err.message));
      });
      return;
    }
    try {
      start(connect(opts, route), false);
    } catch (err) {
      fail(new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, `cannot dial ${opts.url.host}: ${(err as Error).message}`));
    }
  });
}
