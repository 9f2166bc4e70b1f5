// A Node.js app that receives `pmcluster send` messages.
//
// The agent names a unix socket path in PMCLUSTER_MESSAGES; the app listens there, and the
// agent connects once per message, writes it as one line and closes. Run it under pmcluster:
//
//   pmcluster start "node app.js" --name node-msg --instances 2
//   pmcluster send node-msg 'hello all'              # broadcast
//   pmcluster send node-msg --instance 1 'hello one' # unicast
//   pmcluster logs node-msg
'use strict';

const fs = require('fs');
const net = require('net');

const path = process.env.PMCLUSTER_MESSAGES;
const index = process.env.PMCLUSTER_INSTANCE_ID || '-';
if (!path) {
  console.error('PMCLUSTER_MESSAGES is not set: run me under a pmcluster agent');
  process.exit(1);
}

function onMessage(text) {
  console.log(`node instance ${index} got message: ${text}`);
}

// A socket file left by a previous process would make listen fail with EADDRINUSE.
try {
  fs.unlinkSync(path);
} catch (e) {
  if (e.code !== 'ENOENT') throw e;
}

const server = net.createServer((conn) => {
  let data = '';
  conn.setEncoding('utf8');
  conn.on('data', (chunk) => { data += chunk; });
  conn.on('end', () => {
    for (const line of data.split('\n')) {
      if (line !== '') onMessage(line);
    }
  });
  conn.on('error', (e) => console.error(`message connection: ${e.message}`));
});

server.listen(path, () => console.log(`node instance ${index} listening for messages`));

process.on('SIGTERM', () => server.close(() => process.exit(0)));
