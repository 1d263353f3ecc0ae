// The client against the real unpoll binary and a real upstream (see helpers.js).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { EventSource } from "eventsource";
import WebSocket from "ws";
import { applyJsonPatch, applyMergePatch, subscribe } from "../index.js";
import { proxy, sleep, until, upstream } from "./helpers.js";

let up;
let px;
before(async () => {
  up = await upstream();
  px = await proxy(up);
});
after(async () => {
  await px.stop();
  up.close();
});

const impl = { EventSource, WebSocket };

test("patches apply as RFC 6902 and RFC 7396 say", () => {
  const doc = { a: [1, 2, 3], b: { c: 1 }, "x/y": 1 };
  const out = applyJsonPatch(doc, [
    { op: "replace", path: "/a/1", value: 9 },
    { op: "add", path: "/a/-", value: 4 },
    { op: "move", from: "/b/c", path: "/d" },
    { op: "remove", path: "/x~1y" },
    { op: "copy", from: "/d", path: "/e" },
    { op: "test", path: "/e", value: 1 },
  ]);
  assert.deepEqual(out, { a: [1, 9, 3, 4], b: {}, d: 1, e: 1 });
  assert.deepEqual(doc.a, [1, 2, 3], "the original is untouched");
  assert.throws(() => applyJsonPatch(doc, [{ op: "test", path: "/a/0", value: 2 }]));
  assert.deepEqual(applyMergePatch({ a: 1, b: { c: 1, d: 2 } }, { a: null, b: { c: 3 } }), { b: { c: 3, d: 2 } });
});

test("a patch copies only what it touches and shares the rest", () => {
  const doc = { rows: [{ id: 1, v: 0 }, { id: 2, v: 0 }], meta: { n: 2 }, keep: { deep: [1, 2] } };
  const out = applyJsonPatch(doc, [
    { op: "replace", path: "/rows/1/v", value: 5 },
    { op: "add", path: "/rows/1/w", value: 1 },
  ]);
  assert.deepEqual(out.rows[1], { id: 2, v: 5, w: 1 });
  assert.deepEqual(doc.rows[1], { id: 2, v: 0 }, "the original is untouched");
  assert.equal(out.keep, doc.keep, "an untouched member is the same object");
  assert.equal(out.rows[0], doc.rows[0], "an untouched element is the same object");
  assert.notEqual(out.rows, doc.rows);
  assert.deepEqual(Object.keys(applyJsonPatch({ a: 1, b: 2 }, [{ op: "replace", path: "/a", value: 3 }])), ["a", "b"]);
  const merged = applyMergePatch(doc, { meta: { n: 3 } });
  assert.equal(merged.keep, doc.keep);
  assert.deepEqual(doc.meta, { n: 2 });
  assert.throws(() => applyJsonPatch(doc, [{ op: "add", path: "/missing/x", value: 1 }]));
  assert.throws(() => applyJsonPatch(doc, [{ op: "replace", path: "/rows/length", value: 1 }]));
});

for (const transport of ["sse", "websocket"]) {
  test(`${transport}: a patch that does not apply brings a fresh snapshot, not a stale document`, async () => {
    up.state.doc = { v: 1, items: [{ id: 1 }], pad: "p".repeat(200) };
    const events = [];
    const errors = [];
    const sub = subscribe(`${px.url}/doc`, {
      transport,
      ...impl,
      onChange: (_, e) => events.push(e.kind),
      onError: (e) => errors.push(e),
    });
    try {
      await until(() => sub.doc?.v === 1, 10000, "the snapshot");
      // The document the client holds goes wrong (as after a missed event): the next patch,
      // which adds to /items, cannot apply.
      delete sub.doc.items;
      up.state.doc = { v: 2, items: [{ id: 1 }, { id: 2 }], pad: "p".repeat(200) };
      await until(() => errors.some((e) => e.error === "patch_failed"), 10000, "the failure reported");
      await until(() => sub.doc?.v === 2 && sub.doc.items?.length === 2, 10000, "a fresh snapshot");
      assert.deepEqual(sub.doc, up.state.doc);
      assert.deepEqual(events.filter((k) => k === "snapshot").length, 2, `a second snapshot: ${events}`);
      const failed = errors.find((e) => e.error === "patch_failed");
      assert.ok(failed.cause instanceof Error, "the failure is the cause");
    } finally {
      sub.close();
    }
  });
}

