/**
 * Per-route access control, decided on the upgrade request before any upstream is dialled:
 * JWTs (HS256 with a shared secret, RS256/ES256 with a PEM public key or a JWKS file) and
 * API keys stored as SHA-256 digests. Keys are read once, when the policy is created.
 */
import { createHash, createPublicKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet, type JWTVerifyGetKey, type JWTVerifyOptions } from 'jose';
import type { ApiKeyAuthConfig, JwtAuthConfig, RouteAuthConfig } from '../config/types.js';
import { ConfigError } from '../errors.js';

/** What the access policy sees of an upgrade request. */
export interface UpgradeInfo {
  /** Request headers by lower-case name. */
  headers: ReadonlyMap<string, string>;
  /** The query string (with or without its leading "?"). */
  query: string;
  /** Subprotocols the client offered, in order. */
  protocols: readonly string[];
  remoteAddress: string;
}

/** The verdict on one upgrade request. */
export type AccessDecision =
  | {
    ok: true;
    /** Who the client is: the JWT's `sub`, or `apikey:<first 8 hex digits of its digest>`. */
    principal?: string;
    /** When the session must end (ms epoch): the JWT's exp plus the clock tolerance, when closeOnExpiry is on. */
    expiresAt?: number;
    /** The subprotocol entry that carried the token: not to be forwarded upstream. */
    consumedProtocol?: string;
    /**
     * Agent routes: the names these credentials may register (a JWT's `sub` and its `agents`
     * claim; an API key's `agents` list), or null for any name (a key listed as a plain digest).
     */
    agents?: string[] | null;
  }
  | { ok: false; status: 401; reason: string };

const MISSING = 'missing credentials';

/** The reason a JWT was refused, in words safe to send back (no key material, no claims). */
function jwtRefusal(err: unknown): string {
  const e = err as { code?: string; claim?: string; reason?: string };
  switch (e.code) {
    case 'ERR_JWT_EXPIRED':
      return 'token expired';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      if (e.claim === 'nbf') return 'token not yet valid';
      if (e.claim === 'iss') return 'token issuer not accepted';
      if (e.claim === 'aud') return 'token audience not accepted';
      return `token claim ${e.claim ?? ''} not accepted`.replace('  ', ' ');
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return 'token algorithm not accepted';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'token signature does not verify';
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return 'token key not known';
    default:
      return 'malformed token';
  }
}

function readKeyFile(file: string, what: string, routePath: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new ConfigError([`route ${routePath}: auth.jwt.${what}: expected a readable file, got ${JSON.stringify(file)} (${code === 'ENOENT' ? 'no such file' : code})`]);
  }
}

/** JWT verification for one route. */
class JwtCheck {
  private readonly config: JwtAuthConfig;
  private readonly key: Uint8Array | KeyObject | JWTVerifyGetKey;
  private readonly options: JWTVerifyOptions;

  private constructor(config: JwtAuthConfig, key: Uint8Array | KeyObject | JWTVerifyGetKey, algorithms: readonly string[]) {
    this.config = config;
    this.key = key;
    this.options = {
      algorithms: [...algorithms],
      clockTolerance: config.clockToleranceSeconds,
      ...(config.issuer !== undefined ? { issuer: config.issuer } : {}),
      ...(config.audience !== undefined ? { audience: config.audience } : {}),
    };
  }

  static create(config: JwtAuthConfig, routePath: string): JwtCheck {
    if (config.secret !== undefined) return new JwtCheck(config, new TextEncoder().encode(config.secret), config.algorithms);
    if (config.publicKeyFile !== undefined) {
      const pem = readKeyFile(config.publicKeyFile, 'publicKeyFile', routePath);
      let key: KeyObject;
      try {
        key = createPublicKey(pem); // SPKI "PUBLIC KEY", PKCS#1 "RSA PUBLIC KEY" or an X.509 certificate
      } catch (err) {
        throw new ConfigError([`route ${routePath}: auth.jwt.publicKeyFile: expected a PEM public key or certificate, got ${JSON.stringify(config.publicKeyFile)} (${(err as Error).message})`]);
      }
      const type = key.asymmetricKeyType;
      const curve = key.asymmetricKeyDetails?.namedCurve;
      // Only the algorithms this key can verify: a token naming another one is refused as such.
      const fits = config.algorithms.filter((a) => (a === 'RS256' && type === 'rsa') || (a === 'ES256' && type === 'ec' && curve === 'prime256v1'));
      if (fits.length === 0) {
        throw new ConfigError([`route ${routePath}: auth.jwt.publicKeyFile: expected an RSA or P-256 key for ${config.algorithms.join(', ')}, got a${type === 'ec' || type === 'ed25519' ? 'n' : ''} ${type}${curve ? ` ${curve}` : ''} key in ${JSON.stringify(config.publicKeyFile)}`]);
      }
      return new JwtCheck(config, key, fits);
    }
    const file = config.jwksFile!;
    const text = readKeyFile(file, 'jwksFile', routePath);
    try {
      const jwks = JSON.parse(text) as JSONWebKeySet;
      if (!Array.isArray(jwks?.keys)) throw new Error('no "keys" list');
      return new JwtCheck(config, createLocalJWKSet(jwks), config.algorithms);
    } catch (err) {
      throw new ConfigError([`route ${routePath}: auth.jwt.jwksFile: expected a JSON Web Key Set, got ${JSON.stringify(file)} (${(err as Error).message})`]);
    }
  }

