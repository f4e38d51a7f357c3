/**
 * The engines that hold sessions' sockets: the native one (native/engine/, through
 * native.ts) for transparent plain-TCP sessions, and the TypeScript one
 * (src/proxy/session.ts) for the rest and wherever the addon does not load.
 */
export { NativeEngine, nativeEngineUnavailable, socketFd, type EngineEvent, type EngineParams } from './native.js';
