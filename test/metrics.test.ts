import t from 'tap';
import { Registry } from 'prom-client';
import { createMetricsRegistry, ProxyCounters } from '../src/metrics/index.js';

/** The block of one metric in the exposition text: HELP, TYPE and value lines. */
function block(text: string, name: string): string[] {
  const lines = text.split('\n');
  const start = lines.indexOf(lines.find((l) => l.startsWith(`# HELP ${name} `)) ?? '');
  if (start === -1) throw new Error(`no metric ${name} in:\n${text}`);
  const out: string[] = [];
  for (let i = start + 2; i < lines.length && lines[i] !== '' && !lines[i].startsWith('# HELP'); i++) out.push(lines[i]);
  return [lines[start + 1], ...out];
}

function busyCounters(): ProxyCounters {
  const c = new ProxyCounters();
  c.sessionOpened();
  c.sessionOpened();
  c.sessionOpened();
  c.message('in', 'text', 10);
  c.message('in', 'text', 64);
  c.message('in', 'binary', 65);
  c.message('out', 'binary', 5_000_000);
  c.message('out', 'ping', 0);
  c.dropped.backpressure += 2;
  c.backpressureEvents++;
  c.sessionClosed(1000, 0.05);
  c.sessionClosed(1013, 42);
  return c;
}

