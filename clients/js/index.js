// unpoll-client: a live JSON document from an unpoll stream, over Server-Sent Events or
// WebSocket. See README.md beside this file.
import { applyJsonPatch, applyMergePatch } from "./patch.js";

export { applyJsonPatch, applyMergePatch };

const FORMATS = ["json-patch", "merge-patch", "snapshot"];

/** Terminal errors after which a new token may help (the upstream said 401). */
const UNAUTHORIZED = "unauthorized";

function withQuery(url, params) {
  const u = new URL(url, globalThis.location?.href);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) u.searchParams.set(k, v);
  }
  return u.toString();
}

function wsUrl(url) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

/**
 * Subscribes to `url` and keeps its document. Options: `transport` ("sse" or "websocket"),
 * `format` ("json-patch", "merge-patch" or "snapshot"), `token` or `getToken()` (sent as
 * `tokenParam`, default `access_token`, or with `auth: "first-message"` on WebSocket as the
 * first frame), `onChange(doc, event)`, `onError(err)`, `onStatus(state)`, `withCredentials`
 * (SSE, cross-origin cookies), `EventSource` / `WebSocket` (the implementations to use, for
 * Node), `backoff` ({initial, max} in ms, WebSocket reconnection).
 */
export function subscribe(url, options = {}) {
  const transport = options.transport ?? "sse";
  const format = options.format ?? "json-patch";
  if (!FORMATS.includes(format)) throw new Error(`unknown format ${format}`);
  if (transport !== "sse" && transport !== "websocket") throw new Error(`unknown transport ${transport}`);
  const onChange = options.onChange ?? (() => {});
  const onError = options.onError ?? (() => {});
  const onStatus = options.onStatus ?? (() => {});
  const tokenParam = options.tokenParam ?? "access_token";
  const backoff = { initial: 250, max: 30000, ...(options.backoff ?? {}) };
  let doc;
  let lastId;
  let closed = false;
  let current; // the EventSource or WebSocket
  let attempt = 0;
  let timer;
  let status;

  const setStatus = (s) => {
    if (s !== status) {
      status = s;
      onStatus(s);
    }
  };

  const token = async () => {
    if (options.getToken) return await options.getToken();
    return options.token;
  };

  // One event; returns an error to stop on, if it was terminal.
  const handle = (kind, id, data) => {
    if (kind === "snapshot") {
      doc = data;
    } else if (kind === "patch") {
      let next;
      try {
        if (doc === undefined) throw new Error("a patch came before any snapshot");
        next = format === "merge-patch" ? applyMergePatch(doc, data) : applyJsonPatch(doc, data);
      } catch (cause) {
        resync(cause);
        return undefined;
      }
      doc = next;
    } else if (kind === "error") {
      const err = Object.assign(new Error(data.message ?? data.error), data);
      if (data.retrying === false) return err;
      onError(err);
      return undefined;
    } else {
      return undefined;
    }
    if (id) lastId = id;
    attempt = 0;
    setStatus("open");
    onChange(doc, { kind, id, data });
    return undefined;
  };

  // A patch that does not apply (a missed event, a bug, a document changed by its holder): the
  // document can no longer be trusted. Drop it, report it, and subscribe again without
  // Last-Event-ID, which brings a fresh snapshot.
  const resync = (cause) => {
    doc = undefined;
    lastId = undefined;
    stopCurrent();
    const message = `a patch did not apply (${cause?.message ?? cause}); subscribing again for a fresh snapshot`;
    onError(Object.assign(new Error(message), { error: "patch_failed", cause }));
    reconnect(true);
  };

  // A terminal error: unauthorized with getToken tries again with a new token; anything else stops.
  const terminal = (err) => {
    stopCurrent();
    if (err.error === UNAUTHORIZED && options.getToken && !closed) {
      onError(err);
      reconnect(true);
      return;
    }
    closed = true;
    setStatus("closed");
    onError(err);
  };

  const stopCurrent = () => {
    if (!current) return;
    const c = current;
    current = undefined;
    c.onmessage = c.onerror = c.onclose = c.onopen = null;
    try {
      c.close();
    } catch {
      // already closed
    }
  };

  const reconnect = (now) => {
    if (closed) return;
    setStatus("connecting");
    const base = Math.min(backoff.max, backoff.initial * 2 ** attempt);
    attempt += 1;
    // Full jitter: anywhere up to the backoff, so that many clients do not come back at once.
    const delay = now ? 0 : Math.random() * base;
    clearTimeout(timer);
    timer = setTimeout(() => connect().catch((e) => onError(e)), delay);
  };

  const connectSse = async () => {
    const ES = options.EventSource ?? globalThis.EventSource;
    if (!ES) throw new Error("no EventSource: pass one as options.EventSource (in Node, the eventsource package)");
    const t = await token();
    const params = { unpoll_format: format, [tokenParam]: t };
    // EventSource resends Last-Event-ID itself when it reconnects; after a new token, say it.
    if (lastId) params.unpoll_last_event_id = lastId;
    const es = new ES(withQuery(url, params), { withCredentials: !!options.withCredentials });
    current = es;
    setStatus("connecting");
    for (const kind of ["snapshot", "patch", "error"]) {
      es.addEventListener(kind, (e) => {
        if (current !== es) return;
        let data;
        try {
          data = JSON.parse(e.data);
        } catch (err) {
          return onError(err);
        }
        const stop = handle(kind, e.lastEventId, data);
        if (stop) terminal(stop);
      });
    }
    // EventSource reconnects on its own (and resumes with Last-Event-ID).
    es.onerror = () => {
      if (current === es && !closed) setStatus(es.readyState === 2 ? "closed" : "connecting");
      if (current === es && es.readyState === 2 && !closed) reconnect(false);
    };
  };

  const connectWs = async () => {
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new Error("no WebSocket: pass one as options.WebSocket (in Node, the ws package)");
    const t = await token();
    const inBand = options.auth === "first-message";
    const params = {};
    if (!inBand) params[tokenParam] = t;
    if (lastId) params.unpoll_last_event_id = lastId;
    const ws = new WS(wsUrl(withQuery(url, params)), `unpoll.${format}`);
    current = ws;
    setStatus("connecting");
    ws.onopen = () => {
      if (inBand && t !== undefined) ws.send(JSON.stringify({ type: "auth", token: t }));
    };
    ws.onmessage = (m) => {
      if (current !== ws) return;
      let ev;
      try {
        ev = JSON.parse(typeof m.data === "string" ? m.data : m.data.toString());
      } catch (err) {
        return onError(err);
      }
      const stop = handle(ev.event, ev.id, ev.data);
      if (stop) terminal(stop);
    };
    ws.onclose = (e) => {
      if (current !== ws) return;
      current = undefined;
      if (e.code === 4401 && options.getToken) return reconnect(true);
      reconnect(false);
    };
    ws.onerror = () => {};
  };

  const connect = () => (transport === "sse" ? connectSse() : connectWs());
  connect().catch((e) => {
    closed = true;
    setStatus("closed");
    onError(e);
  });

  return {
    close() {
      closed = true;
      clearTimeout(timer);
      stopCurrent();
      setStatus("closed");
    },
    get doc() {
      return doc;
    },
    get lastEventId() {
      return lastId;
    },
  };
}
