/**
 * The engines that hold sessions' sockets: the native one (native/engine/, through
 * native.ts) for every session but resumable ones and those through tunnel agents, and
 * the TypeScript one (src/proxy/session.ts) for those and wherever the addon does not load.
 */
export { NativeEngine, nativeEngineUnavailable, socketFd, type EngineEvent, type EngineParams } from './native.js';
