/**
 * The tunnel's wire above yamux (issue #14), fixed so that agents in other languages can
 * speak it:
 *   1. the agent connects with subprotocol `sluice.tunnel.v1`;
 *   2. the gateway sends the text message `{"type":"gateway_hello","version":1,"use_yamux":true}`,
 *      the agent answers `{"type":"gateway_hello_ack","version":1,"use_yamux":true,"name":…,"services":[…]}`;
 *      further JSON control messages are text messages (unknown types are ignored);
 *   3. binary messages carry yamux frames (the gateway is the yamux client);
 *   4. every stream the gateway opens starts with one JSON line `{"service":"db","protocol":"tcp"}\n`,
 *      answered by `{"ok":true}\n` (then raw bytes both ways) or `{"ok":false,"error":"…"}\n`
 *      (then the stream closes);
 *   5. `"protocol":"udp"`: each datagram is a 2-byte big-endian length and the payload.
 */
import type { Duplex } from 'node:stream';

export const TUNNEL_SUBPROTOCOL = 'sluice.tunnel.v1';
export const TUNNEL_VERSION = 1;
/** Longest open or answer line (bytes, newline included). */
export const MAX_LINE_BYTES = 4096;
/** Agent and service names: what a config key, a metric label and a log field can all carry. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export type TunnelProtocol = 'tcp' | 'udp';

export interface GatewayHello {
  type: 'gateway_hello';
  version: number;
  use_yamux: boolean;
}

export interface GatewayHelloAck {
  type: 'gateway_hello_ack';
  version: number;
  use_yamux: boolean;
  name: string;
  services: string[];
}

export function gatewayHello(): string {
  return JSON.stringify({ type: 'gateway_hello', version: TUNNEL_VERSION, use_yamux: true } satisfies GatewayHello);
}

export function helloAck(name: string, services: string[]): string {
  return JSON.stringify({ type: 'gateway_hello_ack', version: TUNNEL_VERSION, use_yamux: true, name, services } satisfies GatewayHelloAck);
}

/** A control message's JSON, or null when it is not a JSON object with a string `type`. */
export function parseControl(text: string): ({ type: string } & Record<string, unknown>) | null {
  const v = parseObject(text);
  return v !== null && typeof v.type === 'string' ? (v as { type: string } & Record<string, unknown>) : null;
}

/** The agent's hello answer, checked; a string says what is wrong with it. */
export function checkHelloAck(msg: Record<string, unknown>): GatewayHelloAck | string {
  if (msg.type !== 'gateway_hello_ack') return `expected gateway_hello_ack, got ${String(msg.type)}`;
  if (msg.version !== TUNNEL_VERSION) return `unsupported tunnel version ${String(msg.version)}`;
  if (msg.use_yamux !== true) return 'use_yamux must be true';
  if (typeof msg.name !== 'string' || !NAME_PATTERN.test(msg.name)) return 'name must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}';
  const services = msg.services;
  if (!Array.isArray(services) || !services.every((s) => typeof s === 'string' && NAME_PATTERN.test(s))) {
    return 'services must be a list of names';
  }
  return { type: 'gateway_hello_ack', version: TUNNEL_VERSION, use_yamux: true, name: msg.name, services: services as string[] };
}

export interface OpenRequest {
  service: string;
  protocol: TunnelProtocol;
}

export function openLine(req: OpenRequest): Buffer {
  return Buffer.from(`${JSON.stringify({ service: req.service, protocol: req.protocol })}\n`);
}

export function okLine(): Buffer {
  return Buffer.from('{"ok":true}\n');
}

export function errorLine(error: string): Buffer {
  return Buffer.from(`${JSON.stringify({ ok: false, error })}\n`);
}

/** A stream's open line, checked; a string says what is wrong with it. */
export function parseOpen(line: string): OpenRequest | string {
  const v = parseObject(line);
  if (v === null) return 'the open line is not a JSON object';
  if (typeof v.service !== 'string' || !NAME_PATTERN.test(v.service)) return 'service must be a name';
  const protocol = v.protocol ?? 'tcp';
  if (protocol !== 'tcp' && protocol !== 'udp') return 'protocol must be tcp or udp';
  return { service: v.service, protocol };
}

/** The answer line: null for ok, else the agent's error text. */
export function parseAnswer(line: string): { ok: true } | { ok: false; error: string } {
  const v = parseObject(line);
  if (v === null) return { ok: false, error: 'the answer is not a JSON object' };
  if (v.ok === true) return { ok: true };
  return { ok: false, error: typeof v.error === 'string' ? v.error : 'refused' };
}

function parseObject(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Read one line (up to `\n`) from the start of a stream; the bytes after it are put back
 * (unshift), so the stream then carries exactly what followed. Rejects past
 * MAX_LINE_BYTES, at the stream's end, on its error, or after `timeoutMs`.
 *
 * It reads with 'readable' and read(), not 'data': once its listener is gone the stream is
 * neither flowing nor paused, so whoever takes it next starts it by listening or piping.
 */
export function readLine(stream: Duplex, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let length = 0;
    let finished = false;
    const done = (err: Error | null, line?: string, rest?: Buffer) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      stream.off('readable', onReadable);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.off('close', onEnd);
      if (rest !== undefined && rest.length > 0) stream.unshift(rest);
      if (err !== null) reject(err);
      else resolve(line!);
    };
    const onReadable = () => {
      let chunk: Buffer | null;
      while (!finished && (chunk = stream.read() as Buffer | null) !== null) {
        const nl = chunk.indexOf(0x0a);
        if (nl < 0) {
          parts.push(chunk);
          length += chunk.length;
          if (length >= MAX_LINE_BYTES) done(new Error(`no end of line in the first ${MAX_LINE_BYTES} bytes`));
          continue;
        }
        if (length + nl + 1 > MAX_LINE_BYTES) {
          done(new Error(`a line longer than ${MAX_LINE_BYTES} bytes`));
          return;
        }
        parts.push(chunk.subarray(0, nl));
        done(null, Buffer.concat(parts).toString('utf8'), chunk.subarray(nl + 1));
      }
    };
    const onEnd = () => done(new Error('the stream ended before its first line'));
    const onError = (err: Error) => done(err);
    const timer = setTimeout(() => done(new Error(`no line within ${timeoutMs} ms`)), timeoutMs);
    stream.on('readable', onReadable);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onError);
  });
}

/** Splits a UDP stream's bytes into datagrams (2-byte big-endian length, then the payload). */
export class DatagramReader {
  private held: Buffer = Buffer.alloc(0);

  /** Every whole datagram in the bytes so far. */
  push(chunk: Buffer): Buffer[] {
    const buf = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
    const out: Buffer[] = [];
    let at = 0;
    while (buf.length - at >= 2) {
      const n = buf.readUInt16BE(at);
      if (buf.length - at - 2 < n) break;
      out.push(buf.subarray(at + 2, at + 2 + n));
      at += 2 + n;
    }
    this.held = at === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(at));
    return out;
  }
}

/**
 * "host:port" (an IPv6 host in brackets: "[::1]:5432"); throws with the reason. Port 0
 * only when `allowZero` (a listener picking a free port).
 */
export function parseHostPort(value: string, allowZero = false): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535 || (port === 0 && !allowZero)) throw new Error(`expected host:port, got "${value}"`);
  return { host: m[1] ?? m[2], port };
}

/** One datagram as the stream carries it. */
export function datagram(payload: Buffer): Buffer {
  const h = Buffer.allocUnsafe(2);
  h.writeUInt16BE(payload.length, 0);
  return Buffer.concat([h, payload]);
}
