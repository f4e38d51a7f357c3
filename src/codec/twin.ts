/**
 * The TypeScript twins gathered as one CodecImplementation, the same shape as the addon's
 * exports, so tests and benchmarks can run every case against either.
 */
import type { CodecImplementation } from './types.js';
import { TsFrameParser } from './frame-parser.js';
import { TsFrameEncoder } from './frame-encoder.js';
import { createFrameRunner } from './frame-run.js';
import { mask, unmask } from './mask.js';
import { envelopeDecode, envelopeDecodeRun, envelopeEncodeInto } from './envelope.js';
import { acquire, poolStats, release } from './pool.js';
import { isUtf8 } from './utf8.js';

/** The pure-TypeScript codec. */
export const tsCodec: CodecImplementation = {
  FrameParser: TsFrameParser,
  createFrameRunner,
  FrameEncoder: TsFrameEncoder,
  mask,
  unmask,
  envelopeEncodeInto,
  envelopeDecode,
  envelopeDecodeRun,
  acquire,
  release,
  poolStats,
  isUtf8,
};
