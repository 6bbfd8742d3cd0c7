/**
 * The Emberbase client: `const eb = new Emberbase("http://127.0.0.1:7070")`.
 *
 * - `eb.auth`: sign-up, login, logout, the current user; tokens refreshed for you.
 * - `eb.collection<Post>("posts")`: typed documents, lists, iteration, live subscriptions.
 * - `eb.files`: uploads, downloads, signed URLs.
 * - `eb.functions.call(name, body)`: your Wasm functions over HTTP.
 * - `eb.offline`: with `offline: {storage}`, reads answered and writes queued while the server
 *   is out of reach (see `Offline`).
 * - `eb.batch([...])`: several writes, all or nothing.
 * - `eb.api`: the generated client of every endpoint (openapi-fetch), for anything else; run
 *   its calls through `eb.call` to send the session's token.
 * - `eb.changes(listener)`: every collection's changes, live (admins).
 *
 * Every failure is an `EmberbaseError` with the HTTP `status` and the API's `code`.
 */
import type { components, paths } from "./generated/schema.js";
import { Auth } from "./auth.js";
import { Collection, type Doc, type DocData, type SubscribeOptions, type Transform } from "./collection.js";
import { EmberbaseError } from "./errors.js";
import { Files } from "./files.js";
import { Functions } from "./functions.js";
import { Transport } from "./http.js";
import { Offline, type OfflineOptions } from "./offline/index.js";
import { Connection } from "./realtime.js";
import { MemoryStore, type TokenStore } from "./storage.js";

export { Auth } from "./auth.js";
export { arrayRemove, arrayUnion, Collection, deleteField, increment, serverTime } from "./collection.js";
export type {
  AggregateGroup,
  AggregateOp,
  AggregateOptions,
  AggregateValue,
  ChangeEvent,
  Doc,
  DocData,
  GetOptions,
  ListOptions,
  Page,
  Patch,
  SubscribeOptions,
  Transform,
  Transforms,
  WriteOptions,
} from "./collection.js";
export { EmberbaseError, MfaRequiredError } from "./errors.js";
export type { MfaAnswer } from "./auth.js";
export { compareBy, compareValues, Filter, FilterError, parseSort, type SortKey } from "./filter.js";
export { Files } from "./files.js";
export type { FileBody, FileInfo, FileListOptions, FilePage, UploadOptions } from "./files.js";
export { Functions, type Invocation } from "./functions.js";
export { Offline } from "./offline/index.js";
export type { Conflict, OfflineOptions, OfflineStatus, Rejection, WriteKind } from "./offline/index.js";
export { IndexedDbStorage, MemoryStorage, type OfflineStorage } from "./offline/storage.js";
export { readEvents, type SseEvent } from "./realtime.js";
export { LocalStorageStore, MemoryStore } from "./storage.js";
export type { StoredSession, TokenStore, User } from "./storage.js";
export type { components, paths };

export interface EmberbaseOptions {
  /** Where the session is kept: `MemoryStore` (default) or `LocalStorageStore` in browsers. */
  storage?: TokenStore;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
  /** Refresh the access token this many ms before it expires (at most half its lifetime). */
  refreshMarginMs?: number;
  /**
   * Keeps what the app reads and writes on the device, so that it works without the server:
   * `{ storage: new IndexedDbStorage("my-app"), onConflict }` (see `Offline`).
   */
  offline?: OfflineOptions;
}

/** A change to any collection (`Emberbase.changes`); `reset` when the stream could not resume. */
export type AnyChangeEvent =
  | { type: "create" | "update" | "delete"; collection: string; id: string; doc: Doc; seq: number }
  | { type: "reset"; seq: number };

/** One op of a batch. */
export type BatchOp =
  | { op: "create"; collection: string; id?: string; data: DocData }
  | { op: "set"; collection: string; id: string; data: DocData; if_version?: number }
  | {
      op: "update";
      collection: string;
      id: string;
      data?: DocData;
      transforms?: Record<string, Transform>;
      if_version?: number;
    }
  | { op: "delete"; collection: string; id: string; if_version?: number };

/**
 * The data type of each collection, by name. Empty here; the file `npx emberbase types` writes
 * fills it in (a `declare module "emberbase"` block), from the JSON Schemas the server stores.
 */
export interface CollectionTypes {}