  /** The token in the request, and the subprotocol entry it came in (if any). */
  token(info: UpgradeInfo): { token: string; protocol?: string } | null {
    const c = this.config;
    if (c.from === 'header') {
      const h = info.headers.get('authorization');
      if (h === undefined) return null;
      const m = /^bearer[ \t]+(\S+)[ \t]*$/i.exec(h);
      return m ? { token: m[1] } : null;
    }
    if (c.from === 'protocol') {
      for (const p of info.protocols) {
        if (p.startsWith(c.protocolPrefix) && p.length > c.protocolPrefix.length) {
          return { token: p.slice(c.protocolPrefix.length), protocol: p };
        }
      }
      return null;
    }
    const v = new URLSearchParams(info.query).get(c.queryParam);
    return v === null || v === '' ? null : { token: v };
  }

  async verify(token: string): Promise<{ sub?: string; exp?: number; agents?: unknown } | string> {
    try {
      // jose's overloads are per key kind; ours is one of them, chosen at creation.
      const { payload } = await jwtVerify(token, this.key as Uint8Array, this.options);
      return { sub: typeof payload.sub === 'string' ? payload.sub : undefined, exp: payload.exp, agents: payload.agents };
    } catch (err) {
      return jwtRefusal(err);
    }
  }
}

/** API keys for one route: only digests are held; a presented key is hashed and compared in constant time. */
class ApiKeyCheck {
  private readonly config: ApiKeyAuthConfig;
  private readonly digests: Buffer[];

  constructor(config: ApiKeyAuthConfig) {
    this.config = config;
    this.digests = config.sha256.map((h) => Buffer.from(h, 'hex'));
  }

  key(info: UpgradeInfo): string | null {
    if (this.config.from === 'header') {
      const v = info.headers.get(this.config.header);
      if (v === undefined || v === '') return null;
      // In the Authorization header a key is a bearer credential (as agents send it).
      const bearer = this.config.header === 'authorization' ? /^Bearer\s+(\S+)\s*$/i.exec(v) : null;
      return bearer !== null ? bearer[1] : v.trim();
    }
    const v = new URLSearchParams(info.query).get(this.config.queryParam);
    return v === null || v === '' ? null : v;
  }

  /** The matching digest (hex), or null. Every stored digest is compared, so timing says nothing about which one matched. */
  match(key: string): string | null {
    const presented = createHash('sha256').update(key, 'utf8').digest();
    let found = -1;
    for (let i = 0; i < this.digests.length; i++) {
      if (timingSafeEqual(presented, this.digests[i]) && found < 0) found = i;
    }
    return found < 0 ? null : this.config.sha256[found];
  }
}

/**
 * The access policy of one route (one per route with `auth` configured). With both JWT and
 * API keys configured, either credential lets a client in; when both are presented and the
 * API key is wrong, the JWT still decides (and the reverse).
 */
export class AccessPolicy {
  private readonly jwt: JwtCheck | null;
  private readonly apiKeys: ApiKeyCheck | null;
  private readonly closeOnExpiry: boolean;
  private readonly toleranceMs: number;
  private readonly keyAgents: Record<string, string[]>;
  /** Agent routes: decisions say which agent names the credentials may register. */
  private readonly forAgents: boolean;

  private constructor(jwt: JwtCheck | null, apiKeys: ApiKeyCheck | null, auth: RouteAuthConfig, forAgents: boolean) {
    this.forAgents = forAgents;
    this.jwt = jwt;
    this.apiKeys = apiKeys;
    this.keyAgents = auth.apiKeys?.agents ?? {};
    this.closeOnExpiry = auth.jwt?.closeOnExpiry ?? false;
    this.toleranceMs = (auth.jwt?.clockToleranceSeconds ?? 0) * 1000;
  }

  /**
   * Builds the policy and reads its key files (once). Throws a ConfigError
   * (`SLUICE_ERR_CONFIG`, one line naming the route and key) when a key file cannot be
   * read or holds no usable key.
   */
  static async create(auth: RouteAuthConfig, routePath: string, forAgents = false): Promise<AccessPolicy> {
    const jwt = auth.jwt ? JwtCheck.create(auth.jwt, routePath) : null;
    const apiKeys = auth.apiKeys ? new ApiKeyCheck(auth.apiKeys) : null;
    if (jwt === null && apiKeys === null) {
      throw new ConfigError([`route ${routePath}: auth: expected jwt, apiKeys or both`]);
    }
    return new AccessPolicy(jwt, apiKeys, auth, forAgents);
  }

  /** Decides on one upgrade request. Never throws: every failure is a 401 with a reason. */
  async check(info: UpgradeInfo): Promise<AccessDecision> {
    let reason = MISSING;
    if (this.apiKeys !== null) {
      const key = this.apiKeys.key(info);
      if (key !== null) {
        const digest = this.apiKeys.match(key);
        if (digest !== null) {
          const ok: AccessDecision = { ok: true, principal: `apikey:${digest.slice(0, 8)}` };
          if (this.forAgents) ok.agents = this.keyAgents[digest] ?? null;
          return ok;
        }
        reason = 'API key not accepted';
      }
    }
    if (this.jwt !== null) {
      const found = this.jwt.token(info);
      if (found !== null) {
        const result = await this.jwt.verify(found.token);
        if (typeof result === 'string') return { ok: false, status: 401, reason: result };
        const decision: AccessDecision = { ok: true };
        if (result.sub !== undefined) decision.principal = result.sub;
        if (this.forAgents) {
          const claimed = Array.isArray(result.agents) ? (result.agents as unknown[]).filter((a): a is string => typeof a === 'string') : [];
          decision.agents = result.sub !== undefined ? [result.sub, ...claimed] : claimed;
        }
        if (this.closeOnExpiry && typeof result.exp === 'number') decision.expiresAt = result.exp * 1000 + this.toleranceMs;
        if (found.protocol !== undefined) decision.consumedProtocol = found.protocol;
        return decision;
      }
    }
    return { ok: false, status: 401, reason };
  }
}
