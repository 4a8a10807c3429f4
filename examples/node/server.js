// Node's http server as a command worker: it serves the inherited listener (fd 3) and, on SIGTERM, stops
// accepting and finishes its connections (server.close(); idle keep-alive ones are closed by Node ≥ 19) — without
// the handler Node's default SIGTERM ends the process at once and cuts requests in flight. Run:
//   port-sharding serve --host 127.0.0.1 --port 3000 -w 2 -- node examples/node/server.js
// It sends no READY=1: the supervisor counts a worker ready after --ready-delay (1 s) alive.
"use strict";
const http = require("http");

const slowEvery = Number(process.env.SLOW_EVERY || 0);
const slowMs = Number(process.env.SLOW_MS || 200);
let count = 0;

const server = http.createServer((req, res) => {
  const answer = () => {
    const body = `Hello from node process ${process.pid}\n`;
    res.writeHead(200, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
    res.end(body);
  };
  count += 1;
  if (slowEvery && count % slowEvery === 0) setTimeout(answer, slowMs);
  else answer();
});
server.listen({ fd: 3 });
process.on("SIGTERM", () => server.close());
