/**
 * The client's outbox: every message `send()` accepted and the proxy has not yet confirmed,
 * in order, bounded, and optionally kept in an append-only log on disk.
 *
 * A message moves through three stages: unsent → sent (written to the socket, not yet
 * confirmed) → confirmed (removed). On a disconnect the sent-but-unconfirmed messages go
 * back to unsent and are sent again, first, on the next connection: order is kept, and a
 * message can arrive twice (at-least-once).
 *
 * Disk log (`<dir>/outbox.log`), records appended, never rewritten in place:
 *
 * ```
 * +------+----------+-----------------+-----------------+----------------+---------+
 * | kind | reserved | seq (uint48 BE) | length (uint32) | crc32 (uint32) | payload |
 * | 1 B  |  1 B 0   |       6 B       |       4 B       |      4 B       |         |
 * +------+----------+-----------------+-----------------+----------------+---------+
 * ```
 * kind 1: a message with sequence number `seq`; kind 2: every message up to `seq` is
 * confirmed (no payload). crc32 covers the first 12 header bytes and the payload, so a
 * record torn by a crash is recognised and cut off when the log is opened. Records
 * accepted in one event-loop turn are one batch: one write, one fdatasync. When the outbox
 * empties, the log is truncated; when it is opened, it is rewritten with only the
 * unconfirmed messages (temporary file, fsync, rename, fsync of the directory).
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { SluiceError } from '../errors.js';

const HEADER_BYTES = 16;
const KIND_MESSAGE = 1;
const KIND_CONFIRMED = 2;
const LOG_NAME = 'outbox.log';
const LOCK_NAME = 'outbox.lock';

/** One accepted message. */
export interface OutboxEntry {
  readonly seq: number;
  readonly payload: Buffer;
}

/** Bounds of the outbox. */
export interface OutboxLimits {
  maxMessages: number;
  maxBytes: number;
}

/** Counters of the outbox. */
export interface OutboxStats {
  /** Messages held (unsent + unconfirmed). */
  queued: number;
  /** Payload bytes held. */
  queuedBytes: number;
  /** Sent, waiting for confirmation. */
  unconfirmed: number;
  /** Messages found in the disk log when it was opened. */
  recovered: number;
  /** Bytes of a torn record cut off the log's tail when it was opened. */
  tornBytes: number;
  /** Batches written to the log (one fdatasync each). */
  batches: number;
}

/** Bounded, ordered, optionally persistent queue of outgoing messages. */
export class Outbox {
  private entries: OutboxEntry[] = [];
  /** Index of entries[] where the confirmed prefix ends (entries before it are garbage). */
  private head = 0;
  /** Index of the first unsent entry. */
  private next = 0;
  private bytes = 0;
  private lastSeq = 0;
  private readonly log: OutboxLog | null;
  private readonly limits: OutboxLimits;
  private emptyWaiters: Array<() => void> = [];
  readonly recovered: number = 0;

  constructor(limits: OutboxLimits, persistDir?: string) {
    this.limits = limits;
    if (persistDir === undefined) {
      this.log = null;
      return;
    }
    this.log = new OutboxLog(persistDir);
    const pending = this.log.open();
    for (const e of pending) {
      this.entries.push(e);
      this.bytes += e.payload.length;
      this.lastSeq = e.seq;
    }
    if (pending.length === 0) this.lastSeq = this.log.lastSeq;
    this.recovered = pending.length;
  }

  /** Accept a message; false when the outbox is full (nothing is stored then). */
  push(payload: Buffer): boolean {
    const held = this.entries.length - this.head;
    if (held >= this.limits.maxMessages || this.bytes + payload.length > this.limits.maxBytes) return false;
    const e: OutboxEntry = { seq: ++this.lastSeq, payload };
    this.entries.push(e);
    this.bytes += payload.length;
    this.log?.appendMessage(e);
    return true;
  }

  /** The next message to send, or undefined; marks it sent. */
  takeUnsent(): OutboxEntry | undefined {
    if (this.next >= this.entries.length) return undefined;
    return this.entries[this.next++];
  }

  /** Sequence number of the last message sent (0 when none is outstanding or ever sent). */
  get sentSeq(): number {
    return this.next > this.head ? this.entries[this.next - 1].seq : 0;
  }

  /** Sequence number the next message taken will have (one past the last accepted when none waits). */
  get nextSeq(): number {
    return this.next < this.entries.length ? this.entries[this.next].seq : this.lastSeq + 1;
  }

  /**
   * The proxy has every message up to `seq`, sent on this connection or an earlier one (a
   * resumed session: those sent again need not be): they are confirmed, sent or not.
   * Returns how many left the outbox.
   */
  acknowledge(seq: number): number {
    while (this.next < this.entries.length && this.entries[this.next].seq <= seq) this.next++;
    return this.confirmThrough(seq);
  }

