/**
 * One shard: the piscina task that runs a whole {@link Proxy} in a worker thread (its own
 * listener on the port every shard shares through SO_REUSEPORT, its own sessions and its
 * own instance of the codec addon) until it is told to stop, or until it crashes.
 *
 * A shard owns its end, so that no session is cut without its close handshake:
 *
 * - stop (a message): drain like `Proxy.close()` (1001), post the final counters, resolve
 *   the task; the thread then idles until the pool ends it;
 * - crash (an uncaught exception anywhere in the thread): stop accepting (the kernel
 *   sends new connections to the other shards), end every session with 1012, drain
 *   briefly, post the final counters, then `process.exit(1)` ends this thread only:
 *   piscina sees the exit and starts a fresh thread for the replacement.
 *
 * The pool never terminates a shard with sessions: no idle timeout, no abort signals, and
 * `close()` only after every task has returned.
 */
import { threadId } from 'node:worker_threads';
import { createProxy, type Proxy } from '../proxy/index.js';
import { ConnectionLedger } from '../proxy/ledger.js';
import {
  errorData, type ControlMessage, type ControlRequest, type QueryRequest, type QueryReply,
  type ShardTask, type ShardTaskResult,
} from './messages.js';

/** How long a crashed shard's sessions get to finish their close handshakes (1012). */
const CRASH_DRAIN_MS = 1000;

/** The piscina task: runs one shard until it is stopped (resolves) or crashes (the thread exits). */
export default async function runShard(task: ShardTask): Promise<ShardTaskResult> {
  const { id, control, query, signal } = task;
  const post = (m: ControlMessage) => control.postMessage(m);
  const ledger = new ConnectionLedger(task.ledger);
  const proxy: Proxy = createProxy(task.config, { ledger, reusePort: true, ticketKeys: task.ticketKeys, shard: task.id, resumePeers: task.resumePeers,
    drained: task.drained, firstSessionId: task.firstSessionId });

  let listening: Promise<unknown> = Promise.resolve();
  let ending: Promise<void> | null = null;
  let crashed = false;
  let finish!: (r: ShardTaskResult) => void;
  const finished = new Promise<ShardTaskResult>((resolve) => { finish = resolve; });

  /** Tells a main thread blocked on a query (or about to post one) that none will be answered. */
  const answerNoMore = () => {
    Atomics.store(signal, 1, 1);
    Atomics.notify(signal, 0);
  };

  /** Closes everything this shard holds, posts its final counters, and lets go of the ports. */
  const end = (drainMs: number, code = 1001, reason = 'proxy shutting down'): Promise<void> => {
    ending ??= (async () => {
      // After a failed listen, Proxy.listen() has already released what it had started.
      const listened = await listening.then(() => true, () => false);
      if (listened) {
        try {
          // Resolves when every session has ended and the listener is closed.
          await proxy.close({ drainMs, code, reason });
        } catch (err) {
          proxy.logger.error({ event: 'shard_close_error', shard: id, err }, 'error while closing the shard');
        }
      }
      proxy.counters.sync();
      post({ op: 'final', counters: proxy.counters });
      answerNoMore();
      query.removeAllListeners('message');
      control.removeAllListeners('message');
      query.close();
      control.close();
    })();
    return ending;
  };

  const onFatal = (err: unknown) => {
    if (crashed) return; // a second error while closing: the first one is being handled
    crashed = true;
    post({ op: 'fatal', error: errorData(err) });
    proxy.logger.fatal({ event: 'shard_crash', shard: id, err }, 'shard crashed; closing its sessions with 1012');
    proxy.stopAccepting();
    void end(Math.min(CRASH_DRAIN_MS, proxy.config.drain.timeoutMs), 1012, 'shard restart').finally(() => {
      // One more turn for the last socket callbacks; then only this thread ends.
      setImmediate(() => process.exit(1));
    });
  };
  process.on('uncaughtException', onFatal);

  control.on('message', (m: ControlRequest) => {
    switch (m.op) {
      case 'reload':
        ledger.setSlots(m.slots);
        proxy.reload(m.config).then(
          () => post({ op: 'reply', seq: m.seq, ok: true }),
          (err: unknown) => post({ op: 'reply', seq: m.seq, ok: false, error: errorData(err) }),
        );
        return;
      case 'counters':
        proxy.counters.sync();
        post({ op: 'reply', seq: m.seq, ok: true, value: proxy.counters });
        return;
      case 'sessions':
        post({ op: 'reply', seq: m.seq, ok: true, value: proxy.listSessions(m.filter, m.count) });
        return;
      case 'close-session':
        post({ op: 'reply', seq: m.seq, ok: true, value: proxy.closeSession(m.session, m.code, m.reason, m.by) });
        return;
      case 'drain':
        post({ op: 'reply', seq: m.seq, ok: true, value: proxy.drainUpstream(m.route, m.index, { undrain: m.undrain, closeWithinMs: m.closeWithinMs, by: m.by }) });
        return;
      case 'closes':
        post({ op: 'reply', seq: m.seq, ok: true, value: proxy.lastCloses() });
        return;
      case 'stop':
        // A crashed shard is already ending, and ends its thread rather than its task.
        if (!crashed) void end(m.drainMs).then(() => finish({ reason: 'stopped' }));
        return;
      case 'crash':
        setImmediate(() => {
          throw new Error(`shard ${id}: crash drill`);
        });
        return;
    }
  });
  query.on('message', (m: QueryRequest) => {
    const reply: QueryReply = { seq: m.seq, stats: proxy.stats(), ready: proxy.ready };
    query.postMessage(reply);
    // The reply is queued on the main thread's port before the flag says so.
    Atomics.store(signal, 0, 1);
    Atomics.notify(signal, 0);
  });
  post({ op: 'started', threadId });

  try {
    const p = proxy.listen();
    listening = p;
    const { port } = await p;
    post({ op: 'listening', port });
  } catch (err) {
    // Proxy.listen() has released what it started (routes, echo backend); the app has no socket.
    post({ op: 'listen-failed', error: errorData(err) });
    answerNoMore();
    query.close();
    control.close();
    process.off('uncaughtException', onFatal);
    return { reason: 'listen-failed' };
  }
  const result = await finished;
  process.off('uncaughtException', onFatal);
  return result;
}
