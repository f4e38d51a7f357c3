/**
 * Where the listener binds, and how shards share one port.
 *
 * Shards (worker threads, each with its own proxy) all listen on the same port with
 * SO_REUSEPORT, so the kernel spreads connections over them. Node 20's `net` cannot set
 * that option; Node >= 22.12 can (`reusePort`). On Node 20 the native addon makes the
 * socket (bound, listening, SO_REUSEPORT) and the server listens on its descriptor.
 */
import type net from 'node:net';
import { SluiceError } from '../errors.js';
import { nativeAddon } from '../codec/native.js';

/** Node's net takes `reusePort` from 22.12 (and 23.1) on. */
export function nodeHasReusePort(version = process.versions.node): boolean {
  const [major, minor] = version.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/** Options for `server.listen()`: plain, or shared with the other shards through SO_REUSEPORT. */
export function listenOptions(host: string, port: number, reusePort: boolean): net.ListenOptions {
  if (!reusePort) return { host, port };
  if (nodeHasReusePort()) return { host, port, reusePort: true } as net.ListenOptions;
  const addon = nativeAddon as { listenReusePort?: (host: string, port: number, backlog: number) => number } | null;
  if (addon?.listenReusePort) return { fd: addon.listenReusePort(host, port, 511) } as net.ListenOptions;
  throw new SluiceError('SLUICE_ERR_LISTEN',
    `shards share port ${port} through SO_REUSEPORT, which needs the native addon or Node >= 22.12 (this is ${process.version}` +
    `${process.env.SLUICE_NO_NATIVE === '1' ? ' with SLUICE_NO_NATIVE=1' : ''}); use workers: 1 or either of those`);
}
