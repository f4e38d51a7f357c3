/**
 * The live dashboard the admin server serves at `/`: one self-contained page (HTML, CSS,
 * JavaScript inline; no framework, nothing fetched from elsewhere). It holds no data: it
 * reads the admin token from the URL fragment (`#token=...`, never a query string) or a
 * login form, keeps it for the tab (sessionStorage), and sends it with every request. The
 * numbers come from `events` (server-sent events read through fetch, which can send the
 * token header), the live sessions from `sessions`; the actions call `sessions/{id}` and
 * `upstreams/{route}/{index}/drain`. Every path is relative, so the page works behind a
 * path prefix, sluice's own http routes included. Text from the wire (routes, reasons,
 * addresses) is set as textContent, never as HTML.
 */
import { createHash } from 'node:crypto';

export const DASHBOARD_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>sluice</title>
<style>
:root { --bg:#f6f7f9; --card:#fff; --fg:#1b1f24; --mute:#5b6570; --line:#dde1e6; --in:#1f6feb; --out:#d9480f; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
@media (prefers-color-scheme: dark) { :root { --bg:#0d1117; --card:#161b22; --fg:#e6edf3; --mute:#8d96a0; --line:#30363d; --in:#58a6ff; --out:#ff8e4f; --ok:#3fb950; --bad:#f85149; --warn:#d29922; } }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--fg); }
header { display:flex; flex-wrap:wrap; gap:.5rem 1rem; align-items:center; padding:.6rem 1rem; border-bottom:1px solid var(--line); background:var(--card); position:sticky; top:0; z-index:1; }
header h1 { font-size:1.05rem; margin:0; }
.dot { display:inline-block; width:.6rem; height:.6rem; border-radius:50%; background:var(--mute); margin-right:.3rem; }
.dot.ok { background:var(--ok); } .dot.bad { background:var(--bad); }
.mute { color:var(--mute); } .right { margin-left:auto; }
main { padding:1rem; display:grid; gap:1rem; grid-template-columns:repeat(auto-fit, minmax(min(100%, 26rem), 1fr)); }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; min-width:0; }
section.wide { grid-column:1 / -1; }
h2 { font-size:.95rem; margin:0 0 .6rem; }
.cards { display:grid; gap:.6rem; grid-template-columns:repeat(auto-fit, minmax(8.5rem, 1fr)); }
.card { border:1px solid var(--line); border-radius:6px; padding:.5rem .7rem; }
.card b { display:block; font-size:1.35rem; font-variant-numeric:tabular-nums; }
.card span { color:var(--mute); font-size:.8rem; }
canvas { width:100%; height:150px; display:block; }
.legend { font-size:.8rem; color:var(--mute); } .legend i { display:inline-block; width:.8rem; height:.2rem; vertical-align:middle; margin:0 .25rem 0 .6rem; }
.legend i.in { background:var(--in); } .legend i.out { background:var(--out); }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:.25rem .45rem; border-bottom:1px solid var(--line); white-space:nowrap; }
th { color:var(--mute); font-weight:600; font-size:.8rem; }
td.num, th.num { text-align:right; }
.tag { font-size:.75rem; padding:0 .35rem; border-radius:4px; border:1px solid var(--line); }
.tag.ok { color:var(--ok); } .tag.bad { color:var(--bad); } .tag.warn { color:var(--warn); }
button { font:inherit; font-size:.8rem; padding:.15rem .5rem; border-radius:5px; border:1px solid var(--line); background:var(--bg); color:var(--fg); cursor:pointer; }
button:hover { border-color:var(--mute); }
input { font:inherit; padding:.35rem .5rem; border-radius:5px; border:1px solid var(--line); background:var(--bg); color:var(--fg); }
#login { max-width:24rem; margin:12vh auto; }
#login form { display:flex; gap:.5rem; } #login input { flex:1; }
.err { color:var(--bad); min-height:1.2em; }
[hidden] { display:none !important; }
</style>
</head>
<body>
<header>
  <h1>sluice</h1>
  <span id="ready"><span class="dot"></span><span>connecting…</span></span>
  <span class="mute" id="engine"></span>
  <span class="mute right" id="updated"></span>
  <button id="logout" hidden>Forget token</button>
</header>

<section id="login" hidden>
  <h2>Admin token</h2>
  <p class="mute">This proxy's admin server asks for a token (admin.token or one of admin.tokens). It is kept for this tab only.</p>
  <form id="login-form"><input id="token" type="password" autocomplete="current-password" placeholder="token" aria-label="admin token"><button type="submit">Open</button></form>
  <p class="err" id="login-error"></p>
</section>

<main id="app" hidden>
  <section class="wide">
    <div class="cards">
      <div class="card"><b id="c-sessions">–</b><span>live sessions</span></div>
      <div class="card"><b id="c-min">–</b><span>messages/s in</span></div>
      <div class="card"><b id="c-mout">–</b><span>messages/s out</span></div>
      <div class="card"><b id="c-bin">–</b><span>bytes/s in</span></div>
      <div class="card"><b id="c-bout">–</b><span>bytes/s out</span></div>
      <div class="card"><b id="c-1009">–</b><span>1009 (too big)</span></div>
      <div class="card"><b id="c-dropped">–</b><span>messages dropped</span></div>
      <div class="card"><b id="c-bp">–</b><span>backpressure events</span></div>
    </div>
  </section>
  <section>
    <h2>Messages per second <span class="legend"><i class="in"></i>in (client → upstream)<i class="out"></i>out</span></h2>
    <canvas id="chart-msgs" aria-label="messages per second, last 5 minutes"></canvas>
  </section>
  <section>
    <h2>Bytes per second <span class="legend"><i class="in"></i>in<i class="out"></i>out</span></h2>
    <canvas id="chart-bytes" aria-label="bytes per second, last 5 minutes"></canvas>
  </section>
  <section class="wide">
    <h2>Routes and upstreams</h2>
    <div class="scroll"><table><thead><tr><th>route</th><th class="num">sessions</th><th>upstream</th><th class="num">sessions</th><th>health</th><th></th></tr></thead><tbody id="routes"></tbody></table></div>
  </section>
  <section>
    <h2>Closes by code</h2>
    <div class="scroll"><table><thead><tr><th>code</th><th>meaning</th><th class="num">sessions</th></tr></thead><tbody id="codes"></tbody></table></div>
  </section>
  <section>
    <h2>Shards</h2>
    <div class="scroll"><table><thead><tr><th>shard</th><th class="num">sessions</th><th class="num">restarts</th></tr></thead><tbody id="shards"></tbody></table></div>
  </section>
  <section id="agents-box" hidden>
    <h2>Agents</h2>
    <div class="scroll"><table><thead><tr><th>agent</th><th>services</th><th>from</th><th class="num">streams open</th><th class="num">streams</th><th class="num">bytes in</th><th class="num">bytes out</th></tr></thead><tbody id="agents"></tbody></table></div>
  </section>
  <section id="tunnels-box" hidden>
    <h2>Tunnels</h2>
    <div class="scroll"><table><thead><tr><th>listen</th><th>agent / service</th><th class="num">open</th><th class="num">total</th><th class="num">refused</th></tr></thead><tbody id="tunnels"></tbody></table></div>
  </section>
  <section class="wide">
    <h2>Live sessions <span class="mute" id="sessions-count"></span></h2>
    <div class="scroll"><table><thead><tr><th>id</th><th>route</th><th>upstream</th><th>client</th><th class="num">age</th><th class="num">msgs in/out</th><th class="num">bytes in/out</th><th></th></tr></thead><tbody id="sessions"></tbody></table></div>
  </section>
  <section class="wide">
    <h2>Last closed sessions</h2>
    <div class="scroll"><table><thead><tr><th>ended</th><th>id</th><th>route</th><th>client code</th><th>reason</th><th>upstream code</th><th>first</th><th class="num">duration</th><th class="num">bytes in/out</th></tr></thead><tbody id="closed"></tbody></table></div>
  </section>
</main>

<script>
(function () {
  'use strict';
  var KEY = 'sluice-admin-token';
  var HISTORY = 300;
  var base = location.pathname.endsWith('/') ? location.pathname : location.pathname + '/';
  var CODES = { 1000: 'normal', 1001: 'going away', 1002: 'protocol error', 1003: 'unsupported data', 1005: 'no code', 1006: 'abnormal (no close frame)',
    1007: 'invalid payload', 1008: 'policy violation', 1009: 'message too big', 1010: 'extension', 1011: 'internal error', 1012: 'service restart',
    1013: 'try again later', 1014: 'bad gateway', 1015: 'TLS handshake' };
  var $ = function (id) { return document.getElementById(id); };
  var token = '';
  var prev = null;
  var series = { t: [], min: [], mout: [], bin: [], bout: [] };
  var abort = null;
  var sessionsTimer = null;

  // The token: from the fragment (then dropped from the address bar), else this tab's storage.
  var m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    var fromFragment = m[1];
    try { fromFragment = decodeURIComponent(m[1]); } catch (e) { /* not percent-encoded: taken as it is */ }
    token = fromFragment;
    try { sessionStorage.setItem(KEY, fromFragment); } catch (e) { /* storage off: the token lives in this page */ }
    history.replaceState(null, '', location.pathname + location.search);
  }
  try { token = sessionStorage.getItem(KEY) || token; } catch (e) { /* keep it */ }

  function headers() { return token ? { Authorization: 'Bearer ' + token } : {}; }
  function el(tag, text, cls) { var e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
  function row(cells) { var tr = document.createElement('tr'); cells.forEach(function (c) { tr.appendChild(c); }); return tr; }
  function num(v) { return el('td', v, 'num'); }
  function fill(id, rows) { var tb = $(id); tb.replaceChildren.apply(tb, rows); }
  function si(n) {
    if (!isFinite(n)) return '–';
    var a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(2) + ' G';
    if (a >= 1e6) return (n / 1e6).toFixed(2) + ' M';
    if (a >= 1e4) return (n / 1e3).toFixed(1) + ' k';
    return a >= 100 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
  }
  function bytes(n) {
    if (n >= 1073741824) return (n / 1073741824).toFixed(2) + ' GiB';
    if (n >= 1048576) return (n / 1048576).toFixed(2) + ' MiB';
    if (n >= 1024) return (n / 1024).toFixed(1) + ' KiB';
    return Math.round(n) + ' B';
  }
  function age(ms) { var s = Math.floor(ms / 1000); return s < 60 ? s + ' s' : s < 3600 ? Math.floor(s / 60) + ' min' : (s / 3600).toFixed(1) + ' h'; }

  function showLogin(message) {
    if (abort) abort.abort();
    clearInterval(sessionsTimer);
    $('app').hidden = true;
    $('login').hidden = false;
    $('logout').hidden = true;
    $('login-error').textContent = message || '';
    $('token').focus();
  }
  $('login-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    token = $('token').value.trim();
    try { sessionStorage.setItem(KEY, token); } catch (e) { /* this page only */ }
    connect();
  });
  $('logout').addEventListener('click', function () {
    try { sessionStorage.removeItem(KEY); } catch (e) { /* nothing kept */ }
    token = '';
    showLogin('');
  });

  // The feed: server-sent events read through fetch (EventSource cannot send the token).
  function connect() {
    if (abort) abort.abort();
    abort = new AbortController();
    var signal = abort.signal;
    fetch(base + 'events', { headers: headers(), signal: signal, cache: 'no-store' }).then(function (res) {
      if (res.status === 401) { showLogin(token ? 'The admin server refused this token.' : ''); return; }
      if (!res.ok || !res.body) throw new Error('events: ' + res.status);
      $('login').hidden = true;
      $('app').hidden = false;
      $('logout').hidden = !token;
      refreshSessions();
      clearInterval(sessionsTimer);
      sessionsTimer = setInterval(function () { if (document.visibilityState === 'visible') refreshSessions(); }, 5000);
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buffered = '';
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) throw new Error('the feed ended');
          buffered += decoder.decode(r.value, { stream: true });
          var cut;
          while ((cut = buffered.indexOf('\n\n')) >= 0) {
            var block = buffered.slice(0, cut);
            buffered = buffered.slice(cut + 2);
            block.split('\n').forEach(function (line) { if (line.indexOf('data: ') === 0) render(JSON.parse(line.slice(6))); });
          }
          return pump();
        });
      }
      return pump();
    }).catch(function () {
      if (signal.aborted) return;
      setStatus(false, 'reconnecting…');
      setTimeout(function () { if (!signal.aborted) connect(); }, 2000);
    });
  }

  function setStatus(ok, text) {
    var r = $('ready');
    r.firstElementChild.className = 'dot ' + (ok ? 'ok' : 'bad');
    r.lastElementChild.textContent = text;
  }

  function render(s) {
    var st = s.stats, tot = s.totals;
    setStatus(s.ready.ok, s.ready.ok ? 'ready' : 'not ready: ' + s.ready.reasons.join('; '));
    $('engine').textContent = 'port ' + st.port + ' · engine ' + st.engine.kind + ' (' + st.engine.native + ' native sessions)' + (st.draining ? ' · draining' : '');
    $('updated').textContent = new Date(s.t).toLocaleTimeString();
    $('c-sessions').textContent = si(st.sessions);
    if (prev !== null && s.t > prev.t) {
      var dt = (s.t - prev.t) / 1000;
      var rate = function (k) { return Math.max(0, (tot[k] - prev.totals[k]) / dt); };
      push(s.t, rate('messagesIn'), rate('messagesOut'), rate('bytesIn'), rate('bytesOut'));
    }
    prev = s;
    var last = series.t.length - 1;
    $('c-min').textContent = last >= 0 ? si(series.min[last]) : '–';
    $('c-mout').textContent = last >= 0 ? si(series.mout[last]) : '–';
    $('c-bin').textContent = last >= 0 ? bytes(series.bin[last]) : '–';
    $('c-bout').textContent = last >= 0 ? bytes(series.bout[last]) : '–';
    $('c-1009').textContent = si(tot.closes['1009'] || 0);
    $('c-dropped').textContent = si(Object.keys(tot.dropped).reduce(function (n, k) { return n + tot.dropped[k]; }, 0));
    $('c-bp').textContent = si(tot.backpressureEvents);
    draw('chart-msgs', series.min, series.mout, si);
    draw('chart-bytes', series.bin, series.bout, bytes);

    var routeRows = [];
    st.routes.forEach(function (r, ri) {
      r.upstreams.forEach(function (u, ui) {
        var health = el('td'); health.appendChild(el('span', u.draining ? 'draining' : u.healthy ? 'healthy' : 'down', 'tag ' + (u.draining ? 'warn' : u.healthy ? 'ok' : 'bad')));
        if (!u.healthy && u.lastError) health.title = u.lastError;
        var act = el('td');
        var b = el('button', u.draining ? 'Undrain' : 'Drain');
        b.addEventListener('click', function () { drain(ri, ui, u.url, !u.draining); });
        act.appendChild(b);
        routeRows.push(row([el('td', ui === 0 ? (r.host ? r.host : '') + r.path + (r.mode !== 'transparent' ? ' (' + r.mode + ')' : '') : ''),
          num(ui === 0 ? r.sessions : ''), el('td', u.url), num(u.sessions), health, act]));
      });
    });
    fill('routes', routeRows);

    fill('codes', Object.keys(tot.closes).sort().map(function (c) { return row([el('td', c), el('td', CODES[c] || (c >= 4000 ? 'application' : '')), num(si(tot.closes[c]))]); }));
    fill('shards', (st.shards || []).map(function (x) { return row([el('td', x.id), num(x.sessions), num(x.restarts)]); }));
    var agents = st.agents || [], tunnels = st.tunnels || [];
    $('agents-box').hidden = agents.length === 0;
    fill('agents', agents.map(function (a) { return row([el('td', a.name), el('td', a.services.join(', ')), el('td', a.remote), num(a.streamsOpen), num(a.streamsTotal), num(bytes(a.bytesIn)), num(bytes(a.bytesOut))]); }));
    $('tunnels-box').hidden = tunnels.length === 0;
    fill('tunnels', tunnels.map(function (x) { return row([el('td', x.listen + ' (' + x.protocol + ')'), el('td', x.agent + ' / ' + x.service), num(x.open), num(x.total), num(x.refused)]); }));
    fill('closed', s.closed.map(function (c) {
      return row([el('td', new Date(c.endedAt).toLocaleTimeString()), el('td', c.id), el('td', c.route), el('td', c.clientCode + (CODES[c.clientCode] ? ' ' + CODES[c.clientCode] : '')),
        el('td', c.clientReason), el('td', c.upstreamCode), el('td', c.closedFirst), num(age(c.durationMs)), num(bytes(c.bytesIn) + ' / ' + bytes(c.bytesOut))]);
    }));
  }

  function push(t, min, mout, bin, bout) {
    series.t.push(t); series.min.push(min); series.mout.push(mout); series.bin.push(bin); series.bout.push(bout);
    if (series.t.length > HISTORY) Object.keys(series).forEach(function (k) { series[k].shift(); });
  }

  // A line chart of the last five minutes: two series, the same scale, its top labelled.
  function draw(id, a, b, fmt) {
    var c = $(id), dpr = window.devicePixelRatio || 1;
    var w = c.clientWidth, h = c.clientHeight;
    if (w === 0) return;
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    var g = c.getContext('2d');
    g.scale(dpr, dpr);
    var css = getComputedStyle(document.documentElement);
    var max = 1;
    for (var i = 0; i < a.length; i++) max = Math.max(max, a[i], b[i]);
    g.strokeStyle = css.getPropertyValue('--line'); g.lineWidth = 1;
    g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.moveTo(0, 12.5); g.lineTo(w, 12.5); g.stroke();
    g.fillStyle = css.getPropertyValue('--mute'); g.font = '11px system-ui, sans-serif';
    g.fillText(fmt(max), 2, 10);
    [[a, '--in'], [b, '--out']].forEach(function (p) {
      var v = p[0]; if (v.length < 2) return;
      g.strokeStyle = css.getPropertyValue(p[1]); g.lineWidth = 1.5; g.beginPath();
      for (var j = 0; j < v.length; j++) {
        var x = w - (v.length - 1 - j) * (w / (HISTORY - 1)), y = h - 1 - (v[j] / max) * (h - 14);
        if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
      }
      g.stroke();
    });
  }

  function refreshSessions() {
    fetch(base + 'sessions?limit=50', { headers: headers(), cache: 'no-store' }).then(function (r) { return r.ok ? r.json() : null; }).then(function (p) {
      if (p === null) return;
      $('sessions-count').textContent = '(' + p.total + (p.total > p.sessions.length ? ', the oldest ' + p.sessions.length + ' shown' : '') + ')';
      fill('sessions', p.sessions.map(function (x) {
        var act = el('td'), b = el('button', 'Close');
        b.addEventListener('click', function () { closeSession(x.id); });
        act.appendChild(b);
        return row([el('td', x.id), el('td', x.route), el('td', x.upstream), el('td', x.remoteAddress), num(age(x.durationMs)),
          num(si(x.messagesIn) + ' / ' + si(x.messagesOut)), num(bytes(x.bytesIn) + ' / ' + bytes(x.bytesOut)), act]);
      }));
    }).catch(function () { /* the feed reports the connection */ });
  }

  function act(method, path) {
    return fetch(base + path, { method: method, headers: headers() }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) { if (!r.ok) alert(body.error || ('failed: ' + r.status)); return r.ok; });
    });
  }
  function closeSession(id) {
    var code = prompt('Close session ' + id + ' with code (1000 or 3000-4999):', '4000');
    if (code === null) return;
    var reason = prompt('Reason (both sides get it):', 'closed by an operator');
    if (reason === null) return;
    act('DELETE', 'sessions/' + encodeURIComponent(id) + '?code=' + encodeURIComponent(code) + '&reason=' + encodeURIComponent(reason)).then(refreshSessions);
  }
  function drain(ri, ui, url, on) {
    if (!on) { act('DELETE', 'upstreams/' + ri + '/' + ui + '/drain'); return; }
    var secs = prompt('Drain ' + url + ': no new sessions go to it. Close its live sessions with 1012 within how many seconds? (0: keep them)', '0');
    if (secs === null) return;
    act('POST', 'upstreams/' + ri + '/' + ui + '/drain?closeWithinMs=' + Math.max(0, Math.round(Number(secs) * 1000) || 0));
  }

  connect();
})();
</script>
</body>
</html>
`;

/** The page's Content-Security-Policy: its one inline style and one inline script by hash, nothing else. */
export const DASHBOARD_CSP = (() => {
  const hash = (tag: string) => {
    const m = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(DASHBOARD_HTML);
    if (m === null) throw new Error(`dashboard page: no <${tag}>`);
    return `'sha256-${createHash('sha256').update(m[1]).digest('base64')}'`;
  };
  return `default-src 'none'; script-src ${hash('script')}; style-src ${hash('style')}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
})();
