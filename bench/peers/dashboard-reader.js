// What an open dashboard page asks of sluice's admin server (src/admin/dashboard-page.ts):
// the `/events` stream, read as it comes, and `/sessions?limit=50` every 5 s. Runs in
// the harness process, outside the proxy's process tree: the page's own work (a browser
// elsewhere) is not the proxy's CPU; what serving it costs the proxy is.
export async function attachDashboardReader({ child, adminPort }) {
  const base = `http://127.0.0.1:${adminPort}`;
  const ac = new AbortController();
  child.once('exit', () => ac.abort());
  const res = await fetch(`${base}/events`, { signal: ac.signal });
  if (!res.ok || !res.body) throw new Error(`dashboard reader: /events answered ${res.status}`);
  const reader = res.body.getReader();
  let snapshots = 0;
  // The first snapshot comes at once: the stream is live before measuring starts.
  const first = await reader.read();
  if (first.done) throw new Error('dashboard reader: /events ended at once');
  snapshots++;
  void (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        if (new TextDecoder().decode(value).includes('data: ')) snapshots++;
      }
    } catch {
      // the proxy stopped
    }
  })();
  const poll = setInterval(() => {
    fetch(`${base}/sessions?limit=50`, { signal: ac.signal }).then((r) => r.arrayBuffer(), () => undefined).catch(() => undefined);
  }, 5000);
  ac.signal.addEventListener('abort', () => clearInterval(poll));
  return { snapshots: () => snapshots };
}
