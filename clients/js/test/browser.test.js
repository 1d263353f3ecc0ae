// The client in a real browser: headless Chromium (Debian's, which ./scripts/deps.sh installs),
// driven by playwright-core, loads a page served from another origin than unpoll's and
// subscribes as two users with tokens, over EventSource (token in the URL, cookies allowed
// across origins) and WebSocket (token in the URL, and as the first message). Each page must
// hold exactly its user's document, and never the other's; a page from an origin the route
// does not list gets nothing. Skipped, saying why, only when there is no Chromium.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { proxy, upstream } from "./helpers.js";

const CHROMIUM = process.env.UNPOLL_CHROMIUM ?? "/usr/bin/chromium";
const here = dirname(fileURLToPath(import.meta.url));
const skip = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (./scripts/deps.sh installs it; UNPOLL_CHROMIUM names another)`;

const PAGE = `<!doctype html><meta charset="utf-8"><title>unpoll-client</title>
<script type="module">
import { subscribe } from "/client/index.js";
const q = new URLSearchParams(location.search);
window.seen = [];
window.errors = [];
subscribe(q.get("url"), {
  transport: q.get("transport"),
  auth: q.get("auth") || undefined,
  token: q.get("token"),
  withCredentials: true,
  backoff: { initial: 200, max: 1000 },
  onChange: (doc) => window.seen.push(doc),
  onError: (e) => window.errors.push(String(e.error ?? e.message)),
});
</script>`;

/** A site serving the page and the client's modules, on its own origin. */
async function site() {
  const server = http.createServer((req, res) => {
    const path = req.url.split("?")[0];
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end(PAGE);
    }
    const file = { "/client/index.js": "../index.js", "/client/patch.js": "../patch.js" }[path];
    if (!file) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(readFileSync(join(here, file)));
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

let up, px, app, evil, browser;
before(async () => {
  if (skip) return;
  const { chromium } = await import("playwright-core");
  up = await upstream();
  app = await site();
  evil = await site();
  px = await proxy(up, [app.origin]);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});
after(async () => {
  if (skip) return;
  await browser?.close();
  await px?.stop();
  [up, app, evil].forEach((s) => s?.close());
});

const users = {
  alice: { token: "alice-5d1f-browser-token", balance: 10 },
  bob: { token: "bob-0c7e-browser-token", balance: 99 },
};

async function open(origin, user, transport, auth) {
  const page = await browser.newPage();
  const target = new URLSearchParams({ url: `${px.url}/me`, transport, token: users[user].token });
  if (auth) target.set("auth", auth);
  await page.goto(`${origin}/?${target}`);
  return page;
}

const last = (page) => page.evaluate(() => window.seen.at(-1));

for (const [transport, auth] of [["sse", ""], ["websocket", ""], ["websocket", "first-message"]]) {
  test(`two users over ${transport}${auth ? ` (${auth})` : ""} from another origin each see their own document`, { skip }, async () => {
    for (const [name, u] of Object.entries(users)) {
      up.state.users.set(`Bearer ${u.token}`, { user: name, balance: u.balance });
    }
    const pages = {};
    for (const name of Object.keys(users)) pages[name] = await open(app.origin, name, transport, auth);
    try {
      for (const [name, page] of Object.entries(pages)) {
        let doc;
        const deadline = Date.now() + 15000;
        while (Date.now() < deadline && (doc = await last(page))?.balance !== users[name].balance) {
          await new Promise((ok) => setTimeout(ok, 50));
        }
        assert.deepEqual(doc, { user: name, balance: users[name].balance }, `${name}'s page`);
      }
      // A change reaches each user as a patch to their own document.
      for (const [name, u] of Object.entries(users)) up.state.users.set(`Bearer ${u.token}`, { user: name, balance: u.balance + 1 });
      for (const [name, page] of Object.entries(pages)) {
        const deadline = Date.now() + 15000;
        while (Date.now() < deadline && (await last(page))?.balance !== users[name].balance + 1) {
          await new Promise((ok) => setTimeout(ok, 50));
        }
        const seen = await page.evaluate(() => window.seen);
        assert.deepEqual(seen.at(-1), { user: name, balance: users[name].balance + 1 });
        assert.ok(seen.every((d) => d.user === name), `${name} saw only their own: ${JSON.stringify(seen)}`);
      }
    } finally {
      for (const page of Object.values(pages)) await page.close();
    }
  });
}

test("a page from an origin the route does not list gets nothing", { skip }, async () => {
  up.state.users.set(`Bearer ${users.alice.token}`, { user: "alice", balance: 1 });
  const pages = [await open(evil.origin, "alice", "sse", ""), await open(evil.origin, "alice", "websocket", "")];
  try {
    await new Promise((ok) => setTimeout(ok, 1500));
    for (const page of pages) {
      assert.deepEqual(await page.evaluate(() => window.seen), [], "no document for a disallowed origin");
    }
    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const refused = metrics.split("\n").find((l) => l.startsWith('unpoll_requests_rejected_total{reason="origin_not_allowed"}'));
    assert.ok(refused && Number(refused.split(" ")[1]) >= 2, `refused: ${refused}`);
  } finally {
    for (const page of pages) await page.close();
  }
});
