// The seed-style chat server on Node's `ws` package, a peer for bench/run.py.
//
//   node bench/peers/node_chat.js [--port 0] [--batch] [--deflate]
//
// Plain: every message goes at once to every client, as a one-event JSON array.
// --batch: events are queued and JSON.stringify(queue) goes to every client every
// 50 ms (the seed's batching). --deflate enables permessage-deflate (ws's
// defaults, threshold lowered to wsnet's 128 bytes). Needs `ws` from
// bench/.node (npm install --prefix bench/.node ws); binds 127.0.0.1 only.
'use strict';
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, '..', '.node', 'node_modules', 'ws'));

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const port = parseInt(option('--port', '0'), 10);
const batch = args.includes('--batch');
const deflate = args.includes('--deflate');
const NAME = /^[A-Za-z0-9_.\-]{1,32}$/;

let seq = 0;
let nextId = 0;
let queue = [];

function chatText(message) {
  if (message.trimStart().startsWith('{')) {
    let command = null;
    try { command = JSON.parse(message); } catch (e) { command = null; }
    if (command !== null && typeof command === 'object' && !Array.isArray(command)) {
      const text = command.type === 'message' ? command.text : null;
      return typeof text === 'string' && text.trim() ? text : null;
    }
  }
  return message.trim() ? message : null;
}

function sendToAll(frame) {
  const data = Buffer.from(frame);  // encoded once for every client
  for (const client of wss.clients) {
    if (client.readyState === 1) client.send(data, { binary: false });
  }
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  backlog: 1024,
  maxPayload: 1 << 20,
  perMessageDeflate: deflate ? { threshold: 128 } : false,
});

wss.on('listening', () => {
  const mode = batch ? 'batched' : 'plain';
  console.log(`node-ws (${mode}) chat listening on ws://127.0.0.1:${wss.address().port}/`);
});

wss.on('connection', (ws, req) => {
  nextId += 1;
  const asked = new URL(req.url, 'http://localhost').searchParams.get('name') || '';
  const name = NAME.test(asked) ? asked : `guest-${nextId}`;
  ws.send(JSON.stringify([{ type: 'welcome', id: String(nextId), name, room: 'lobby', seq }]));
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (isBinary) { ws.close(1003, 'binary frames are not part of chat protocol v1'); return; }
    const text = chatText(data.toString());
    if (text === null) return;
    seq += 1;
    const event = { type: 'message', room: 'lobby', seq, from: name, text, ts: Date.now() };
    if (batch) queue.push(event);
    else sendToAll(JSON.stringify([event]));
  });
});

if (batch) {
  setInterval(() => {
    if (queue.length === 0) return;
    const frame = JSON.stringify(queue);
    queue = [];
    sendToAll(frame);
  }, 50);
}

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
