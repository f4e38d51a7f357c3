/**
 * src/policy: JWT and API-key access decisions, and the rate limiters. Keys are generated
 * at test time (jose) and written to temp files, as a user would configure them.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, UnsecuredJWT, exportJWK, exportSPKI, generateKeyPair, type CryptoKey } from 'jose';
import { parseConfig } from '../src/config/index.js';
import type { RouteAuthConfig } from '../src/config/types.js';
import { isSluiceError } from '../src/errors.js';
import { AccessPolicy, ConnectionRateLimiter, MessageRateLimiter, TokenBucket, type UpgradeInfo } from '../src/policy/index.js';

const dir = mkdtempSync(join(tmpdir(), 'sluice-policy-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const SECRET = 'a-shared-secret-of-at-least-32-bytes!';
const now = () => Math.floor(Date.now() / 1000);

/** The resolved auth config of a route, through the real schema (defaults filled in). */
function auth(input: object): RouteAuthConfig {
  return parseConfig({ routes: [{ path: '/r', upstreams: [{ url: 'ws://127.0.0.1:1/' }], auth: input }] }).routes[0].auth!;
}

function req(opts: { headers?: Record<string, string>; query?: string; protocols?: string[] } = {}): UpgradeInfo {
  return {
    headers: new Map(Object.entries(opts.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v])),
    query: opts.query ?? '',
    protocols: opts.protocols ?? [],
    remoteAddress: '127.0.0.1',
  };
}
const bearer = (token: string) => req({ headers: { authorization: `Bearer ${token}` } });

async function hs256(claims: Record<string, unknown>, secret = SECRET): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(secret));
}
async function signed(alg: 'RS256' | 'ES256', key: CryptoKey, claims: Record<string, unknown>, kid?: string): Promise<string> {
  return new SignJWT(claims).setProtectedHeader(kid ? { alg, kid } : { alg }).sign(key);
}

t.test('HS256 from Authorization: Bearer (the simplest form)', async (t) => {
  const policy = await AccessPolicy.create(auth({ jwt: { secret: SECRET } }), '/r');
  const exp = now() + 600;
  const ok = await policy.check(bearer(await hs256({ sub: 'alice', exp })));
  t.same(ok, { ok: true, principal: 'alice', expiresAt: (exp + 30) * 1000 }, 'sub is the principal; expiry includes the 30 s tolerance');
  t.same(await policy.check(req()), { ok: false, status: 401, reason: 'missing credentials' });
  t.same(await policy.check(req({ headers: { authorization: 'Basic YTpi' } })), { ok: false, status: 401, reason: 'missing credentials' });
  t.same(await policy.check(req({ headers: { authorization: `bearer   ${await hs256({})}` } })), { ok: true }, 'scheme is case-insensitive');
  t.same(await policy.check(bearer(await hs256({ sub: 'x' }, 'another-secret-that-is-long-enough-too'))),
    { ok: false, status: 401, reason: 'token signature does not verify' });
  t.same(await policy.check(bearer('not.a.jwt')), { ok: false, status: 401, reason: 'malformed token' });
  t.same(await policy.check(bearer('garbage')), { ok: false, status: 401, reason: 'malformed token' });
  const unsigned = new UnsecuredJWT({ sub: 'mallory' }).encode();
  t.same(await policy.check(bearer(unsigned)), { ok: false, status: 401, reason: 'token algorithm not accepted' }, 'alg "none" refused');
});

