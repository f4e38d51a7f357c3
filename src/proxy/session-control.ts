/**
 * What an operator sees of live sessions and does to them (issue #16): the listing with
 * its filters and pages, the closes of the last sessions that ended, and the ids that name
 * a session across shards. The proxy (proxy.ts) and the sharded proxy (shard-pool.ts)
 * answer with these shapes; the admin server (admin/server.ts) serves them.
 */

/** One live session as `GET /sessions` lists it. */
export interface SessionInfo {
  /** `<shard>-<session>` (shard 0 without shards); a replacement shard numbers on past its predecessors, so an id is never reused. */
  id: string;
  route: string;
  upstream: string;
  /** The tunnel agent its upstream goes through, or '' for a URL upstream. */
  agent: string;
  remoteAddress: string;
  origin: string;
  protocol: string;
  envelope: string;
  /** Which engine holds its sockets. */
  engine: 'native' | 'typescript';
  /** Resumable and its client away now. */
  parked: boolean;
  startedAt: string;
  durationMs: number;
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
}

/** The filters of `GET /sessions` (each exact; '' or absent: any; applied in proxy.ts `listSessions`). */
export interface SessionFilter {
  route?: string;
  upstream?: string;
  remote?: string;
  agent?: string;
}

/** One page of sessions: `total` matched, `sessions` are those from `offset` on (at most `limit`). */
export interface SessionPage {
  total: number;
  /** Shards that did not answer (restarting): `total` and the page leave their sessions out. */
  missingShards?: number[];
  offset: number;
  limit: number;
  sessions: SessionInfo[];
}

/** A session that ended, as the dashboard lists the last ones. */
export interface ClosedSession {
  id: string;
  route: string;
  upstream: string;
  endedAt: string;
  durationMs: number;
  clientCode: number;
  clientReason: string;
  upstreamCode: number;
  upstreamReason: string;
  closedFirst: string;
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
}

/** What a drain of one upstream did. */
export interface DrainResult {
  route: string;
  upstream: string;
  draining: boolean;
  /** Sessions on it that will get 1012 within the window (0 without `closeWithinMs`). */
  closing: number;
  /** What names the drain across reloads and shards (proxy.ts `drainKey`). */
  key: string;
}

export const MAX_PAGE = 1000;
export const DEFAULT_PAGE = 100;
/** How many ended sessions each proxy (shard) remembers for the dashboard. */
export const RECENT_CLOSES = 50;

/** Oldest first, then by shard and number: the order pages are cut in, on one shard or merged over many. */
export function compareSessions(a: SessionInfo, b: SessionInfo): number {
  if (a.startedAt !== b.startedAt) return a.startedAt < b.startedAt ? -1 : 1;
  const x = parseSessionId(a.id);
  const y = parseSessionId(b.id);
  return x === null || y === null ? 0 : x.shard - y.shard || x.session - y.session;
}

/** Cuts one page out of shards' matches (each sorted by {@link compareSessions}). */
export function mergePages(parts: ReadonlyArray<{ total: number; sessions: SessionInfo[] }>, offset: number, limit: number): SessionPage {
  const all = parts.flatMap((p) => p.sessions).sort(compareSessions);
  return { total: parts.reduce((n, p) => n + p.total, 0), offset, limit, sessions: all.slice(offset, offset + limit) };
}

/** `<shard>-<n>` → its parts, or null. */
export function parseSessionId(id: string): { shard: number; session: number } | null {
  const m = /^(\d{1,4})-(\d{1,15})$/.exec(id);
  return m === null ? null : { shard: Number(m[1]), session: Number(m[2]) };
}

/** A close code an operator may send: 1000, or 3000-4999 (RFC 6455 7.4.2: 1001-2999 are the protocol's own). */
export function operatorCloseCode(code: number): boolean {
  return code === 1000 || (Number.isInteger(code) && code >= 3000 && code <= 4999);
}

/** The last {@link RECENT_CLOSES} ended sessions, newest first. */
export class RecentCloses {
  private readonly ring: ClosedSession[] = [];

  add(c: ClosedSession): void {
    this.ring.unshift(c);
    if (this.ring.length > RECENT_CLOSES) this.ring.pop();
  }

  list(): ClosedSession[] {
    return this.ring.slice();
  }
}

/** The newest `n` of several shards' recent closes. */
export function mergeRecentCloses(parts: ReadonlyArray<ClosedSession[]>, n = RECENT_CLOSES): ClosedSession[] {
  return parts.flat().sort((a, b) => (a.endedAt < b.endedAt ? 1 : a.endedAt > b.endedAt ? -1 : 0)).slice(0, n);
}
