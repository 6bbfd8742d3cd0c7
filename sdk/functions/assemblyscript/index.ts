// Emberbase functions in AssemblyScript, as the npm package `emberbase-functions`. Hides the
// guest ABI (docs/functions.md): the exports `alloc` and `handle`, the imports `emberbase.log`,
// `emberbase.call`, `emberbase.result_read`.
//
//   import { register, db, log, JSONValue, quote } from "emberbase-functions";
//   export { alloc, handle } from "emberbase-functions";
//   register((event: JSONValue): string | null => { ...; return null; });
//
// Compile with the runtime `stub` (every invocation gets a fresh instance, so nothing needs
// collecting) and this module's `abort`, so that the module imports nothing but `emberbase.*`;
// the asconfig.json of a project made by `emberbase functions new` says so:
//
//   {"options": {"runtime": "stub", "use": ["abort=~lib/emberbase-functions/index/abort"]}}

import { JSONValue, parse, quote } from "./json";
export { JSONValue, parse, quote };

// @ts-ignore: decorator
@external("emberbase", "log")
declare function host_log(level: i32, ptr: usize, len: i32): void;
// @ts-ignore: decorator
@external("emberbase", "call")
declare function host_call(ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("emberbase", "result_read")
declare function host_result_read(dst: usize): void;

let handler: ((event: JSONValue) => string | null) | null = null;

/** Sets the function that handles every event. It returns the result JSON, or null. */
export function register(h: (event: JSONValue) => string | null): void {
  handler = h;
}

/** ABI: memory for the host to write the event into. */
export function alloc(len: i32): usize {
  return heap.alloc(<usize>len);
}

/** ABI: runs the registered handler on the event at `ptr..ptr+len`. */
export function handle(ptr: usize, len: i32): i64 {
  const h = handler;
  if (h === null) return 0;
  const event = parse(String.UTF8.decodeUnsafe(ptr, <usize>len));
  const out = h(event);
  if (out === null) return 0;
  const bytes = String.UTF8.encode(out);
  return (<i64>changetype<usize>(bytes) << 32) | <i64>bytes.byteLength;
}

export const DEBUG = 0;
export const INFO = 1;
export const WARN = 2;
export const ERROR = 3;

/** One log line, kept with the invocation and written to the server log. */
export function log(message: string, level: i32 = INFO): void {
  const bytes = String.UTF8.encode(message);
  host_log(level, changetype<usize>(bytes), bytes.byteLength);
}

/** Traps with a message in the function's log (used as the module's `abort`). */
export function abort(message: string | null, file: string | null, line: u32, column: u32): void {
  let text = "abort";
  if (message !== null) text = message;
  let where = "?";
  if (file !== null) where = file;
  log(text + " at " + where + ":" + line.toString() + ":" + column.toString(), ERROR);
  unreachable();
}

function request(json: string): JSONValue {
  const bytes = String.UTF8.encode(json);
  const n = host_call(changetype<usize>(bytes), bytes.byteLength);
  if (n < 0) throw new Error("emberbase.call refused the request (" + n.toString() + ")");
  const out = heap.alloc(<usize>n);
  host_result_read(out);
  return parse(String.UTF8.decodeUnsafe(out, <usize>n));
}

/** The function's secrets, set by an admin (`PUT /v1/admin/functions/{name}/secrets/{NAME}`). */
export namespace env {
  /** The value of secret `name`, or null when it is not set. What a run logs or returns has the
   *  values it read replaced by `[secret]`. */
  export function get(name: string): string | null {
    const reply = request('{"op":"env","name":' + quote(name) + "}");
    const value = reply.get("value");
    return value.isNull() ? null : value.asString();
  }
}

/** Email, through the server's outbox (and SMTP when it has a relay). */
export namespace mail {
  /** Sends a message to `to` (an address) with a plain-text body, an HTML body, or both (pass
   *  "" for the one you leave out). The reply is `{"id", "delivery"}` once the message is
   *  stored, or `{"error": {"code", "message"}}` (`rate_limited` past the function's
   *  `mail_per_hour`, default 100). */
  export function send(to: string, subject: string, text: string, html: string = ""): JSONValue {
    let req = '{"op":"mail","to":' + quote(to) + ',"subject":' + quote(subject);
    if (text.length > 0) req += ',"text":' + quote(text);
    if (html.length > 0) req += ',"html":' + quote(html);
    return request(req + "}");
  }
}

/** Outbound HTTP requests, to the hosts the function's config allows (`fetch.allow`). */
export namespace http {
  /** Sends a request; `headers` and `body` are JSON text (`'{"accept":"text/plain"}'`, a
   *  quoted string) or empty. The reply is `{"status", "headers", "body"}` for any HTTP status;
   *  a refused host, private address, oversized answer or timeout is `{"error": {"code",
   *  "message"}}` (`forbidden`, `payload_too_large`, `unavailable`). */
  export function fetch(method: string, url: string, headers: string = "", body: string = ""): JSONValue {
    let req = '{"op":"fetch","method":' + quote(method) + ',"url":' + quote(url);
    if (headers.length > 0) req += ',"headers":' + headers;
    if (body.length > 0) req += ',"body":' + body;
    return request(req + "}");
  }

  /** `GET url`. */
  export function get(url: string): JSONValue {
    return fetch("GET", url);
  }
}

/** The database, with the same semantics, validation and change events as the HTTP API. Data
 *  arguments are JSON text (build it with `quote` or `JSONValue.toString`). A reply the store
 *  refused is `{"error": {"code", "message"}}`: check `reply.get("error").isNull()`. */
export namespace db {
  export function get(collection: string, id: string): JSONValue {
    return request('{"op":"get","collection":' + quote(collection) + ',"id":' + quote(id) + "}");
  }

  export function create(collection: string, data: string): JSONValue {
    return request('{"op":"create","collection":' + quote(collection) + ',"data":' + data + "}");
  }

  export function set(collection: string, id: string, data: string): JSONValue {
    return request('{"op":"set","collection":' + quote(collection) + ',"id":' + quote(id) + ',"data":' + data + "}");
  }

  /** A JSON merge patch; with `ifVersion` >= 0, only if the document is at that version. */
  export function update(collection: string, id: string, patch: string, ifVersion: i64 = -1): JSONValue {
    const v = ifVersion >= 0 ? ',"if_version":' + ifVersion.toString() : "";
    return request('{"op":"update","collection":' + quote(collection) + ',"id":' + quote(id) + ',"data":' + patch + v + "}");
  }

  export function remove(collection: string, id: string): JSONValue {
    return request('{"op":"delete","collection":' + quote(collection) + ',"id":' + quote(id) + "}");
  }

  /** `{"items": [...], "next_cursor"}`; `filter` and `sort` in the filter language. */
  export function query(collection: string, filter: string = "", sort: string = "", limit: i32 = 0): JSONValue {
    let req = '{"op":"query","collection":' + quote(collection);
    if (filter.length > 0) req += ',"filter":' + quote(filter);
    if (sort.length > 0) req += ',"sort":' + quote(sort);
    if (limit > 0) req += ',"limit":' + limit.toString();
    return request(req + "}");
  }
}