t.test('exp and nbf with the clock tolerance', async (t) => {
  const lenient = await AccessPolicy.create(auth({ jwt: { secret: SECRET } }), '/r');
  const strict = await AccessPolicy.create(auth({ jwt: { secret: SECRET, clockToleranceSeconds: 0 } }), '/r');
  const expiredLongAgo = await hs256({ exp: now() - 120 });
  const expiredJustNow = await hs256({ exp: now() - 10 });
  t.same(await lenient.check(bearer(expiredLongAgo)), { ok: false, status: 401, reason: 'token expired' });
  t.equal((await lenient.check(bearer(expiredJustNow))).ok, true, '10 s past exp is within 30 s of skew');
  t.same(await strict.check(bearer(expiredJustNow)), { ok: false, status: 401, reason: 'token expired' });
  const early = await hs256({ nbf: now() + 120 });
  const almost = await hs256({ nbf: now() + 10 });
  t.same(await lenient.check(bearer(early)), { ok: false, status: 401, reason: 'token not yet valid' });
  t.equal((await lenient.check(bearer(almost))).ok, true, '10 s before nbf is within the skew');
  t.same(await strict.check(bearer(almost)), { ok: false, status: 401, reason: 'token not yet valid' });
  const noExpiry = await AccessPolicy.create(auth({ jwt: { secret: SECRET, closeOnExpiry: false } }), '/r');
  t.same(await noExpiry.check(bearer(await hs256({ exp: now() + 60 }))), { ok: true }, 'closeOnExpiry false: no expiresAt');
});

t.test('iss and aud', async (t) => {
  const policy = await AccessPolicy.create(auth({ jwt: { secret: SECRET, issuer: 'https://idp.example', audience: 'chat' } }), '/r');
  t.equal((await policy.check(bearer(await hs256({ iss: 'https://idp.example', aud: 'chat' })))).ok, true);
  t.equal((await policy.check(bearer(await hs256({ iss: 'https://idp.example', aud: ['other', 'chat'] })))).ok, true, 'one of several audiences');
  t.same(await policy.check(bearer(await hs256({ iss: 'https://evil.example', aud: 'chat' }))),
    { ok: false, status: 401, reason: 'token issuer not accepted' });
  t.same(await policy.check(bearer(await hs256({ iss: 'https://idp.example', aud: 'billing' }))),
    { ok: false, status: 401, reason: 'token audience not accepted' });
  t.same(await policy.check(bearer(await hs256({ aud: 'chat' }))), { ok: false, status: 401, reason: 'token issuer not accepted' }, 'iss required when configured');
});

t.test('RS256 and ES256 with PEM public key files; no algorithm confusion', async (t) => {
  const rsa = await generateKeyPair('RS256');
  const ec = await generateKeyPair('ES256');
  const rsaFile = join(dir, 'rsa.pem');
  const ecFile = join(dir, 'ec.pem');
  writeFileSync(rsaFile, await exportSPKI(rsa.publicKey));
  writeFileSync(ecFile, await exportSPKI(ec.publicKey));
  const rsPolicy = await AccessPolicy.create(auth({ jwt: { publicKeyFile: rsaFile } }), '/r');
  const esPolicy = await AccessPolicy.create(auth({ jwt: { publicKeyFile: ecFile } }), '/r');
  t.same(await rsPolicy.check(bearer(await signed('RS256', rsa.privateKey, { sub: 'r' }))), { ok: true, principal: 'r' });
  t.same(await esPolicy.check(bearer(await signed('ES256', ec.privateKey, { sub: 'e' }))), { ok: true, principal: 'e' });
  const otherRsa = await generateKeyPair('RS256');
  t.same(await rsPolicy.check(bearer(await signed('RS256', otherRsa.privateKey, {}))),
    { ok: false, status: 401, reason: 'token signature does not verify' }, 'a token signed by another key');
  t.same(await rsPolicy.check(bearer(await signed('ES256', ec.privateKey, {}))),
    { ok: false, status: 401, reason: 'token algorithm not accepted' }, 'ES256 token against an RSA key');
  // The classic confusion attack: an HS256 token whose HMAC key is the public key's PEM text.
  const forged = await hs256({ sub: 'mallory' }, await exportSPKI(rsa.publicKey));
  t.same(await rsPolicy.check(bearer(forged)), { ok: false, status: 401, reason: 'token algorithm not accepted' });
  const rsOnly = await AccessPolicy.create(auth({ jwt: { publicKeyFile: ecFile, algorithms: ['ES256'] } }), '/r');
  t.equal((await rsOnly.check(bearer(await signed('ES256', ec.privateKey, {})))).ok, true);
});

