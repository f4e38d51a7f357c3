// The live dashboard (issue #16) in a real browser: Debian's chromium driven by
// playwright-core, against the real CLI. The page asks for a token and refuses a wrong
// one, takes one from the URL fragment, shows the true session count, its charts move
// while traffic flows, it closes a session, and it works through sluice itself (an
// `http: true` route in front of the admin server). It writes docs/dashboard.png, the
// screenshot the docs show. Without chromium (Debian: apt-get install chromium; .ci/run
// installs it) the file says so and skips.
/// <reference lib="dom" />
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { chromium, type Browser, type Page } from 'playwright-core';
import { WebSocket } from 'ws';
import { freePort, root, startCli } from './fixtures/cli-process.js';
import { connect as open } from './fixtures/peers.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const skip = CHROMIUM === undefined ? 'chromium is not installed (Debian: apt-get install chromium)' : false;
const TOKEN = 'dash-token-0123456789abcdef';

t.test('the dashboard in chromium', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-dash-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const [port, adminPort] = [await freePort(), await freePort()];
  const config = join(dir, 'sluice.yaml');
  writeFileSync(config, `
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort}, tokens: [ { name: oncall, token: ${TOKEN} } ] }
log: { level: info }
routes:
  - { path: /echo, upstreams: [ { url: "builtin:echo" } ] }
  - { path: "/ops/*", http: true, upstreams: [ { url: "ws://127.0.0.1:${adminPort}/" } ] }
`);
  const proxy = startCli(['--config', config]);
  t.teardown(() => proxy.stop());
  const admin = `http://127.0.0.1:${adminPort}/`;
  for (let i = 0; ; i++) {
    if (await fetch(`${admin}healthz`, { headers: { authorization: `Bearer ${TOKEN}` } }).then((r) => r.ok, () => false)) break;
    if (i > 150) throw new Error('the admin server did not come up');
    await new Promise((r) => setTimeout(r, 100));
  }

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
  t.teardown(() => browser.close());
  const clients: WebSocket[] = [];
  t.teardown(() => { for (const c of clients) c.terminate(); });
  /** A page in a fresh context (its own sessionStorage); its script errors are checked at the end of the test. */
  const newPage = async (t: Test, width = 1280, height = 900): Promise<Page> => {
    const context = await browser.newContext({ viewport: { width, height }, colorScheme: 'light' });
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // A Content-Security-Policy violation is a console error, not a page error.
    page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) errors.push(m.text()); });
    checks.push(() => t.same(errors, [], 'no script errors on the page'));
    t.teardown(() => context.close());
    return page;
  };
  const checks: Array<() => void> = [];
  const noErrors = () => { for (const c of checks.splice(0)) c(); };

  await t.test('without a token: the login form; a wrong token is refused; the right one opens it', async (t) => {
    const page = await newPage(t);
    await page.goto(admin);
    await page.waitForSelector('#login:not([hidden])');
    t.ok(await page.isHidden('#app'), 'no data shown');
    await page.fill('#token', 'wrong-token');
    await page.click('#login-form button');
    await page.waitForFunction(() => /refused/.test(document.getElementById('login-error')!.textContent ?? ''));
    t.pass('a refused token shows the login with why');
    await page.fill('#token', TOKEN);
    await page.click('#login-form button');
    await page.waitForSelector('#app:not([hidden])');
    t.ok(await page.isHidden('#login'), 'the right token opens the dashboard');
    t.equal(await page.evaluate(() => sessionStorage.getItem('sluice-admin-token')), TOKEN, 'kept for the tab');
    noErrors();
  });

  await t.test('with the token in the fragment: true session count, moving charts, a session closed from the page', async (t) => {
    for (let i = 0; i < 3; i++) clients.push(await open(`ws://127.0.0.1:${port}/echo`));
    const page = await newPage(t);
    await page.goto(`${admin}#token=${TOKEN}`);
    await page.waitForSelector('#app:not([hidden])');
    t.equal(new URL(page.url()).hash, '', 'the token left the address bar');
    await page.waitForFunction(() => document.getElementById('c-sessions')!.textContent === '3', undefined, { timeout: 10_000 });
    t.pass('the true session count: 3');
    await page.waitForFunction(() => document.querySelectorAll('#sessions tr').length === 3, undefined, { timeout: 10_000 });
    t.pass('three live sessions listed');

    // Traffic for six seconds, rising then falling, each client sending and getting its
    // echo; the page is read while it flows.
    const start = Date.now();
    let sent = 0;
    let seenIn = 0;
    let seenOut = 0;
    const readCards = async () => {
      const value = async (id: string) => Number((await page.textContent(id))!.replace(/[^0-9.]/g, '')) || 0;
      seenIn = Math.max(seenIn, await value('#c-min'));
      seenOut = Math.max(seenOut, await value('#c-mout'));
    };
    let lastRead = Date.now();
    while (Date.now() - start < 6000) {
      const burst = 1 + Math.round(4 * Math.sin((Math.PI * (Date.now() - start)) / 6000));
      for (const c of clients) for (let i = 0; i < burst; i++) { c.send('x'.repeat(64)); sent++; }
      if (Date.now() - lastRead > 500) {
        await readCards();
        lastRead = Date.now();
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    await readCards();
    t.ok(seenIn > 0, `messages/s in rose above zero while traffic flowed (${sent} sent; ${seenIn} shown)`);
    t.ok(seenOut > 0, `messages/s out too (${seenOut} shown)`);
    t.match(await page.textContent('#routes'), /\/echo/, 'routes and upstreams listed');
    t.match(await page.textContent('#shards'), /0/, 'the shard listed');

    // The screenshot the docs show, taken while traffic has just flowed: written to docs/
    // with SLUICE_UPDATE_SCREENSHOT=1, else to a temporary file (the tree stays clean).
    const shot = process.env.SLUICE_UPDATE_SCREENSHOT === '1' ? join(root, 'docs', 'dashboard.png') : join(dir, 'dashboard.png');
    const png = await page.screenshot({ path: shot, fullPage: false });
    t.same([...png.subarray(1, 4)].map((b) => String.fromCharCode(b)).join(''), 'PNG', `a PNG screenshot (${shot})`);

    // Close one session from the page: its prompts are answered 4000 and a reason.
    const victim = clients[0];
    const closed = new Promise<{ code: number; reason: string }>((resolve) => victim.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    const answers = ['4000', 'closed from the dashboard'];
    page.on('dialog', (d) => void d.accept(answers.shift()));
    await page.click('#sessions tr:first-child button');
    const got = await closed;
    t.equal(got.code, 4000, 'the client got 4000');
    t.equal(got.reason, 'closed from the dashboard', 'and the reason');
    await proxy.waitFor((l) => l.event === 'session_close_requested' && l.by === 'oncall');
    t.pass('logged with the token name');
    await page.waitForFunction(() => document.getElementById('c-sessions')!.textContent === '2', undefined, { timeout: 10_000 });
    await page.waitForFunction(() => /4000/.test(document.getElementById('closed')!.textContent ?? ''), undefined, { timeout: 10_000 });
    t.pass('the count went to 2 and the closed session shows its code');
    noErrors();
  });

  await t.test('through sluice itself, on a phone-sized screen, dark', async (t) => {
    const page = await newPage(t, 390, 844);
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.goto(`http://127.0.0.1:${port}/ops/#token=${TOKEN}`);
    await page.waitForSelector('#app:not([hidden])');
    await page.waitForFunction(() => document.getElementById('c-sessions')!.textContent === '2', undefined, { timeout: 10_000 });
    t.pass('the feed streams through an http route of sluice');
    t.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways scrolling on a phone');
    const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    t.equal(bg, 'rgb(13, 17, 23)', 'dark colours under a dark system theme');
    noErrors();
  });
});
