// `origins: ["*"]` in a real browser: headless Chromium (Debian's, which ./scripts/deps.sh
// installs), driven by playwright-core. A victim whose browser holds a session cookie for
// unpoll's host opens a page from another origin; that page tries to read the victim's
// cookie-authenticated document with fetch, EventSource (withCredentials) and WebSocket. `*`
// means "any origin, without credentials": the page may read what anyone may read, never what
// the cookie unlocks. Skipped, saying why, only when there is no Chromium.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import http from "node:http";
import { after, before, test } from "node:test";
import { proxy, upstream } from "./helpers.js";

const CHROMIUM = process.env.UNPOLL_CHROMIUM ?? "/usr/bin/chromium";
const skip = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (./scripts/deps.sh installs it; UNPOLL_CHROMIUM names another)`;

const SECRET = { user: "alice", iban: "DE00 1234" };
const ANONYMOUS = { user: "anonymous" };

let up, px, evil, browser, context;
before(async () => {
  if (skip) return;
  const { chromium } = await import("playwright-core");
  up = await upstream();
  up.state.users.set("session=alice-cookie", SECRET);
  up.state.users.set("session=", ANONYMOUS);
  px = await proxy(up, null, "  - match: /mine\n    upstream: app\n    stream: {interval: 100ms, origins: [\"*\"]}\n");
  // The attacker's page: any other origin (another port of the same host is even same-site,
  // so the browser does send the victim's SameSite=Lax cookie with its requests).
  evil = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>elsewhere</title>");
  });
  await new Promise((ok) => evil.listen(0, "127.0.0.1", ok));
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  context = await browser.newContext();
  const host = new URL(px.url).hostname;
  await context.addCookies([{ name: "session", value: "alice-cookie", domain: host, path: "/", sameSite: "Lax" }]);
});
after(async () => {
  if (skip) return;
  await browser?.close();
  await px?.stop();
  up?.close();
  evil?.close();
});

async function attackerPage() {
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${evil.address().port}/`);
  return page;
}

test("with origins: [\"*\"], another origin's page cannot read the victim's cookie-authenticated document", { skip }, async () => {
  const page = await attackerPage();
  const url = `${px.url}/mine`;
  try {
    // fetch with the victim's cookies: the browser refuses to expose the answer.
    const withCookies = await page.evaluate(async (u) => {
      try {
        const r = await fetch(u, { credentials: "include" });
        return { status: r.status, body: await r.text() };
      } catch (e) {
        return { refused: String(e) };
      }
    }, url);
    assert.ok(withCookies.refused, `a credentialed read across origins must fail: ${JSON.stringify(withCookies)}`);
    // Without credentials it may read, and reads what anyone may.
    const plain = await page.evaluate(async (u) => (await fetch(u)).json(), url);
    assert.deepEqual(plain, ANONYMOUS);
    // EventSource with credentials: no event reaches the page.
    const es = await page.evaluate(
      (u) =>
        new Promise((ok) => {
          const seen = [];
          const source = new EventSource(u, { withCredentials: true });
          source.addEventListener("snapshot", (e) => seen.push(e.data));
          setTimeout(() => {
            source.close();
            ok(seen);
          }, 2000);
        }),
      url,
    );
    assert.deepEqual(es, [], "no event of the victim's stream");
    // WebSocket has no CORS: the browser sends the cookie, and unpoll must not use it.
    const ws = await page.evaluate(
      (u) =>
        new Promise((ok) => {
          const seen = [];
          const socket = new WebSocket(u.replace(/^http/, "ws"));
          socket.onmessage = (e) => seen.push(e.data);
          setTimeout(() => {
            socket.close();
            ok(seen);
          }, 2000);
        }),
      url,
    );
    assert.ok(ws.length > 0, "the WebSocket is served");
    for (const frame of ws) {
      assert.ok(!frame.includes("alice") && !frame.includes("DE00"), `the victim's data reached another origin: ${frame}`);
    }
    assert.deepEqual(JSON.parse(ws[0]).data, ANONYMOUS, "served as a request without cookies");
  } finally {
    await page.close();
  }
});

test("the victim's own same-origin page still reads its document with its cookie", { skip }, async () => {
  const page = await context.newPage();
  try {
    await page.goto(`${px.url}/mine`);
    const doc = JSON.parse(await page.evaluate(() => document.body.innerText));
    assert.deepEqual(doc, SECRET);
  } finally {
    await page.close();
  }
});
