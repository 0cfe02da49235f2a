// server.js: a minimal Socket.IO v4 chat server, the peer chinwag is compared
// with under `chinwag-load --proto socketio`.
//
// Owns: rooms through `join_room` (payload: the room name; acked with the
// room's current seq when the client gives a callback), messages through
// `send_message` ({room, text}): a per-room seq, then `message`
// {room, seq, ts, from, text} to everyone in the room (the sender too) and
// an ack {room, seq, ts}. With REDIS_URL set, rooms span every node through
// @socket.io/redis-adapter and seqs come from Redis INCR; otherwise it runs
// standalone with seqs in memory. Listens on 127.0.0.1:PORT (0: any free
// port) and prints `listening on http://ADDR` on stderr, as chinwag does.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const ROOM = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
const MAX_TEXT = 4000;

async function main() {
  const httpServer = http.createServer((req, res) => {
    res.writeHead(404).end();
  });
  // WebSocket only, no compression: the harness speaks raw Engine.IO v4
  // over WebSocket, and chinwag does not compress either.
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });

  let nextSeq; // (room) => Promise<number>
  let currentSeq; // (room) => Promise<number>
  if (process.env.REDIS_URL) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    for (const c of [pub, sub]) c.on("error", (e) => console.error("redis:", e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
    // One counter per room for the whole cluster. Order across nodes is
    // whatever order the nodes publish in: the adapter does not order.
    nextSeq = (room) => pub.incr(`seq:${room}`);
    currentSeq = async (room) => Number((await pub.get(`seq:${room}`)) || 0);
  } else {
    const seqs = new Map();
    nextSeq = async (room) => {
      const seq = (seqs.get(room) || 0) + 1;
      seqs.set(room, seq);
      return seq;
    };
    currentSeq = async (room) => seqs.get(room) || 0;
  }

  io.on("connection", (socket) => {
    const from = String(socket.handshake.query.user || socket.id);
    socket.on("join_room", async (room, ack) => {
      if (typeof room !== "string" || !ROOM.test(room)) return;
      socket.join(room);
      if (typeof ack === "function") ack({ room, seq: await currentSeq(room) });
    });
    socket.on("send_message", async (msg, ack) => {
      const room = msg && msg.room;
      const text = msg && msg.text;
      if (typeof room !== "string" || !socket.rooms.has(room)) return;
      if (typeof text !== "string" || text.length === 0 || text.length > MAX_TEXT) return;
      // Standalone, nextSeq resolves in call order, so rooms stay in seq order.
      const seq = await nextSeq(room);
      const ts = Date.now();
      io.to(room).emit("message", { room, seq, ts, from, text });
      if (typeof ack === "function") ack({ room, seq, ts });
    });
  });

  const port = Number(process.env.PORT || 3000);
  httpServer.listen(port, "127.0.0.1", () => {
    const a = httpServer.address();
    console.error(`listening on http://${a.address}:${a.port}`);
  });
  const stop = () => io.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
