/** What a subscriber is told about its connection. */
export type Status = "connecting" | "open" | "closed";

/** An `error` event from unpoll (`retrying: false` ends the stream), or `patch_failed` when a
 *  patch did not apply (the client then subscribes again for a fresh snapshot; the failure is
 *  `cause`). */
export interface StreamError extends Error {
  status?: number;
  error?: string;
  retrying?: boolean;
  cause?: unknown;
}

export interface ChangeEvent {
  kind: "snapshot" | "patch";
  /** `<epoch>-<version>`. */
  id: string;
  data: unknown;
}

export interface Options<T = unknown> {
  transport?: "sse" | "websocket";
  format?: "json-patch" | "merge-patch" | "snapshot";
  /** A fixed token, sent as `tokenParam` (or as the first frame with `auth: "first-message"`). */
  token?: string;
  /** Called for every connection; again after the upstream answered 401. */
  getToken?: () => string | Promise<string>;
  /** The query parameter of the route's `stream.token.query` (default `access_token`). */
  tokenParam?: string;
  /** WebSocket: send the token as `{"type":"auth","token":…}`, not in the URL. */
  auth?: "query" | "first-message";
  /** SSE across origins with cookies. */
  withCredentials?: boolean;
  onChange?: (doc: T, event: ChangeEvent) => void;
  onError?: (err: StreamError | Error) => void;
  onStatus?: (status: Status) => void;
  /** WebSocket reconnection: exponential from `initial` to `max` ms, with full jitter. */
  backoff?: { initial?: number; max?: number };
  /** Implementations to use where there are no globals (Node: `eventsource`, `ws`). */
  EventSource?: unknown;
  WebSocket?: unknown;
}

export interface Subscription<T = unknown> {
  close(): void;
  readonly doc: T | undefined;
  readonly lastEventId: string | undefined;
}

export function subscribe<T = unknown>(url: string, options?: Options<T>): Subscription<T>;
export function applyJsonPatch<T = unknown>(doc: T, patch: unknown[]): T;
export function applyMergePatch<T = unknown>(doc: T, patch: unknown): T;