  hasUnsent(): boolean {
    return this.next < this.entries.length;
  }

  /** Remove every message up to and including `seq`: the proxy has them. Returns how many. */
  confirmThrough(seq: number): number {
    let n = 0;
    while (this.head < this.next && this.entries[this.head].seq <= seq) {
      this.bytes -= this.entries[this.head].payload.length;
      this.head++;
      n++;
    }
    if (n === 0) return 0;
    // Drop the confirmed prefix now and then rather than shifting per message.
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.next -= this.head;
      this.head = 0;
    }
    this.log?.appendConfirmed(seq, this.size === 0);
    if (this.size === 0) {
      const waiters = this.emptyWaiters;
      this.emptyWaiters = [];
      for (const w of waiters) w();
    }
    return n;
  }

  /** Sent-but-unconfirmed messages become unsent again (a connection ended); returns how many. */
  rewind(): number {
    const n = this.next - this.head;
    this.next = this.head;
    return n;
  }

  get size(): number {
    return this.entries.length - this.head;
  }

  /** Resolves when every accepted message is confirmed. */
  whenEmpty(): Promise<void> {
    if (this.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.emptyWaiters.push(resolve));
  }

  /** Resolves when every message accepted so far is on disk (at once without persistence). */
  flush(): Promise<void> {
    return this.log === null ? Promise.resolve() : this.log.flush();
  }

  stats(): OutboxStats {
    return {
      queued: this.size,
      queuedBytes: this.bytes,
      unconfirmed: this.next - this.head,
      recovered: this.recovered,
      tornBytes: this.log?.tornBytes ?? 0,
      batches: this.log?.batches ?? 0,
    };
  }

  /** Flush and close the log (the outbox keeps its messages on disk for the next start). */
  async close(): Promise<void> {
    if (this.log !== null) await this.log.close();
  }
}

/** The append-only file behind a persistent Outbox, with a lock so one process owns it. */
class OutboxLog {
  private readonly file: string;
  private readonly lockFile: string;
  private fd = -1;
  private batch: Buffer[] = [];
  /** The outbox emptied since the last batch: truncate the log before writing the batch. */
  private truncate = false;
  private writing = false;
  private scheduled = false;
  private waiters: Array<() => void> = [];
  private closed = false;
  lastSeq = 0;
  tornBytes = 0;
  batches = 0;

  constructor(private readonly dir: string) {
    this.file = path.join(dir, LOG_NAME);
    this.lockFile = path.join(dir, LOCK_NAME);
  }

  /** Take the lock, read the log, rewrite it with the unconfirmed messages; returns them in order. */
  open(): OutboxEntry[] {
    fs.mkdirSync(this.dir, { recursive: true });
    this.lock();
    let data: Buffer;
    try {
      data = fs.readFileSync(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw this.ioError(err);
      data = Buffer.alloc(0);
    }
    const pending: OutboxEntry[] = [];
    let confirmed = 0;
    let at = 0;
    while (at < data.length) {
      const rec = readRecord(data, at);
      if (rec === null) break;
      if (rec.kind === KIND_MESSAGE) {
        pending.push({ seq: rec.seq, payload: rec.payload });
        if (rec.seq > this.lastSeq) this.lastSeq = rec.seq;
      } else if (rec.seq > confirmed) {
        confirmed = rec.seq;
      }
      at = rec.end;
    }
    this.tornBytes = data.length - at;
    if (confirmed > this.lastSeq) this.lastSeq = confirmed;
    const live = pending.filter((e) => e.seq > confirmed);
    if (live.length !== pending.length || this.tornBytes > 0) this.rewrite(live);
    this.fd = fs.openSync(this.file, 'a');
    return live;
  }

  private lock(): void {
    for (let tries = 0; tries < 2; tries++) {
      try {
        const fd = fs.openSync(this.lockFile, 'wx');
        fs.writeSync(fd, String(process.pid));
        fs.closeSync(fd);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw this.ioError(err);
      }
      const owner = Number.parseInt(fs.readFileSync(this.lockFile, 'utf8'), 10);
      // This process counts as alive too: two clients in one process must not share a log.
      if (Number.isInteger(owner) && owner > 0 && isAlive(owner)) {
        throw new SluiceError('SLUICE_ERR_CLIENT_PERSIST_LOCKED',
          `${this.dir} is in use by process ${owner}: give each client its own persist.dir`);
      }
      // A lock left by a process that died (a crash is exactly what the log is for).
      fs.rmSync(this.lockFile, { force: true });
    }
    throw new SluiceError('SLUICE_ERR_CLIENT_PERSIST_LOCKED', `could not take the lock ${this.lockFile}`);
  }

  private rewrite(live: OutboxEntry[]): void {
    const tmp = `${this.file}.tmp`;
    const fd = fs.openSync(tmp, 'w');
    try {
      for (const e of live) {
        const rec = encodeRecord(KIND_MESSAGE, e.seq, e.payload);
        fs.writeSync(fd, rec);
      }
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
    // The rename itself must survive a crash: sync the directory entry.
    const dfd = fs.openSync(this.dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }

  appendMessage(e: OutboxEntry): void {
    this.batch.push(encodeRecord(KIND_MESSAGE, e.seq, e.payload));
    this.schedule();
  }

  /**
   * Record that everything up to `seq` is confirmed. Not a reason to fsync on its own: a
   * lost confirmation only means a duplicate after a crash, which at-least-once allows.
   */
  appendConfirmed(seq: number, outboxEmpty: boolean): void {
    if (outboxEmpty) {
      // Every message ever accepted is confirmed, including any still in this batch.
      this.batch = [];
      this.truncate = true;
    } else {
      this.batch.push(encodeRecord(KIND_CONFIRMED, seq, null));
    }
    this.schedule();
  }

  flush(): Promise<void> {
    if (this.batch.length === 0 && !this.truncate && !this.writing) return Promise.resolve();
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.schedule();
    });
  }

  /** One batch per event-loop turn: everything accepted in the turn goes in one write. */
  private schedule(): void {
    if (this.scheduled || this.writing || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.writeBatch();
    });
  }

