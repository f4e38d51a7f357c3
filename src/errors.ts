/**
 * The error tree of sluice. Every error has a stable string `code` (`SLUICE_ERR_*`),
 * checked by `.code`, never by `instanceof` (errors cross worker threads and module
 * copies), and where one applies the WebSocket close code it maps to.
 */

/** Base class of every error sluice throws or reports. */
export class SluiceError extends Error {
  /** Stable identifier, listed in docs/operations.md ("Error codes"). */
  readonly code: string;
  /** WebSocket close code this error maps to, when it ends a connection. */
  readonly closeCode: number | undefined;

  constructor(code: string, message: string, closeCode?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SluiceError';
    this.code = code;
    this.closeCode = closeCode;
  }
}

/** A configuration file or value that does not check out; `issues` holds one line per problem. */
export class ConfigError extends SluiceError {
  readonly issues: string[];
  constructor(issues: string[]) {
    super('SLUICE_ERR_CONFIG', issues.join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

/** True when `err` is a sluice error with the given code (works across realms). */
export function isSluiceError(err: unknown, code?: string): err is SluiceError {
  return typeof err === 'object' && err !== null &&
    typeof (err as { code?: unknown }).code === 'string' &&
    (err as { code: string }).code.startsWith('SLUICE_ERR_') &&
    (code === undefined || (err as { code: string }).code === code);
}
