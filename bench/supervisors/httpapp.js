#!/usr/bin/env node
// A small HTTP app as PM2's users run them: Node's own server, answering every request with
// 200, on the port in $PORT (127.0.0.1 only). The bench's third app (`--app node`).
"use strict";
const http = require("http");
const port = Number(process.env.PORT);
http
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Length": "3" });
    res.end("ok\n");
  })
  .listen(port, "127.0.0.1");