t.test('scrape text: exact lines from counters', async (t) => {
  const registry = createMetricsRegistry(busyCounters(), { defaultMetrics: false });
  const text = await registry.metrics();

  t.same(block(text, 'agent_websocket_frames_total'), [
    '# TYPE agent_websocket_frames_total counter',
    'agent_websocket_frames_total{direction="in",type="text"} 2',
    'agent_websocket_frames_total{direction="in",type="binary"} 1',
    'agent_websocket_frames_total{direction="in",type="ping"} 0',
    'agent_websocket_frames_total{direction="in",type="pong"} 0',
    'agent_websocket_frames_total{direction="in",type="close"} 0',
    'agent_websocket_frames_total{direction="out",type="text"} 0',
    'agent_websocket_frames_total{direction="out",type="binary"} 1',
    'agent_websocket_frames_total{direction="out",type="ping"} 1',
    'agent_websocket_frames_total{direction="out",type="pong"} 0',
    'agent_websocket_frames_total{direction="out",type="close"} 0',
  ]);
  t.same(block(text, 'agent_websocket_frame_bytes_total'), [
    '# TYPE agent_websocket_frame_bytes_total counter',
    'agent_websocket_frame_bytes_total{direction="in"} 139',
    'agent_websocket_frame_bytes_total{direction="out"} 5000000',
  ]);
  t.same(block(text, 'agent_websocket_frame_bytes_histogram'), [
    '# TYPE agent_websocket_frame_bytes_histogram histogram',
    'agent_websocket_frame_bytes_histogram_bucket{le="64"} 3',
    'agent_websocket_frame_bytes_histogram_bucket{le="256"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="1024"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="4096"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="16384"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="65536"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="262144"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="1048576"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="4194304"} 4',
    'agent_websocket_frame_bytes_histogram_bucket{le="+Inf"} 5',
    'agent_websocket_frame_bytes_histogram_sum 5000139',
    'agent_websocket_frame_bytes_histogram_count 5',
  ]);
  t.same(block(text, 'agent_websocket_dropped_frames_total'), [
    '# TYPE agent_websocket_dropped_frames_total counter',
    'agent_websocket_dropped_frames_total{reason="backpressure"} 2',
    'agent_websocket_dropped_frames_total{reason="too_big"} 0',
  ]);
  t.same(block(text, 'agent_websocket_backpressure_events_total'), [
    '# TYPE agent_websocket_backpressure_events_total counter',
    'agent_websocket_backpressure_events_total 1',
  ]);
  t.same(block(text, 'agent_websocket_session_duration_seconds'), [
    '# TYPE agent_websocket_session_duration_seconds histogram',
    'agent_websocket_session_duration_seconds_bucket{le="0.1"} 1',
    'agent_websocket_session_duration_seconds_bucket{le="1"} 1',
    'agent_websocket_session_duration_seconds_bucket{le="10"} 1',
    'agent_websocket_session_duration_seconds_bucket{le="60"} 2',
    'agent_websocket_session_duration_seconds_bucket{le="300"} 2',
    'agent_websocket_session_duration_seconds_bucket{le="1800"} 2',
    'agent_websocket_session_duration_seconds_bucket{le="3600"} 2',
    'agent_websocket_session_duration_seconds_bucket{le="21600"} 2',
    'agent_websocket_session_duration_seconds_bucket{le="86400"} 2',
    'agent_websocket_session_duration_seconds_bucket{le="+Inf"} 2',
    'agent_websocket_session_duration_seconds_sum 42.05',
    'agent_websocket_session_duration_seconds_count 2',
  ]);
  t.same(block(text, 'agent_websocket_active_sessions'), [
    '# TYPE agent_websocket_active_sessions gauge',
    'agent_websocket_active_sessions 1',
  ]);
  t.same(block(text, 'agent_websocket_sessions_total'), [
    '# TYPE agent_websocket_sessions_total counter',
    'agent_websocket_sessions_total 3',
  ]);
  t.same(block(text, 'agent_websocket_session_close_total'), [
    '# TYPE agent_websocket_session_close_total counter',
    'agent_websocket_session_close_total{code="1000"} 1',
    'agent_websocket_session_close_total{code="1013"} 1',
  ]);
  t.same(block(text, 'agent_websocket_shard_restarts_total'), [
    '# TYPE agent_websocket_shard_restarts_total counter',
    'agent_websocket_shard_restarts_total 0',
  ]);
  t.match(text, /^# HELP agent_websocket_frames_total \S.+$/m, 'every metric has help text');
});

t.test('values are read at scrape time, not copied at creation', async (t) => {
  const c = new ProxyCounters();
  const registry = createMetricsRegistry(c, { defaultMetrics: false });
  t.same(block(await registry.metrics(), 'agent_websocket_sessions_total')[1], 'agent_websocket_sessions_total 0');
  c.sessionOpened();
  c.sessionOpened();
  t.same(block(await registry.metrics(), 'agent_websocket_sessions_total')[1], 'agent_websocket_sessions_total 2');
  t.same(block(await registry.metrics(), 'agent_websocket_sessions_total')[1], 'agent_websocket_sessions_total 2',
    'a second scrape does not add again');
  c.sessionClosed(1001, 1);
  t.same(block(await registry.metrics(), 'agent_websocket_active_sessions')[1], 'agent_websocket_active_sessions 1');
});

t.test('shards: summed at scrape time, source called once per scrape', async (t) => {
  const a = busyCounters();
  const b = new ProxyCounters();
  b.sessionOpened();
  b.message('in', 'text', 100);
  b.sessionClosed(4000, 5000);
  b.shardRestarts = 2;
  let calls = 0;
  const registry = createMetricsRegistry(() => { calls++; return [a, structuredClone(b)]; }, { defaultMetrics: false });
  const text = await registry.metrics();
  t.equal(calls, 1, 'one snapshot for every metric of a scrape');
  t.same(block(text, 'agent_websocket_frames_total')[1], 'agent_websocket_frames_total{direction="in",type="text"} 3');
  t.same(block(text, 'agent_websocket_sessions_total')[1], 'agent_websocket_sessions_total 4');
  t.same(block(text, 'agent_websocket_active_sessions')[1], 'agent_websocket_active_sessions 1');
  t.same(block(text, 'agent_websocket_shard_restarts_total')[1], 'agent_websocket_shard_restarts_total 2');
  t.same(block(text, 'agent_websocket_session_close_total').slice(1), [
    'agent_websocket_session_close_total{code="1000"} 1',
    'agent_websocket_session_close_total{code="1013"} 1',
    'agent_websocket_session_close_total{code="4000"} 1',
  ]);
  t.same(block(text, 'agent_websocket_session_duration_seconds').slice(-4), [
    'agent_websocket_session_duration_seconds_bucket{le="86400"} 3',
    'agent_websocket_session_duration_seconds_bucket{le="+Inf"} 3',
    'agent_websocket_session_duration_seconds_sum 5042.05',
    'agent_websocket_session_duration_seconds_count 3',
  ]);
  await registry.metrics();
  t.equal(calls, 2, 'the next scrape reads again');

  const asyncRegistry = createMetricsRegistry(async () => [a, b], { defaultMetrics: false });
  t.same(block(await asyncRegistry.metrics(), 'agent_websocket_sessions_total')[1], 'agent_websocket_sessions_total 4',
    'an async source (shards answering a message) works too');
});

t.test('default process metrics, and JSON export', async (t) => {
  const registry = createMetricsRegistry(new ProxyCounters());
  t.equal(registry.contentType, Registry.PROMETHEUS_CONTENT_TYPE);
  const text = await registry.metrics();
  t.match(text, /^process_cpu_user_seconds_total \d/m);
  t.match(text, /^nodejs_eventloop_lag_seconds \d/m);
  const json = await registry.getMetricsAsJSON();
  const hist = json.find((m) => m.name === 'agent_websocket_frame_bytes_histogram');
  t.equal(hist?.type, 'histogram');
  t.doesNotThrow(() => registry.resetMetrics(), 'resetMetrics does not break on the scraped histograms');
});

t.test('sluice_http_requests_total: by route and status, summed over shards', async (t) => {
  const a = new ProxyCounters();
  a.httpRequest('/h', 200);
  a.httpRequest('/h', 200);
  a.httpRequest('/h', 502);
  a.httpRequest('', 404);
  const b = new ProxyCounters();
  b.httpRequest('/h', 200);
  b.httpRequest('/ws', 426);
  const one = createMetricsRegistry(a, { defaultMetrics: false });
  t.same(block(await one.metrics(), 'sluice_http_requests_total'), [
    '# TYPE sluice_http_requests_total counter',
    'sluice_http_requests_total{route="/h",status="200"} 2',
    'sluice_http_requests_total{route="/h",status="502"} 1',
    'sluice_http_requests_total{route="",status="404"} 1',
  ]);
  const shards = createMetricsRegistry(() => [a, structuredClone(b)], { defaultMetrics: false });
  t.same(block(await shards.metrics(), 'sluice_http_requests_total').slice(1), [
    'sluice_http_requests_total{route="/h",status="200"} 3',
    'sluice_http_requests_total{route="/h",status="502"} 1',
    'sluice_http_requests_total{route="",status="404"} 1',
    'sluice_http_requests_total{route="/ws",status="426"} 1',
  ]);
});