for (const transport of ["sse", "websocket"]) {
  for (const format of ["json-patch", "merge-patch"]) {
    test(`${transport} in ${format} converges on every change`, async () => {
      up.state.doc = { v: 1, items: [{ id: 1 }], pad: "p".repeat(200) };
      const events = [];
      const sub = subscribe(`${px.url}/doc`, { transport, format, ...impl, onChange: (_, e) => events.push(e.kind) });
      try {
        await until(() => sub.doc?.v === 1, 10000, "the snapshot");
        for (let v = 2; v <= 4; v++) {
          up.state.doc = { v, items: [{ id: 1 }, { id: v }], pad: "p".repeat(200) };
          await until(() => sub.doc?.v === v, 10000, `version ${v}`);
        }
        assert.deepEqual(sub.doc, up.state.doc);
        assert.equal(events[0], "snapshot");
        assert.ok(events.slice(1).includes("patch"), `patches after the snapshot: ${events}`);
      } finally {
        sub.close();
      }
    });
  }
}

test("both transports reconnect after the proxy restarts and converge", async () => {
  up.state.doc = { v: 10 };
  const statuses = [];
  const subs = ["sse", "websocket"].map((transport) =>
    subscribe(`${px.url}/doc`, { transport, ...impl, backoff: { initial: 100, max: 500 }, onStatus: (s) => statuses.push(s) }),
  );
  try {
    await until(() => subs.every((s) => s.doc?.v === 10), 10000, "both subscribed");
    await px.stop();
    up.state.doc = { v: 11 };
    await sleep(300);
    await px.start();
    await until(() => subs.every((s) => s.doc?.v === 11), 15000, "both back");
    assert.ok(statuses.filter((s) => s === "connecting").length >= 2, `reconnected: ${statuses}`);
  } finally {
    subs.forEach((s) => s.close());
  }
});

test("a WebSocket that loses its connection resumes with only what it missed", async () => {
  up.state.doc = { v: 20, pad: "p".repeat(200) };
  // The client's sockets, to cut the current one as a network failure would.
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const events = [];
  const sub = subscribe(`${px.url}/doc`, {
    transport: "websocket",
    EventSource,
    WebSocket: Tracked,
    backoff: { initial: 400, max: 400 },
    onChange: (_, e) => events.push(e),
  });
  try {
    await until(() => sub.doc?.v === 20);
    const before = events.length;
    sockets.at(-1).terminate();
    up.state.doc = { v: 21, pad: "p".repeat(200) };
    await until(() => sub.doc?.v === 21, 15000, "resumed");
    assert.equal(sockets.length, 2, "one reconnection");
    assert.ok(sockets[1].url.includes("unpoll_last_event_id="), sockets[1].url);
    const after = events.slice(before).map((e) => e.kind);
    assert.ok(after.length >= 1 && after.every((k) => k === "patch"), `only patches after resuming: ${after}`);
    assert.deepEqual(sub.doc, up.state.doc);
  } finally {
    sub.close();
  }
});

for (const [transport, auth] of [["sse", "query"], ["websocket", "query"], ["websocket", "first-message"]]) {
  test(`${transport} (${auth}) asks for a new token after a 401`, async () => {
    up.state.users.set("Bearer good-token", { user: "alice" });
    const tokens = ["expired-token", "good-token"];
    let asked = 0;
    const errors = [];
    const sub = subscribe(`${px.url}/me`, {
      transport,
      auth,
      ...impl,
      getToken: async () => tokens[Math.min(asked++, tokens.length - 1)],
      onError: (e) => errors.push(e.error),
    });
    try {
      await until(() => sub.doc?.user === "alice", 10000, "alice's document");
      assert.equal(asked, 2, "the first token was refused, the second taken");
      assert.ok(errors.includes("unauthorized"), `told: ${errors}`);
    } finally {
      sub.close();
    }
  });
}

test("other terminal errors stop the subscription", async () => {
  const statuses = [];
  let error;
  const sub = subscribe(`${px.url}/doc?missing=1`, { transport: "sse", ...impl, onStatus: (s) => statuses.push(s), onError: (e) => (error = e) });
  up.state.doc = undefined;
  try {
    await until(() => statuses.includes("closed"), 10000, "closed");
    assert.equal(error.error, "not_found");
  } finally {
    sub.close();
    up.state.doc = { v: 0 };
  }
});
