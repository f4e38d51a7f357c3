// The service behind the tunnels of bench/tunnel.js, in its own process:
//   node bench/tunnel-sink.js           prints "ports <sink> <echo>" once both listen
// sink: reads everything a connection sends; at its end (half-close) answers the byte
//       count and a newline, then ends;
// echo: writes back every byte (the open-latency probe sends one byte and waits for it).
import net from 'node:net';

const sink = net.createServer({ allowHalfOpen: true }, (s) => {
  let n = 0;
  s.on('data', (d) => { n += d.length; });
  s.on('end', () => s.end(`${n}\n`));
  s.on('error', () => {});
});
const echo = net.createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
  s.on('error', () => {});
  s.pipe(s);
});
await Promise.all([sink, echo].map((srv) => new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))));
console.log(`ports ${sink.address().port} ${echo.address().port}`);
process.on('SIGTERM', () => process.exit(0));
