// Test support: a real upstream (node:http on 127.0.0.1:0) and the real unpoll binary.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The binary the Rust tests build; UNPOLL_BIN overrides. */
export const UNPOLL = process.env.UNPOLL_BIN ?? join(here, "../../../target/debug/unpoll");

/** The value of cookie `name` in a request, or "". */
const cookie = (req, name) =>
  (req.headers.cookie ?? "").split(";").map((c) => c.trim().split("=")).find(([n]) => n === name)?.[1] ?? "";

/** An upstream whose documents the test sets: `/doc`, `/me` per Authorization, and `/mine`
 *  per `session` cookie (users keyed `session=<value>`; `session=` for a request without). */
export async function upstream() {
  const state = { doc: { v: 0 }, users: new Map(), gets: 0 };
  const server = http.createServer((req, res) => {
    state.gets += 1;
    const path = req.url.split("?")[0];
    let body;
    if (path === "/doc") body = state.doc;
    else if (path === "/me") body = state.users.get(req.headers.authorization ?? "");
    else if (path === "/mine") body = state.users.get(`session=${cookie(req, "session")}`);
    if (body === undefined) {
      res.writeHead(path === "/me" || path === "/mine" ? 401 : 404, { "content-type": "application/json" });
      return res.end("{}");
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return { state, addr: `127.0.0.1:${server.address().port}`, close: () => server.close() };
}

export async function freePort() {
  const s = net.createServer();
  await new Promise((ok) => s.listen(0, "127.0.0.1", ok));
  const port = s.address().port;
  await new Promise((ok) => s.close(ok));
  return port;
}

/** unpoll in front of `up`, on free ports; `start()` starts it again on the same ones.
 *  `origins` lists who may read `/me` across origins; `routes` is more YAML for `routes:`. */
export async function proxy(up, origins, routes = "") {
  const [port, admin] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), "unpoll-js-"));
  const config = join(dir, "unpoll.yaml");
  writeFileSync(
    config,
    `server:
  listen: ["127.0.0.1:${port}"]
  admin: "127.0.0.1:${admin}"
  threads: 2
  grace_period: 2s
upstreams:
  app:
    servers: ["${up.addr}"]
routes:
  - match: /doc
    upstream: app
    stream: {interval: 100ms}
  - match: /me
    upstream: app
    stream:
      interval: 100ms
      token: {query: access_token, first_message: true, timeout: 2s}
${origins ? `      origins: ${JSON.stringify(origins)}\n` : ""}${routes}`,
  );
  const p = {
    url: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${admin}`,
    child: undefined,
    log: join(dir, "unpoll.log"),
  };
  p.start = async () => {
    p.child = spawn(UNPOLL, ["run", "-c", config, "--no-watch"], { stdio: ["ignore", "ignore", "pipe"] });
    const chunks = [];
    p.child.stderr.on("data", (c) => {
      chunks.push(c);
      writeFileSync(p.log, Buffer.concat(chunks));
    });
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`http://127.0.0.1:${admin}/readyz`);
        if (r.status === 200) return;
      } catch {
        // not yet
      }
      await sleep(50);
    }
    throw new Error(`unpoll did not start: ${readFileSync(p.log, "utf8")}`);
  };
  p.stop = async () => {
    if (!p.child || p.child.exitCode !== null) return;
    const exited = new Promise((ok) => p.child.once("exit", ok));
    p.child.kill("SIGKILL");
    await exited;
  };
  await p.start();
  return p;
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Resolves once `check()` holds, or fails after `ms`. */
export async function until(check, ms = 10000, what = "the condition") {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}
