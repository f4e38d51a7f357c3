/**
 * The envelope protocol (DESIGN "Protocols"): v2 binary and v1 JSON frames, their
 * validation and their negotiation. Used by the proxy's envelope routes and by the client
 * SDK (`sluice/client`); importable as `sluice/protocol`.
 */
export {
  decodeEnvelope, encodeEnvelope, closePayload, parseClosePayload, parseControlPayload, isWireCloseCode,
  envelopeTypeName, backpressureSignal, BACKPRESSURE_ON_PAYLOAD, BACKPRESSURE_OFF_PAYLOAD,
  EnvelopeType, EnvelopeFlag, EnvelopeCloseCode, ENVELOPE_HEADER_BYTES, MAX_CLOSE_REASON_BYTES,
} from './envelope.js';
export type { EnvelopeVersion, EnvelopeFrame, EnvelopeLimits } from './envelope.js';
export { negotiateEnvelope, ENVELOPE_PROTOCOLS } from './negotiate.js';