t.test('JWKS file: the kid picks the key', async (t) => {
  const rsa = await generateKeyPair('RS256');
  const ec = await generateKeyPair('ES256');
  const jwks = { keys: [{ ...(await exportJWK(rsa.publicKey)), kid: 'r1', alg: 'RS256' }, { ...(await exportJWK(ec.publicKey)), kid: 'e1', alg: 'ES256' }] };
  const file = join(dir, 'jwks.json');
  writeFileSync(file, JSON.stringify(jwks));
  const policy = await AccessPolicy.create(auth({ jwt: { jwksFile: file, issuer: 'idp' } }), '/r');
  t.same(await policy.check(bearer(await signed('RS256', rsa.privateKey, { sub: 'a', iss: 'idp' }, 'r1'))), { ok: true, principal: 'a' });
  t.same(await policy.check(bearer(await signed('ES256', ec.privateKey, { sub: 'b', iss: 'idp' }, 'e1'))), { ok: true, principal: 'b' });
  t.same(await policy.check(bearer(await signed('RS256', rsa.privateKey, { iss: 'idp' }, 'nope'))),
    { ok: false, status: 401, reason: 'token key not known' });
  const stranger = await generateKeyPair('ES256');
  t.same(await policy.check(bearer(await signed('ES256', stranger.privateKey, { iss: 'idp' }, 'e1'))),
    { ok: false, status: 401, reason: 'token signature does not verify' });
});

t.test('token in a subprotocol entry or a query parameter', async (t) => {
  const token = await hs256({ sub: 'p' });
  const byProtocol = await AccessPolicy.create(auth({ jwt: { secret: SECRET, from: 'protocol' } }), '/r');
  t.same(await byProtocol.check(req({ protocols: ['chat.v1', `bearer.${token}`] })),
    { ok: true, principal: 'p', consumedProtocol: `bearer.${token}` }, 'the entry that carried it is reported, so it is not forwarded');
  t.same(await byProtocol.check(bearer(token)), { ok: false, status: 401, reason: 'missing credentials' }, 'only where configured');
  t.same(await byProtocol.check(req({ protocols: ['bearer.'] })), { ok: false, status: 401, reason: 'missing credentials' });
  const custom = await AccessPolicy.create(auth({ jwt: { secret: SECRET, from: 'protocol', protocolPrefix: 'jwt~' } }), '/r');
  t.equal((await custom.check(req({ protocols: [`jwt~${token}`] }))).ok, true);

  const byQuery = await AccessPolicy.create(auth({ jwt: { secret: SECRET, from: 'query' } }), '/r');
  t.same(await byQuery.check(req({ query: `x=1&access_token=${token}` })), { ok: true, principal: 'p' });
  t.same(await byQuery.check(req({ query: `?access_token=${token}` })), { ok: true, principal: 'p' }, 'leading "?" tolerated');
  t.same(await byQuery.check(req({ query: 'access_token=' })), { ok: false, status: 401, reason: 'missing credentials' });
  const named = await AccessPolicy.create(auth({ jwt: { secret: SECRET, from: 'query', queryParam: 't' } }), '/r');
  t.equal((await named.check(req({ query: `t=${token}` }))).ok, true);
});

t.test('API keys: stored as digests, from a header or the query', async (t) => {
  const key = 'k-7f3a9c-live';
  const digest = createHash('sha256').update(key).digest('hex');
  const other = createHash('sha256').update('second-key').digest('hex');
  const policy = await AccessPolicy.create(auth({ apiKeys: { sha256: [other, digest.toUpperCase()] } }), '/r');
  t.same(await policy.check(req({ headers: { 'x-api-key': key } })), { ok: true, principal: `apikey:${digest.slice(0, 8)}` });
  t.equal((await policy.check(req({ headers: { 'x-api-key': 'second-key' } }))).ok, true);
  t.same(await policy.check(req({ headers: { 'x-api-key': 'k-7f3a9c-livf' } })), { ok: false, status: 401, reason: 'API key not accepted' });
  t.same(await policy.check(req({ headers: { 'x-api-key': digest } })), { ok: false, status: 401, reason: 'API key not accepted' },
    'the digest itself is not a key');
  t.same(await policy.check(req()), { ok: false, status: 401, reason: 'missing credentials' });
  const custom = await AccessPolicy.create(auth({ apiKeys: { sha256: [digest], header: 'X-Tenant-Key' } }), '/r');
  t.equal((await custom.check(req({ headers: { 'x-tenant-key': key } }))).ok, true, 'header name is case-insensitive');
  const q = await AccessPolicy.create(auth({ apiKeys: { sha256: [digest], from: 'query' } }), '/r');
  t.equal((await q.check(req({ query: `api_key=${encodeURIComponent(key)}` }))).ok, true);
  t.equal((await q.check(req({ headers: { 'x-api-key': key } }))).ok, false, 'only where configured');
});