export class Emberbase {
  readonly auth: Auth;
  readonly files: Files;
  readonly functions: Functions;
  /** The offline cache, when the client was made with `offline`. */
  readonly offline: Offline | null;
  private readonly transport: Transport;
  /** The one realtime connection every subscription of this client shares. */
  private readonly realtime: Connection;

  constructor(url: string, options: EmberbaseOptions = {}) {
    this.transport = new Transport(url, options.fetch);
    this.auth = new Auth(this.transport, options.storage ?? new MemoryStore(), options.refreshMarginMs);
    this.transport.tokens = this.auth;
    this.offline = options.offline
      ? new Offline(
          {
            userId: () => this.auth.user?.id ?? null,
            send: (op) => this.sendOne(op),
            fetch: (collection, id) =>
              new Collection(this.transport, collection, this.realtime, null).get(id).catch((e: unknown) => {
                if (e instanceof EmberbaseError && e.status === 404) return null;
                throw e;
              }),
          },
          options.offline,
        )
      : null;
    this.realtime = new Connection(this.transport, this.offline);
    if (this.offline) {
      const offline = this.offline;
      this.auth.onChange((user) => void offline.userChanged(user?.id ?? null).catch(() => {}));
    }
    this.files = new Files(this.transport);
    this.functions = new Functions(this.transport);
  }

  /** The server's base URL. */
  get url(): string {
    return this.transport.baseUrl;
  }

  /** The generated client of the whole API (openapi-fetch), typed from the OpenAPI document. */
  get api() {
    return this.transport.api;
  }

  /**
   * The documents of a collection: typed by its name when `npx emberbase types` generated its
   * type (`eb.collection("posts")`), or as `T` (`eb.collection<Post>("posts")`).
   */
  collection<K extends keyof CollectionTypes & string>(name: K): Collection<CollectionTypes[K] & object>;
  collection<T extends object = DocData>(name: string): Collection<T>;
  collection(name: string): Collection<DocData> {
    const offline = this.offline && { cache: this.offline, sendOne: (op: Record<string, unknown>) => this.sendOne(op) };
    return new Collection<DocData>(this.transport, name, this.realtime, offline);
  }

  /** One write as a batch of one (the offline queue sends what it holds this way). */
  private async sendOne(op: Record<string, unknown>): Promise<Doc | null> {
    const [result] = await this.batch([op as BatchOp]);
    return result ?? null;
  }

  /**
   * Applies several writes atomically: every op or none. A failure's `details.op` is the index
   * of the op that failed. Results are the envelopes (null for a delete), in order.
   */
  async batch(ops: BatchOp[]): Promise<(Doc | null)[]> {
    const result = await this.transport.call((headers) =>
      this.transport.api.POST("/v1/batch", {
        body: { ops } as components["schemas"]["BatchRequest"],
        headers,
      }),
    );
    return (result as { results: (Doc | null)[] }).results;
  }

  /**
   * Runs a call of the generated client with the session's token (renewed once if the server
   * refuses it), and returns its data or throws `EmberbaseError`: for the routes without a
   * method of their own, such as the admin API.
   *
   * ```ts
   * const { items } = await eb.call((headers) => eb.api.GET("/v1/admin/collections", { headers }));
   * ```
   */
  call<T>(run: (headers: Record<string, string>) => Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
    return this.transport.call(run);
  }

  /**
   * Calls `listener` for every change to every collection, live, until the returned function is
   * called (admins only: the realtime topic `*`). Shares the client's one realtime connection,
   * and resumes where it left off after a reconnect.
   */
  changes(listener: (event: AnyChangeEvent) => void, options: Omit<SubscribeOptions, "ids"> = {}): () => void {
    return this.realtime.add(
      { subscribe: "*", filter: options.filter },
      {
        event: (type, data, seq) => {
          if (type === "reset") listener({ type: "reset", seq });
          else if (type === "create" || type === "update" || type === "delete") {
            const { collection, id, doc } = data as { collection: string; id: string; doc: Doc };
            listener({ type, collection, id, doc, seq });
          }
        },
        ready: () => options.onReady?.(),
        fatal: (error) => {
          if (options.onError) options.onError(error);
          else console.error("emberbase: the subscription to every collection ended:", error);
        },
      },
    );
  }

  /** Whether the server answers: `{status: "ok", version}`. */
  health(): Promise<components["schemas"]["Health"]> {
    return this.transport.call((headers) => this.transport.api.GET("/v1/health", { headers }));
  }
}

export default Emberbase;
