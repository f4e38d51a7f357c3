/**
 * Envelope version negotiation by Sec-WebSocket-Protocol (DESIGN "Protocols"): a client
 * offers `sluice.v2` and/or `sluice.v1`; sluice answers v2 when it was offered and the
 * proxy allows it (`protocol: v2`, PIPEOPS_WS_PROTOCOL=v2), else v1. A client that offers
 * neither is a legacy client and speaks v1 with no protocol in the answer.
 */
import type { EnvelopeVersion } from './envelope.js';

/** The subprotocol names of the envelope versions. */
export const ENVELOPE_PROTOCOLS = { v2: 'sluice.v2', v1: 'sluice.v1' } as const;

/**
 * Pick the version from the offered Sec-WebSocket-Protocol entries (an entry holding a
 * comma list is split; names compare exactly, after trimming). Returns the protocol to
 * answer — `sluice.v2`, `sluice.v1`, or `''` (answer no protocol) — and the version spoken.
 *
 * | offered        | allowed v2        | allowed v1        |
 * |----------------|-------------------|-------------------|
 * | v2 and v1      | sluice.v2 / v2    | sluice.v1 / v1    |
 * | v2 only        | sluice.v2 / v2    | '' / v1           |
 * | v1 only        | sluice.v1 / v1    | sluice.v1 / v1    |
 * | neither        | '' / v1           | '' / v1           |
 *
 * "v2 only" against a v1 proxy answers no protocol: RFC 6455 clients (browsers, `ws`)
 * then fail the handshake themselves, which is right, since that client cannot speak v1.
 */
export function negotiateEnvelope(offered: readonly string[], allowed: EnvelopeVersion): { protocol: string; version: EnvelopeVersion } {
  let v1 = false;
  let v2 = false;
  for (const entry of offered) {
    for (const raw of entry.split(',')) {
      const name = raw.trim();
      if (name === ENVELOPE_PROTOCOLS.v2) v2 = true;
      else if (name === ENVELOPE_PROTOCOLS.v1) v1 = true;
    }
  }
  if (v2 && allowed === 'v2') return { protocol: ENVELOPE_PROTOCOLS.v2, version: 'v2' };
  if (v1) return { protocol: ENVELOPE_PROTOCOLS.v1, version: 'v1' };
  return { protocol: '', version: 'v1' };
}
