/**
 * Logging: pino JSON lines, one object per event, so logs can be shipped and queried.
 * On a terminal they are made readable by pino-pretty, run as a stream in this thread
 * (not a transport worker) so the last lines before an exit are never lost.
 */
import { pino, type Logger as PinoLogger, type LoggerOptions as PinoOptions } from 'pino';
import pretty from 'pino-pretty';
import type { ProxyConfig } from './config/types.js';

/** A sluice logger (pino). */
export type Logger = PinoLogger;
/** A log level name, `silent` switching logging off. */
export type LogLevel = ProxyConfig['log']['level'];

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** Where lines go; default stdout. */
  destination?: NodeJS.WritableStream;
  /** Human-readable lines; default: when the destination is a terminal. */
  pretty?: boolean;
  /** Fields on every line. */
  base?: Record<string, unknown>;
}

/**
 * Creates the logger for `level`. JSON lines carry `time` (epoch ms), `level` as a name
 * ("info", not 30) and `msg`, so they read well without pino tools.
 */
export function createLogger(level: LogLevel = 'info', opts: LoggerOptions = {}): Logger {
  const destination = opts.destination ?? process.stdout;
  const isTTY = (destination as { isTTY?: boolean }).isTTY === true;
  const options: PinoOptions = {
    level,
    base: { name: 'sluice', pid: process.pid, ...opts.base },
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (opts.pretty ?? isTTY) {
    return pino(options, pretty({
      destination: destination as NodeJS.WritableStream & { fd?: number },
      colorize: isTTY,
      sync: true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname,name',
    }));
  }
  return pino(options, destination);
}
