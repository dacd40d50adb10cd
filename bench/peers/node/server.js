'use strict';

// A peer WebSocket server on Node's ws package, for the benchmarks that run the gateway
// beside it on the same load: --mode echo sends each data message back to its sender,
// --mode broadcast to every client of the sender's group, the sender included, and to no
// other group. A client picks its group with ?group=<u64> in its upgrade request, among any
// other parameters and in any order (?token=a&group=7); a missing or unparsable group is
// group 0. The same flags and behaviour as the Rust peers (bench/src/peer.rs),
// single-threaded as Node is.
//
// Written from ws's documented usage (its README's "Simple server" and "Server broadcast"):
// a WebSocketServer that accepts the upgrade on any path, a 'message' listener that sends the
// data back with the same opcode, the group read from the 'connection' event's request URL
// into a Map of group to Set of sockets (as "Server broadcast" loops over wss.clients), and
// ws's defaults answering pings and close frames.
//
//   npm install && node server.js --listen 127.0.0.1:8080 --mode echo

const { WebSocket, WebSocketServer } = require('ws');

const NAME = 'peer_node';
const USAGE = `usage: node server.js [--listen HOST:PORT] [--mode echo|broadcast] [--threads 1]`;

// Messages a broadcast client may have queued before it is closed: the Rust peers' broadcast
// ring, which is the gateway's default outbound queue (--outbound-queue).
const BROADCAST_CAPACITY = 1024;
// The close frame a slow broadcast client gets, as from the Rust peers.
const SLOW_CLIENT_CLOSE_CODE = 1008;
const SLOW_CLIENT_CLOSE_REASON = 'slow consumer';

function fail(message) {
  console.error(`${NAME}: ${message}\n${USAGE}`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 8080, mode: 'echo' };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) fail(`${flag} needs a value`);
    switch (flag) {
      case '--listen': {
        // The port follows the last colon; an IPv6 host comes in brackets ([::1]:8080).
        const colon = value.lastIndexOf(':');
        const port = Number(value.slice(colon + 1));
        if (colon < 1 || !Number.isInteger(port) || port < 0 || port > 65535) {
          fail(`--listen takes HOST:PORT, not ${value}`);
        }
        args.host = value.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
        args.port = port;
        break;
      }
      case '--mode':
        if (value !== 'echo' && value !== 'broadcast') fail(`--mode takes echo or broadcast, not ${value}`);
        args.mode = value;
        break;
      case '--threads':
        // Accepted so that one runner can start every peer alike.
        if (value !== '1') fail('the Node peer runs on one thread: --threads takes only 1');
        break;
      default:
        fail(`unknown flag ${flag}`);
    }
  }
  return args;
}

const { host, port, mode } = parseArgs(process.argv.slice(2));

let failedConnections = 0;
let slowClients = 0;

// Counts a connection that ended with an error; only the first is printed, so that a tester
// dropping thousands of sockets at once does not flood stderr. A listener is needed anyway:
// an 'error' event without one would throw.
function connectionFailed(err) {
  if (failedConnections++ === 0) {
    console.error(`${NAME}: a connection ended with an error (${err.message}); later ones are only counted`);
  }
}

function echo(ws) {
  ws.on('error', connectionFailed);
  ws.on('message', (data, isBinary) => {
    ws.send(data, { binary: isBinary });
  });
}

// The largest u64, the largest group.
const MAX_GROUP = (1n << 64n) - 1n;

// The group an upgrade request's URL asks for, as the Rust peers' group_of reads it: the
// first group parameter as a u64 in decimal digits (a BigInt, so that every u64 is exact), or
// 0 when there is none or it is anything else.
function groupOf(url) {
  const group = new URL(url, 'http://x').searchParams.get('group');
  if (group === null || !/^[0-9]+$/.test(group)) return 0n;
  const value = BigInt(group);
  return value <= MAX_GROUP ? value : 0n;
}

// Broadcast mode's groups: each one's open sockets, a group made when its first client joins
// and dropped when its last one leaves.
const groups = new Map();

function broadcast(ws, req) {
  const group = groupOf(req.url);
  let members = groups.get(group);
  if (members === undefined) {
    members = new Set();
    groups.set(group, members);
  }
  members.add(ws);
  ws.on('close', () => {
    members.delete(ws);
    if (members.size === 0 && groups.get(group) === members) groups.delete(group);
  });
  ws.on('error', connectionFailed);
  ws.on('message', (data, isBinary) => {
    for (const client of members) {
      if (client.readyState !== WebSocket.OPEN) continue;
      // ws queues without bound what the socket cannot take: close a client that has fallen
      // more than the ring's worth of these messages behind.
      if (client.bufferedAmount > BROADCAST_CAPACITY * data.length) {
        if (slowClients++ === 0) {
          console.error(
            `${NAME}: closing a client that fell more than ${BROADCAST_CAPACITY} messages behind; later ones are only counted`,
          );
        }
        client.close(SLOW_CLIENT_CLOSE_CODE, SLOW_CLIENT_CLOSE_REASON);
        continue;
      }
      client.send(data, { binary: isBinary });
    }
  });
}

// ws's server sets SO_REUSEADDR (Node's listen does on Unix) and TCP_NODELAY on every socket.
const wss = new WebSocketServer({ host, port });
wss.on('error', (err) => {
  console.error(`${NAME}: ${err.message}`);
  process.exit(1);
});
wss.on('listening', () => {
  const address = wss.address();
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  console.error(`${NAME}: ${mode} on ${shown}:${address.port}, 1 thread`);
});
wss.on('connection', mode === 'echo' ? echo : broadcast);

function stop(signal) {
  console.error(
    `${NAME}: stopped on ${signal}; ${failedConnections} connections ended with an error, ${slowClients} slow clients closed`,
  );
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
