/**
 * What an envelope route does with each message, whichever engine holds the sockets (the
 * TypeScript engine, src/proxy/session.ts, or the native engine in messages mode,
 * src/proxy/native-session.ts): a client's envelope frame is checked and acted on (data to
 * the upstream as one binary message, ping answered, close passed to both sides, control
 * and error frames to the host); an upstream's message becomes one data frame for the
 * client. The engine under it frames, masks, limits and closes.
 */
import type { ProxyCounters } from '../metrics/counters.js';
import { decodeEnvelope, encodeEnvelope, parseClosePayload, type EnvelopeVersion } from '../protocol/index.js';
import { EnvelopeFlag, EnvelopeType, Opcode } from '../codec/types.js';

/** Valid close codes on the wire (RFC 6455 §7.4): 1000-1003, 1007-1014, 3000-4999. */
export function isValidWireCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/** The engine side of an envelope session. */
export interface EnvelopePeer {
  readonly envelope: EnvelopeVersion | null;
  /** A data frame's payload: one binary message to the upstream (budget checks are the engine's). */
  upstreamData(payload: Buffer): void;
  /** One WebSocket message to the client. */
  clientMessage(opcode: number, data: Buffer): void;
  /** The client broke the envelope protocol: it gets `code`, the upstream `partnerCode`. */
  failClient(code: number, reason: string, partnerCode: number, partnerReason: string): void;
  /** The client's envelope close: both sides get its code and reason (the client closed first). */
  closeBoth(code: number, reason: string): void;
  /** A control frame's JSON, an error frame's text: the host's. */
  controlFrame(payload: unknown): void;
  errorFrame(reason: string): void;
  /** An envelope ping was answered or a pong came (resumable sessions acknowledge then). */
  heartbeatFrame?(): void;
}

/** One envelope frame for the client (nothing when the session is not an envelope session). */
export function sendEnvelope(peer: EnvelopePeer, type: number, flags: number, payload: Uint8Array): void {
  if (peer.envelope === null) return;
  const m = encodeEnvelope(peer.envelope, type, flags, payload);
  peer.clientMessage(m.binary ? Opcode.Binary : Opcode.Text, typeof m.data === 'string' ? Buffer.from(m.data) : m.data);
}

/** An upstream message: one data frame for the client. */
export function fromUpstream(peer: EnvelopePeer, message: Buffer): void {
  sendEnvelope(peer, EnvelopeType.Data, EnvelopeFlag.Final, message);
}

/** The explicit backpressure signal: a control frame with the flag up, then one without it. */
export function backpressureSignal(peer: EnvelopePeer, fill: number | null): void {
  if (fill !== null) {
    sendEnvelope(peer, EnvelopeType.Control, EnvelopeFlag.Backpressure,
      Buffer.from(`{"backpressure":true,"fill":${Math.round(fill * 100) / 100}}`));
  } else {
    sendEnvelope(peer, EnvelopeType.Control, 0, Buffer.from('{"backpressure":false}'));
  }
}

/** One whole message from the client: an envelope frame (validated before anything is allocated for it). */
export function fromClient(peer: EnvelopePeer, data: Buffer, isBinary: boolean, maxPayloadBytes: number, counters: ProxyCounters): void {
  const f = decodeEnvelope(peer.envelope!, data, isBinary, { maxPayloadBytes });
  if (typeof f === 'number') {
    if (f === 1009) {
      counters.dropped.too_big++;
      peer.failClient(1009, `envelope payload over ${maxPayloadBytes} bytes`, 1009, 'client message over the size limit');
    } else {
      peer.failClient(f, f === 1007 ? 'invalid envelope payload' : 'malformed envelope', 1001, 'client sent a malformed envelope');
    }
    return;
  }
  switch (f.type) {
    case EnvelopeType.Data:
      peer.upstreamData(f.payload);
      return;
    case EnvelopeType.Ping:
      counters.message('in', 'ping', f.payload.length);
      sendEnvelope(peer, EnvelopeType.Pong, 0, f.payload);
      peer.heartbeatFrame?.();
      return;
    case EnvelopeType.Pong:
      counters.message('in', 'pong', f.payload.length);
      peer.heartbeatFrame?.();
      return;
    case EnvelopeType.Close: {
      const c = parseClosePayload(f.payload);
      if (c === null || !isValidWireCloseCode(c.code)) {
        peer.failClient(1002, 'malformed envelope close', 1001, 'client sent a malformed envelope');
        return;
      }
      counters.message('in', 'close', f.payload.length);
      peer.closeBoth(c.code, c.reason);
      return;
    }
    case EnvelopeType.Error:
      peer.errorFrame(f.payload.toString('utf8'));
      return;
    case EnvelopeType.Control: {
      let json: unknown;
      try {
        json = JSON.parse(f.payload.toString('utf8'));
      } catch {
        peer.failClient(1007, 'control frame is not JSON', 1001, 'client sent a malformed envelope');
        return;
      }
      peer.controlFrame(json);
      return;
    }
  }
}
