// A local gateway for development and tests (Node.js only): starts the cargo-built gateway,
// on the memory engine or, with the backend, on the full path through RabbitMQ, PostgreSQL
// and Redis, in a private corner of those services (its own schema, queue and key prefix),
// and removes the corner when stopped. Tokens come from `gateway token`, with the same secret.

import { execFile, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface StackOptions {
  /** "memory": the gateway alone; "amqp": gateway and backend on the services. */
  engine?: "memory" | "amqp";
  /** Where the `gateway` and `backend` binaries are; EDGE_BIN_DIR, else the workspace's
   * target/debug (or CARGO_TARGET_DIR/debug). */
  binDir?: string;
  /** The gateway's listen address; port 0 picks a free port. */
  listen?: string;
  /** The gateway's cores. */
  cores?: number;
  /** More gateway flags. */
  gatewayArgs?: string[];
  /** Where each process's log lines go; nowhere by default. */
  log?: (line: string) => void;
}

export interface Stack {
  /** The WebSocket URL of the gateway. */
  readonly url: string;
  /** The gateway's admin address (host:port). */
  readonly admin: string;
  readonly engine: "memory" | "amqp";
  /** A token for `user`, valid for `ttl` (such as "60m"), minted by `gateway token`. */
  token(user: bigint, ttl?: string): Promise<string>;
  /** Stops the gateway (SIGTERM: sessions get 1001) and a fresh one on the same port. */
  restartGateway(): Promise<void>;
  /** Stops every process and removes the private corner of the services. */
  stop(): Promise<void>;
}

const DATABASE_URL = process.env["TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";
const SHARDS = "2";

export function defaultBinDir(): string {
  if (process.env["EDGE_BIN_DIR"]) return process.env["EDGE_BIN_DIR"];
  // dist/src/devstack.js: two levels under clients/ts, which is two under the workspace.
  const workspace = resolve(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "../../../..");
  return join(process.env["CARGO_TARGET_DIR"] ?? join(workspace, "target"), "debug");
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const engine = options.engine ?? "memory";
  const binDir = options.binDir ?? defaultBinDir();
  for (const binary of engine === "amqp" ? ["gateway", "backend"] : ["gateway"]) {
    if (!existsSync(join(binDir, binary))) {
      throw new Error(`${join(binDir, binary)} is missing: build it with cargo build -p ${binary} (or set EDGE_BIN_DIR)`);
    }
  }
  const log = options.log ?? (() => {});
  const corner = `sdk_${Date.now().toString(36)}_${randomBytes(3).toString("hex")}`;
  const nodeId = String(20_000 + Math.floor(Math.random() * 1_000_000));
  const env = {
    ...process.env,
    GATEWAY_JWT_SECRET: `dev-${randomBytes(24).toString("hex")}`,
    NO_COLOR: "1",
    RUST_LOG: process.env["RUST_LOG"] ?? "info",
  };
  const processes: ChildProcess[] = [];

  const stop = async () => {
    await Promise.all(processes.reverse().map(terminate));
    if (engine === "amqp") await removeCorner(corner);
  };

  try {
    if (engine === "amqp") {
      const backend = spawn(
        join(binDir, "backend"),
        ["--database-url", DATABASE_URL, "--pg-schema", corner, "--amqp-prefix", corner, "--redis-prefix", corner, "--shards", SHARDS],
        { env, stdio: ["ignore", "pipe", "pipe"] },
      );
      processes.push(backend);
      // Each shard's consumer announces itself once the topology exists.
      await waitForLines(backend, "backend", /consuming/, Number(SHARDS), log);
    }
    const gatewayArgs = [
      "--listen",
      options.listen ?? "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
      "--cores",
      String(options.cores ?? 2),
      "--engine",
      engine,
      ...(engine === "amqp" ? ["--amqp-prefix", corner, "--redis-prefix", corner, "--shards", SHARDS, "--node-id", nodeId] : []),
      "--shutdown-deadline",
      "2s",
      ...(options.gatewayArgs ?? []),
    ];
    let gateway = spawn(join(binDir, "gateway"), gatewayArgs, { env, stdio: ["ignore", "pipe", "pipe"] });
    processes.push(gateway);
    const ready = await waitForLines(gateway, "gateway", /gateway ready/, 1, log);
    const listen = /listen=(\S+)/.exec(ready)?.[1];
    const admin = /admin=(\S+)/.exec(ready)?.[1];
    if (listen === undefined || admin === undefined) throw new Error(`the gateway's ready line names no addresses: ${ready}`);
    await waitReady(admin);

    return {
      url: `ws://${listen}/ws`,
      admin,
      engine,
      async token(user: bigint, ttl = "60m") {
        const { stdout } = await run(join(binDir, "gateway"), ["token", "--user", String(user), "--ttl", ttl], { env });
        return stdout.trim();
      },
      async restartGateway() {
        await terminate(gateway);
        processes.splice(processes.indexOf(gateway), 1);
        // The same port, so that clients find the new process where the old one was.
        const again = gatewayArgs.map((arg, i) => (gatewayArgs[i - 1] === "--listen" ? listen : gatewayArgs[i - 1] === "--admin-listen" ? admin : arg));
        gateway = spawn(join(binDir, "gateway"), again, { env, stdio: ["ignore", "pipe", "pipe"] });
        processes.push(gateway);
        await waitForLines(gateway, "gateway", /gateway ready/, 1, log);
        await waitReady(admin);
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Resolves with the `count`-th line of `child`'s output that matches `pattern`. */
function waitForLines(child: ChildProcess, name: string, pattern: RegExp, count: number, log: (line: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = 0;
    let tail: string[] = [];
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 60 s:\n${tail.join("\n")}`)), 60_000);
    const onLine = (raw: string) => {
      const line = raw.replace(/\x1b\[[0-9;]*m/g, "");
      log(`${name}: ${line}`);
      tail = [...tail.slice(-20), line];
      if (pattern.test(line) && ++seen === count) {
        clearTimeout(timer);
        resolve(line);
      }
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buffered = "";
      stream?.setEncoding("utf8");
      stream?.on("data", (chunk: string) => {
        buffered += chunk;
        const lines = buffered.split("\n");
        buffered = lines.pop()!;
        lines.forEach(onLine);
      });
    }
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before it was ready:\n${tail.join("\n")}`));
    });
  });
}

async function waitReady(admin: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`http://${admin}/readyz`)).ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((done) => setTimeout(done, 100));
  }
  throw new Error(`the gateway at ${admin} did not become ready`);
}

function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(kill);
      done();
    });
    child.kill("SIGTERM");
  });
}

/** Drops the corner's schema and queues, as the demo script does; what fails is left. */
async function removeCorner(corner: string): Promise<void> {
  await run("psql", [DATABASE_URL, "-qc", `DROP SCHEMA IF EXISTS "${corner}" CASCADE`]).catch(() => {});
  const queues = await run("rabbitmqctl", ["-q", "list_queues", "name"]).catch(() => ({ stdout: "" }));
  for (const queue of queues.stdout.split("\n").filter((name) => name.startsWith(`${corner}.`))) {
    await run("rabbitmqctl", ["-q", "delete_queue", queue]).catch(() => {});
  }
}