t.test('JWT and API keys together: either one lets a client in', async (t) => {
  const key = 'service-key';
  const policy = await AccessPolicy.create(auth({
    jwt: { secret: SECRET }, apiKeys: { sha256: [createHash('sha256').update(key).digest('hex')] },
  }), '/r');
  t.equal((await policy.check(req({ headers: { 'x-api-key': key } }))).ok, true);
  t.equal((await policy.check(bearer(await hs256({})))).ok, true);
  t.equal((await policy.check(req({ headers: { 'x-api-key': 'wrong', authorization: `Bearer ${await hs256({})}` } }))).ok, true,
    'a valid JWT with a wrong API key');
  t.same(await policy.check(req({ headers: { 'x-api-key': 'wrong' } })), { ok: false, status: 401, reason: 'API key not accepted' });
  t.same(await policy.check(req({ headers: { 'x-api-key': 'wrong', authorization: 'Bearer x.y.z' } })),
    { ok: false, status: 401, reason: 'malformed token' });
});

t.test('key files that cannot be used are config errors naming the route and key', async (t) => {
  const fail = async (cfg: object, pattern: RegExp, what: string) => {
    try {
      await AccessPolicy.create(auth(cfg), '/secure');
      t.fail(`${what}: expected an error`);
    } catch (err) {
      t.ok(isSluiceError(err, 'SLUICE_ERR_CONFIG'), `${what}: SLUICE_ERR_CONFIG`);
      t.match((err as Error).message, pattern, what);
    }
  };
  await fail({ jwt: { publicKeyFile: join(dir, 'missing.pem') } }, /^routes\[0\]\.auth\.jwt\.publicKeyFile: expected a readable file, got ".*missing\.pem" \(no such file\)$/, 'missing PEM');
  writeFileSync(join(dir, 'junk.pem'), 'not a key');
  await fail({ jwt: { publicKeyFile: join(dir, 'junk.pem') } }, /auth\.jwt\.publicKeyFile: expected a PEM public key or certificate/, 'junk PEM');
  const p384 = await generateKeyPair('ES384');
  writeFileSync(join(dir, 'p384.pem'), await exportSPKI(p384.publicKey));
  await fail({ jwt: { publicKeyFile: join(dir, 'p384.pem') } }, /expected an RSA or P-256 key for RS256, ES256, got an ec secp384r1 key/, 'P-384 key');
  const rsa = await generateKeyPair('RS256');
  writeFileSync(join(dir, 'rsa2.pem'), await exportSPKI(rsa.publicKey));
  await fail({ jwt: { publicKeyFile: join(dir, 'rsa2.pem'), algorithms: ['ES256'] } }, /expected an RSA or P-256 key for ES256, got a rsa key/, 'RSA key, ES256 only');
  await fail({ jwt: { jwksFile: join(dir, 'nope.json') } }, /auth\.jwt\.jwksFile: expected a readable file/, 'missing JWKS');
  writeFileSync(join(dir, 'bad.json'), '{"kids":[]}');
  await fail({ jwt: { jwksFile: join(dir, 'bad.json') } }, /auth\.jwt\.jwksFile: expected a JSON Web Key Set/, 'not a JWKS');
});