  private writeBatch(): void {
    if (this.writing || this.fd < 0) return;
    const chunks = this.batch;
    const truncate = this.truncate;
    this.batch = [];
    this.truncate = false;
    const waiters = this.waiters;
    this.waiters = [];
    if (chunks.length === 0 && !truncate) {
      for (const w of waiters) w();
      return;
    }
    this.writing = true;
    const done = (err: NodeJS.ErrnoException | null) => {
      this.writing = false;
      this.batches++;
      if (err) process.emitWarning(`sluice client: outbox log ${this.file}: ${err.message}`, { code: 'SLUICE_ERR_CLIENT_PERSIST_IO' });
      for (const w of waiters) w();
      if (this.batch.length > 0 || this.truncate || this.waiters.length > 0) this.writeBatch();
    };
    const fd = this.fd;
    const write = () => {
      if (chunks.length === 0) fs.fdatasync(fd, done);
      else {
        fs.writev(fd, chunks, (err, written) => {
          if (err) return done(err);
          // A short write to a regular file is rare; finish it rather than tear a record.
          const total = chunks.reduce((n, c) => n + c.length, 0);
          if (written < total) {
            try {
              fs.writeSync(fd, Buffer.concat(chunks).subarray(written));
            } catch (e) {
              return done(e as NodeJS.ErrnoException);
            }
          }
          fs.fdatasync(fd, done);
        });
      }
    };
    // The log is opened with O_APPEND, so writes after the truncation start at offset 0.
    if (truncate) fs.ftruncate(fd, 0, (err) => (err ? done(err) : write()));
    else write();
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
    fs.rmSync(this.lockFile, { force: true });
  }

  private ioError(err: unknown): SluiceError {
    return new SluiceError('SLUICE_ERR_CLIENT_PERSIST_IO',
      `outbox log in ${this.dir}: ${(err as Error).message}`, undefined, { cause: err });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function encodeRecord(kind: number, seq: number, payload: Buffer | null): Buffer {
  const length = payload === null ? 0 : payload.length;
  const rec = Buffer.allocUnsafe(HEADER_BYTES + length);
  rec[0] = kind;
  rec[1] = 0;
  rec.writeUIntBE(seq, 2, 6);
  rec.writeUInt32BE(length, 8);
  let crc = crc32(rec.subarray(0, 12));
  if (payload !== null) {
    payload.copy(rec, HEADER_BYTES);
    crc = crc32(payload, crc);
  }
  rec.writeUInt32BE(crc, 12);
  return rec;
}

/** The record at `at`, or null when it is torn (short, bad kind, bad checksum). */
function readRecord(data: Buffer, at: number): { kind: number; seq: number; payload: Buffer; end: number } | null {
  if (data.length - at < HEADER_BYTES) return null;
  const kind = data[at];
  if ((kind !== KIND_MESSAGE && kind !== KIND_CONFIRMED) || data[at + 1] !== 0) return null;
  const length = data.readUInt32BE(at + 8);
  if (length > data.length - at - HEADER_BYTES) return null;
  const payload = data.subarray(at + HEADER_BYTES, at + HEADER_BYTES + length);
  const crc = crc32(payload, crc32(data.subarray(at, at + 12)));
  if (crc !== data.readUInt32BE(at + 12)) return null;
  return { kind, seq: data.readUIntBE(at + 2, 6), payload, end: at + HEADER_BYTES + length };
}
