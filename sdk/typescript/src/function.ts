// Types for functions written in TypeScript (or checked JavaScript): the events a function
// receives, what it returns, and the `emberbase` global that the server's JavaScript engine
// provides. Import them as types only; the bundle needs nothing from this package at run time:
//
//   import type { FunctionEvent, FunctionResult } from "emberbase/function";
//   export default async function handle(event: FunctionEvent): Promise<FunctionResult> { ... }
//
// Bundle and upload with `npx emberbase functions deploy NAME index.ts`.

/** Who caused an event: a user, the service key, another function, or nobody. */
export interface Auth {
  id: string | null;
  email: string | null;
  role: "user" | "admin" | "service" | "function" | (string & {});
  /** The function whose write caused the event (role `function`). */
  function?: string;
  /** The user's profile (HTTP calls). */
  profile?: Record<string, unknown>;
}

/** A document, as the HTTP API returns it. */
export interface Doc<T = Record<string, unknown>> {
  id: string;
  collection: string;
  owner?: string | null;
  version: number;
  created_at: string;
  updated_at: string;
  data: T;
}

/** A stored file's record. */
export interface FileRecord {
  bucket: string;
  path: string;
  size: number;
  content_type: string;
  sha256: string;
  owner?: string | null;
  [field: string]: unknown;
}

interface Delivered {
  v: 1;
  event_id: string;
  /** 1 for the first delivery; the same event may be delivered again after a failure. */
  attempt: number;
  time: string;
}

/** A document was created, updated or deleted. */
export interface DocumentEvent<T = Record<string, unknown>> extends Delivered {
  trigger: "create" | "update" | "delete";
  collection: string;
  id: string;
  before: Doc<T> | null;
  after: Doc<T> | null;
  auth: Auth | null;
  depth: number;
  traceparent?: string;
}

/** A file was uploaded, replaced or deleted. */
export interface FileEvent extends Delivered {
  trigger: "create" | "update" | "delete";
  bucket: string;
  path: string;
  before: FileRecord | null;
  after: FileRecord | null;
  auth: Auth | null;
  depth: number;
  traceparent?: string;
}

/** `POST /v1/functions/{name}`. */
export interface HttpEvent<B = unknown> {
  v: 1;
  trigger: "http";
  method: string;
  body: B;
  auth: Auth | null;
  time: string;
}

/** A tick of the function's cron schedule. */
export interface ScheduleEvent extends Delivered {
  trigger: "schedule";
  cron: string;
  scheduled_for: string;
}

/** A before-write hook: decides whether a write is made, and with what data. */
export interface HookEvent<T = Record<string, unknown>> {
  v: 1;
  trigger: "before_create" | "before_update" | "before_delete";
  collection: string;
  /** null for a create whose id the server chooses. */
  id: string | null;
  before: Doc<T> | null;
  /** What the client sent: the data of a create or replace, the patch of an update. */
  data?: Partial<T>;
  /** An update's document data with the patch applied. */
  after?: T;
  auth: Auth | null;
  depth: number;
  time: string;
}

export type FunctionEvent = DocumentEvent | FileEvent | HttpEvent | ScheduleEvent | HookEvent;

/** What an HTTP function answers: a status (200-599) and a JSON body. */
export interface HttpAnswer<B = unknown> {
  status: number;
  body?: B;
}

/** A trigger's or schedule's outcome (`ok: false` is retried), or a hook's verdict. */
export type Verdict<T = Record<string, unknown>> =
  | { ok: true; data?: Partial<T> }
  | { ok: false; error: string; status?: 400 | 403 };

export type FunctionResult = HttpAnswer | Verdict | Record<string, unknown> | void | null | undefined;

/** A request the server refused; `code` is the HTTP API's error code (`not_found`, ...). */
export interface EmberbaseError extends Error {
  name: "EmberbaseError";
  code: string;
}

export interface Page<T = Record<string, unknown>> {
  items: Doc<T>[];
  next_cursor?: string | null;
  total?: number;
}

export interface QueryOptions {
  /** The filter language of the HTTP API, e.g. `data.n > 5 && data.tag == "x"`. */
  filter?: string;
  /** Fields, `-` for descending: `-data.n,created_at`. */
  sort?: string;
  limit?: number;
  cursor?: string;
  count?: boolean;
}

export interface AggregateOptions {
  filter?: string;
  groupBy?: string;
  /** e.g. `count,sum:data.total`. */
  ops?: string;
}

export interface WriteOptions {
  /** Write only if the document is at this version (else `precondition_failed`). */
  ifVersion?: number;
}

export interface UpdateOptions extends WriteOptions {
  /** Atomic transforms, e.g. `{ likes: { $inc: 1 } }`. */
  transforms?: Record<string, unknown>;
}

/** The reply to `emberbase.fetch`. */
export interface FetchResponse {
  status: number;
  ok: boolean;
  /** Lower-case names; repeated headers joined with `, `. */
  headers: Record<string, string>;
  /** The body as text, or null when it is not UTF-8 (then see `bodyBase64`). */
  body: string | null;
  bodyBase64: string | null;
  text(): Promise<string>;
  json<T = unknown>(): Promise<T>;
}

export interface FetchInit {
  method?: "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS";
  headers?: Record<string, string>;
  /** Text, or any other value, sent as JSON (with `content-type: application/json` unless the headers set one). */
  body?: unknown;
}

export interface Mail {
  to: string | string[];
  subject: string;
  text?: string;
  html?: string;
}

/** The host API of a function: the global `emberbase`. */
export interface Emberbase {
  db: {
    get<T = Record<string, unknown>>(collection: string, id: string): Promise<Doc<T> | null>;
    create<T = Record<string, unknown>>(collection: string, data: T): Promise<Doc<T>>;
    set<T = Record<string, unknown>>(collection: string, id: string, data: T, options?: WriteOptions): Promise<Doc<T>>;
    update<T = Record<string, unknown>>(
      collection: string,
      id: string,
      patch: Partial<T>,
      options?: UpdateOptions,
    ): Promise<Doc<T>>;
    delete(collection: string, id: string, options?: WriteOptions): Promise<{ deleted: true }>;
    query<T = Record<string, unknown>>(collection: string, options?: QueryOptions): Promise<Page<T>>;
    aggregate(
      collection: string,
      options?: AggregateOptions,
    ): Promise<{ groups: { key: Record<string, unknown>; values: Record<string, number | null> }[] }>;
  };
  /** An outbound request, to the hosts of the function's `fetch.allow` only. */
  fetch(url: string, init?: FetchInit): Promise<FetchResponse>;
  env: {
    /** The function's secret `name`, or null when it has none. */
    get(name: string): string | null;
  };
  mail: {
    /** Puts a message in the outbox (`delivery`: `queued`, or `outbox` without SMTP). */
    send(message: Mail): Promise<{ id: string; delivery: "queued" | "outbox" }>;
  };
  /** The class of the errors above, for `instanceof`. */
  EmberbaseError: new (code: string, message: string) => EmberbaseError;
}

declare global {
  // The engine defines both before the module loads. Each console line goes to the invocation
  // log (debug, info for log and info, warn, error); values other than text are shown as JSON.
  var emberbase: Emberbase;
  interface Console {
    debug(...data: unknown[]): void;
    log(...data: unknown[]): void;
    info(...data: unknown[]): void;
    warn(...data: unknown[]): void;
    error(...data: unknown[]): void;
  }
  var console: Console;
}
