// The page's development server: starts a gateway (memory engine, or the full path with
// --engine amqp) through the SDK's devstack, serves the page, the compiled page scripts and
// the SDK's browser build, and hands out development tokens minted by `gateway token`.
// For development only: /token signs in anyone as anyone.

import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startStack } from "edge-client/devstack";
import type { Stack, StackOptions } from "edge-client/devstack";

const here = fileURLToPath(new URL(".", import.meta.url));
/** URL prefixes and the folders they serve, all resolved from dist/src. */
const FOLDERS: [prefix: string, folder: string][] = [
  ["/app/", resolve(here, "page")],
  ["/sdk/", resolve(here, "../../node_modules/edge-client/dist/src")],
  ["/", resolve(here, "../../public")],
];
const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
};
/** Lifetime of a page's token; the SDK asks for a new one at every connection. */
const TOKEN_TTL = "30m";

export interface DevServer {
  /** The page's URL. */
  readonly url: string;
  readonly stack: Stack;
  close(): Promise<void>;
}

export interface DevServerOptions extends StackOptions {
  /** Address of the page's server; port 0 picks a free port. */
  host?: string;
  port?: number;
}

export async function startDevServer(options: DevServerOptions = {}): Promise<DevServer> {
  const stack = await startStack(options);
  const server = createServer((request, response) => {
    handle(stack, request, response).catch((error: Error) => respond(response, 500, "text/plain", error.message));
  });
  await new Promise<void>((done) => server.listen(options.port ?? 0, options.host ?? "127.0.0.1", done));
  const { address, port } = server.address() as AddressInfo;
  return {
    url: `http://${address}:${port}/`,
    stack,
    async close() {
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
      await stack.stop();
    },
  };
}

async function handle(stack: Stack, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const url = new URL(request.url ?? "/", "http://localhost");
  if (request.method !== "GET") return respond(response, 405, "text/plain", "GET only");
  if (url.pathname === "/config") return respond(response, 200, "application/json", JSON.stringify({ url: stack.url }));
  if (url.pathname === "/token") {
    const user = url.searchParams.get("user") ?? "";
    if (!/^(0|[1-9][0-9]{0,19})$/.test(user) || BigInt(user) >= 1n << 64n) {
      return respond(response, 400, "text/plain", "user must be a decimal u64");
    }
    return respond(response, 200, "text/plain", await stack.token(BigInt(user), TOKEN_TTL));
  }
  const path = url.pathname === "/" ? "/index.html" : url.pathname;
  for (const [prefix, folder] of FOLDERS) {
    if (!path.startsWith(prefix)) continue;
    const file = normalize(join(folder, path.slice(prefix.length)));
    if (!file.startsWith(folder)) break;
    try {
      return respond(response, 200, TYPES[extname(file)] ?? "application/octet-stream", await readFile(file));
    } catch {
      break;
    }
  }
  respond(response, 404, "text/plain", "not found");
}

function respond(response: ServerResponse, status: number, type: string, body: string | Buffer): void {
  response.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  response.end(body);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      engine: { type: "string", default: "memory" },
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8000" },
      "gateway-port": { type: "string", default: "0" },
    },
  });
  if (values.engine !== "memory" && values.engine !== "amqp") throw new Error("--engine is memory or amqp");
  const server = await startDevServer({
    engine: values.engine,
    host: values.host,
    port: Number(values.port),
    listen: `127.0.0.1:${values["gateway-port"]}`,
    log: process.env["EDGE_LOG"] ? (line) => console.error(line) : undefined,
  });
  console.log(`web: gateway (${values.engine} engine) at ${server.stack.url}`);
  console.log(`web: open ${server.url} in two browser tabs and sign in as two users (for example 1 and 2)`);
  const stop = () => void server.close().then(() => process.exit(0));
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error: Error) => {
    console.error(`web: ${error.message}`);
    process.exit(1);
  });
}