t.test('TokenBucket: burst, refill at the rate, clock going back', async (t) => {
  const b = new TokenBucket(10, 5); // 10/s, 5 at once
  let n = 0;
  while (b.take(1, 1000)) n++;
  t.equal(n, 5, 'starts full: burst 5');
  t.notOk(b.take(1, 1050), '50 ms later: not yet a whole token (0.5)');
  t.ok(b.take(1, 1100), '100 ms: one token');
  t.notOk(b.take(1, 1100));
  t.notOk(b.take(1, 500), 'a clock going back refills nothing');
  let m = 0;
  while (b.take(1, 60_000)) m++;
  t.equal(m, 5, 'a long pause refills to the burst, not beyond');
  t.notOk(b.take(6, 120_000), 'a cost above the burst never passes');
  t.ok(b.take(5, 120_000));
});

t.test('ConnectionRateLimiter: per IP, bounded memory, 0 = unlimited', async (t) => {
  const l = new ConnectionRateLimiter(2, 3, 100);
  const results = Array.from({ length: 5 }, () => l.allow('10.0.0.1', 0));
  t.same(results, [true, true, true, false, false], 'burst 3, then refused');
  t.ok(l.allow('10.0.0.2', 0), 'another address has its own bucket');
  t.ok(l.allow('10.0.0.1', 500), '2/s: one more after 500 ms');
  t.notOk(l.allow('10.0.0.1', 500));
  for (let i = 0; i < 10_000; i++) l.allow(`192.168.${i >> 8}.${i & 255}`, 1000);
  t.equal(l.trackedIps, 100, 'memory bounded by maxTrackedIps');
  const recent = new ConnectionRateLimiter(1, 1, 3);
  recent.allow('a', 0);
  recent.allow('b', 0);
  recent.allow('c', 0);
  t.notOk(recent.allow('a', 0), 'a is remembered (and now the most recent)');
  recent.allow('d', 0); // evicts b, the oldest
  t.notOk(recent.allow('a', 0), 'a was not evicted: recency, not insertion');
  t.ok(recent.allow('b', 0), 'b was forgotten: full bucket again');
  const off = new ConnectionRateLimiter(0, 0);
  t.ok(Array.from({ length: 1000 }, () => off.allow('x', 0)).every(Boolean), 'rate 0: unlimited');
  t.equal(off.trackedIps, 0, 'and remembers nothing');
  const noBurst = new ConnectionRateLimiter(5, 0);
  t.equal(Array.from({ length: 10 }, () => noBurst.allow('x', 0)).filter(Boolean).length, 5, 'burst 0: one second’s worth');
});

t.test('MessageRateLimiter: messages and bytes per second, 0 = off', async (t) => {
  const msgs = new MessageRateLimiter(100, 0);
  let n = 0;
  while (msgs.allow(10, 0) && n < 1000) n++;
  t.equal(n, 100, '100 messages in the first instant');
  t.notOk(msgs.allow(0, 5), '5 ms later: half a message');
  t.ok(msgs.allow(0, 10), '10 ms: one more');
  // Sustained: over 10 s of one message per 5 ms (200/s), about half pass.
  const sustained = new MessageRateLimiter(100, 0);
  let passed = 0;
  for (let ms = 0; ms < 10_000; ms += 5) if (sustained.allow(1, ms)) passed++;
  t.ok(passed >= 1000 && passed <= 1101, `~100/s sustained plus the burst (${passed} in 10 s)`);

  const bytes = new MessageRateLimiter(0, 1000);
  t.ok(bytes.allow(600, 0));
  t.ok(bytes.allow(600, 0), 'a positive balance lets a message through (debt: -200)');
  t.notOk(bytes.allow(1, 100), '100 ms later the debt is not yet paid (-100)');
  t.ok(bytes.allow(1, 201), 'paid back after 200 ms');
  const big = new MessageRateLimiter(0, 1000);
  t.ok(big.allow(5000, 0), 'a message above one second’s budget passes once…');
  t.notOk(big.allow(1, 3000), '…and the next waits until the debt is paid');
  t.ok(big.allow(1, 4001));
  const both = new MessageRateLimiter(2, 1_000_000);
  t.ok(both.allow(1, 0));
  t.ok(both.allow(1, 0));
  t.notOk(both.allow(1, 0), 'the message limit binds first');
  const off = new MessageRateLimiter(0, 0);
  t.ok(Array.from({ length: 10_000 }, (_, i) => off.allow(1 << 20, i)).every(Boolean), 'both 0: unlimited');
});
