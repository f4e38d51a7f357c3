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

interface ListenAddon {
  listenReusePort?: (host: string, port: number, backlog: number, reusePort?: boolean) => number;
  socketPort?: (fd: number) => number;
}

/**
 * A listening socket for the native engine to accept on (its descriptor): SO_REUSEPORT
 * only for shards, so that a second instance on a port in use fails as it should.
 */
export function listenSocket(host: string, port: number, reusePort: boolean): number {
  const addon = nativeAddon as ListenAddon | null;
  if (!addon?.listenReusePort) throw new SluiceError('SLUICE_ERR_LISTEN', 'the native addon cannot listen (built from an older native/?)');
  try {
    return addon.listenReusePort(host, port, 511, reusePort);
  } catch (err) {
    throw new SluiceError('SLUICE_ERR_LISTEN', `${(err as Error).message} (in use, or not an address of this machine)`);
  }
}

/** The local port of a listening descriptor. */
export function socketPort(fd: number): number {
  return (nativeAddon as ListenAddon | null)?.socketPort?.(fd) ?? -1;
}
