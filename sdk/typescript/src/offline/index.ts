/**
 * The offline cache: what the app read, kept on the device, and what it wrote while the server
 * was out of reach, queued on the device and sent in order when it comes back.
 *
 * - Reads go to the server first; when it cannot be reached, a document comes from the cache
 *   and a query is evaluated here, with the server's filter language and sort order, over the
 *   documents it returned before and those written on this device since.
 * - A write made while the server is unreachable (or while earlier ones still wait) is stored
 *   in the queue before the call returns, shows at once in reads and in subscriptions of this
 *   client, and is sent when the server answers again, one at a time, in order. It carries the
 *   version of the document it was made against (`If-Match`), so a change someone else made
 *   in between is a conflict, handed to `onConflict`, never silently overwritten. Transforms
 *   (`increment`...) carry none: they compose with other writers' by design.
 * - The realtime stream keeps the cached documents current, and its resume position is kept
 *   with them, so a reloaded page resumes its subscriptions where the last one stopped.
 */
import { monotonicFactory } from "ulid";
import type { ChangeEvent, Doc, DocData, ListOptions, Page, Transform } from "../collection.js";
import { EmberbaseError } from "../errors.js";
import { compareBy, equal, Filter, FilterError, parseSort, type SortKey } from "../filter.js";
import { applyLocally, type LocalWrite, type WriteKind } from "./local.js";
import { MemoryStorage, type OfflineStorage } from "./storage.js";

export type { OfflineStorage } from "./storage.js";
export type { WriteKind } from "./local.js";

/** A write this device made that the server refused because the document changed meanwhile. */
export interface Conflict {
  collection: string;
  id: string;
  /** The document as this device meant to leave it (its data), or null for a delete. */
  local: DocData | null;
  /** The document on the server now, or null when it no longer exists. */
  server: Doc | null;
  /** The server's answer (`412 precondition_failed`, `409 conflict`, `404 not_found`). */
  error: EmberbaseError;
}

/** A write the server refused for good (a rule, the schema): it is dropped. */
export interface Rejection {
  collection: string;
  id: string;
  op: WriteKind;
  error: EmberbaseError;
}

export interface OfflineOptions {
  /** Where the cache lives: `new IndexedDbStorage("my-app")`, `new FileStorage(path)` (Node). */
  storage: OfflineStorage;
  /**
   * Decides a conflict. Return nothing to keep the server's document (this device's change is
   * dropped), data to write it over the server's current version, or null to delete it. The
   * cache and subscriptions show the outcome. By default the server's document is kept.
   */
  onConflict?: (conflict: Conflict) => DocData | null | undefined | Promise<DocData | null | undefined>;
  /** Told of a queued write the server refused for good. By default it is logged. */
  onRejected?: (rejection: Rejection) => void;
}

/** Whether the server was reachable at the last attempt, and how many writes wait for it. */
export interface OfflineStatus {
  online: boolean;
  pending: number;
}

/** A write in the queue. */
interface Queued extends LocalWrite {
  seq: number;
  /**
   * The version it requires on the server: null for none, or `"previous"` for the version the
   * write before it (to the same document) leaves, known once that one is sent.
   */
  ifVersion: number | null | "previous";
  /** The document after it, on this device (null: deleted). */
  result: Doc | null;
  /** How many times it was sent: after an attempt without an answer, it may already be applied. */
  attempts: number;
}

/** What the cache needs from the rest of the client. */
export interface OfflineHost {
  /** The signed-in user's id (the owner of documents created here), or null. */
  userId(): string | null;
  /** Sends one write as a batch of one; resolves to the stored document (null for a delete). */
  send(op: Record<string, unknown>): Promise<Doc | null>;
  /** Reads a document from the server; null when it does not exist. */
  fetch(collection: string, id: string): Promise<Doc | null>;
}

/** A local listener: what `subscribe` hears of writes made on this device. */
interface Watcher {
  collection: string;
  filter: Filter | null;
  ids: Set<string> | null;
  listener: (event: ChangeEvent<DocData>) => void;
}

/** The most queries whose results are kept; the least recently used go first. */
const MAX_QUERIES = 200;
/** Retry sending after this long at first, doubling up to the maximum. */
const RETRY_MS = 1_000;
const MAX_RETRY_MS = 30_000;
/** Changes from the stream are written in batches this often. */
const SAVE_DELAY_MS = 50;
/** The cursor of a page answered from the cache: the offset of the next one. */
const LOCAL_CURSOR = "offline:";

const docKey = (collection: string, id: string) => `d:${collection}/${id}`;
const queryKey = (collection: string, filter?: string, sort?: string) => JSON.stringify([collection, filter ?? "", sort ?? ""]);

/** Whether an error means the server was not reached (rather than that it said no). */
export function unreachable(e: unknown): boolean {
  return e instanceof EmberbaseError && (e.status === 0 || e.status === 502 || e.status === 503 || e.status === 504);
}

export class Offline {
  private readonly docs = new Map<string, Doc>();
  /** The ids each query returned, by `queryKey`, most recently used last. */
  private readonly queries = new Map<string, Set<string>>();
  private readonly parsed = new Map<string, { collection: string; filter: Filter | null }>();
  private queue: Queued[] = [];
  private position: string | null = null;
  private storage: OfflineStorage;
  private loading: Promise<void> | null = null;
  private unsaved = new Map<string, unknown>();
  private saveTimer: ReturnType<typeof setTimeout> | null = null;
  private flushing: Promise<void> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryMs = RETRY_MS;
  private readonly watchers = new Set<Watcher>();
  private readonly statusListeners = new Set<(status: OfflineStatus) => void>();
  private readonly ulid = monotonicFactory();
  private online = true;
  private closed = false;
  /** The user the cache belongs to (undefined until the first sign-in or anonymous use). */
  private owner: string | null | undefined;
  /** Signed out with writes of a signed-in user waiting: they wait for that user. */
  private paused = false;

  constructor(
    private readonly host: OfflineHost,
    private readonly options: OfflineOptions,
  ) {
    this.storage = options.storage;
    globalThis.addEventListener?.("online", this.wake);
  }

  /** Opens the cache (once). A storage that cannot open (another tab holds it) becomes memory. */
  ready(): Promise<void> {
    this.loading ??= this.load();
    return this.loading;
  }

  /** Whether the server answered the last attempt, and how many writes wait. */
  get status(): OfflineStatus {
    return { online: this.online, pending: this.queue.length };
  }

  /** Calls `listener` whenever `status` changes; returns what stops it. */
  onStatus(listener: (status: OfflineStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** Tries to send the queued writes now; resolves when the queue is empty or the server gone. */
  async sync(): Promise<void> {
    await this.ready();
    this.flushing ??= this.flush().finally(() => (this.flushing = null));
    await this.flushing;
  }

  /** Stops retrying and lets go of the storage. The queue stays stored for the next start. */
  async close(): Promise<void> {
    this.closed = true;
    globalThis.removeEventListener?.("online", this.wake);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.flushing?.catch(() => {});
    await this.save();
    await this.storage.close?.();
  }

  /** A new document id: a ULID, increasing in creation order as the server's are. */
  newId(): string {
    return this.ulid();
  }

  // -------------------------------------------------------------------------------------------
  // Reads.

  /** A document: this device's pending version, else the server's, else the cached copy. */
  async get(collection: string, id: string, read: () => Promise<Doc>): Promise<Doc> {
    await this.ready();
    const pending = this.pendingView(collection, id);
    if (pending !== undefined) return pending ? clone(pending) : notFound(collection, id);
    try {
      const doc = await read();
      this.reached();
      this.remember(doc);
      return doc;
    } catch (e) {
      if (e instanceof EmberbaseError && e.status === 404) this.forget(collection, id);
      if (!unreachable(e)) throw e;
      this.unreached();
      const cached = this.docs.get(docKey(collection, id));
      if (cached) return clone(cached);
      throw e;
    }
  }

  /** A page of a query: the server's (with this device's pending writes), else the cache's. */
  async list(collection: string, options: ListOptions, read: () => Promise<Page>): Promise<Page> {
    await this.ready();
    const key = queryKey(collection, options.filter, options.sort);
    if (options.cursor?.startsWith(LOCAL_CURSOR)) return this.localPage(collection, key, options);
    let page: Page;
    try {
      page = await read();
    } catch (e) {
      if (!unreachable(e)) throw e;
      this.unreached();
      return this.localPage(collection, key, options);
    }
    this.reached();
    const ids = this.touchQuery(key);
    if (!options.cursor && !page.next_cursor) ids.clear();
    for (const doc of page.items) {
      ids.add(doc.id);
      this.remember(stripExpand(doc));
    }
    this.mark(`q:${key}`, [...ids]);
    return this.pendingIn(collection) ? this.overlay(collection, options, page) : page;
  }

  /** A page evaluated here: the query's known documents and this device's writes. */
  private localPage(collection: string, key: string, options: ListOptions): Page {
    const filter = parseFilter(options.filter);
    const sort = parseSortOrThrow(options.sort);
    const known = this.queries.get(key);
    const candidates = new Map<string, Doc>();
    for (const [k, doc] of this.docs) {
      if (k.startsWith(`d:${collection}/`) && (!known || known.has(doc.id))) candidates.set(doc.id, doc);
    }
    const items = this.evaluate(collection, candidates, filter, sort);
    const offset = Number(options.cursor?.slice(LOCAL_CURSOR.length) ?? 0) || 0;
    const limit = options.limit ?? 50;
    const end = offset + limit;
    const page: Page = {
      items: items.slice(offset, end).map(clone),
      next_cursor: end < items.length ? `${LOCAL_CURSOR}${end}` : null,
      fromCache: true,
    };
    if (options.count) page.total = items.length;
    return page;
  }

  /** The server's page with this device's pending writes applied, in the query's order. */
  private overlay(collection: string, options: ListOptions, page: Page): Page {
    const filter = parseFilter(options.filter);
    const sort = parseSortOrThrow(options.sort);
    const candidates = new Map(page.items.map((d) => [d.id, d] as const));
    let items = this.evaluate(collection, candidates, filter, sort);
    const last = page.items[page.items.length - 1];
    // Past the page's last document, another page may come first: leave them for it.
    if (page.next_cursor && last) items = items.filter((d) => compareBy(sort, d, last) <= 0);
    return { ...page, items: items.map(clone) };
  }

  /**
   * `candidates` with every pending write of the collection applied (replaced, removed or
   * added), filtered and sorted.
   */
  private evaluate(collection: string, candidates: Map<string, Doc>, filter: Filter | null, sort: SortKey[]): Doc[] {
    const merged = new Map(candidates);
    for (const w of this.queue) {
      if (w.collection !== collection) continue;
      if (w.result === null) merged.delete(w.id);
      else merged.set(w.id, w.result);
    }
    return [...merged.values()].filter((d) => !filter || filter.matches(d)).sort((a, b) => compareBy(sort, a, b));
  }

  // -------------------------------------------------------------------------------------------
  // Writes.

  /**
   * Applies a write: sent at once when the server is reachable and nothing waits before it;
   * otherwise queued (durably) and answered with the document as it will be.
   */
  async write(write: LocalWrite & { ifVersion?: number }, send: () => Promise<Doc | null>): Promise<Doc | null> {
    await this.ready();
    let attempts = 0;
    if (this.online && this.queue.length === 0) {
      try {
        const doc = await send();
        this.reached();
        if (doc) this.remember(doc);
        else this.forget(write.collection, write.id);
        return doc;
      } catch (e) {
        if (!unreachable(e)) throw e;
        this.unreached();
        attempts = 1;
      }
    }
    return this.enqueue(write, attempts);
  }

  private async enqueue(write: LocalWrite & { ifVersion?: number }, attempts: number, front = false): Promise<Doc | null> {
    const { collection, id } = write;
    const before = this.view(collection, id);
    const waiting = this.queue.some((w) => w.collection === collection && w.id === id);
    const transformsOnly = write.op === "update" && !write.data && write.transforms !== undefined;
    let ifVersion: Queued["ifVersion"] = null;
    if (write.ifVersion !== undefined) ifVersion = write.ifVersion;
    else if (write.op !== "create" && !transformsOnly) ifVersion = waiting ? "previous" : (before?.version ?? null);
    const seq = front ? (this.queue[0]?.seq ?? 1) - 1 : (this.queue[this.queue.length - 1]?.seq ?? 0) + 1;
    const result = applyLocally(before, write, this.host.userId());
    if (result === undefined) {
      throw new EmberbaseError(0, "network_error", `cannot reach the server, and ${collection}/${id} is not in the offline cache`);
    }
    const queued: Queued = { ...stripUndefined(write), seq, ifVersion, attempts, result };
    if (front) this.queue.unshift(queued);
    else this.queue.push(queued);
    this.mark(`w:${seq}`, queued);
    try {
      await this.save();
    } catch (e) {
      this.queue = this.queue.filter((q) => q !== queued);
      this.unsaved.delete(`w:${seq}`);
      throw e;
    }
    this.emitLocal(collection, id, before, result);
    this.statusChanged();
    this.schedule(0);
    return result ? clone(result) : null;
  }

  /** Sends queued writes in order until the queue is empty or the server cannot be reached. */
  private async flush(): Promise<void> {
    while (this.queue.length > 0 && !this.closed && !this.paused) {
      const w = this.queue[0];
      let doc: Doc | null;
      try {
        // Counted before it leaves: after a crash mid-request, the next start knows it may have
        // been applied.
        w.attempts += 1;
        this.mark(`w:${w.seq}`, w);
        await this.save();
        doc = await this.host.send(batchOp(w));
      } catch (e) {
        if (!(e instanceof EmberbaseError) || unreachable(e) || e.status === 429 || e.status >= 500) {
          this.unreached();
          this.schedule(this.retryMs);
          this.retryMs = Math.min(MAX_RETRY_MS, this.retryMs * 2);
          return;
        }
        this.reached();
        if (!(await this.refused(w, e))) return;
        await this.save();
        continue;
      }
      this.reached();
      this.retryMs = RETRY_MS;
      this.acknowledge(w, doc);
      await this.save();
    }
  }

  /**
   * The server said no to `w`: it was applied by an earlier attempt whose answer was lost, or
   * it conflicts, or it is refused for good. False when the server went away meanwhile.
   */
  private async refused(w: Queued, error: EmberbaseError): Promise<boolean> {
    const conflict = error.status === 412 || error.status === 409 || (error.status === 404 && w.op !== "create");
    let server: Doc | null = null;
    if (conflict || w.attempts > 1) {
      try {
        server = await this.host.fetch(w.collection, w.id);
      } catch (e) {
        if (unreachable(e)) {
          this.unreached();
          this.schedule(this.retryMs);
          return false;
        }
      }
    }
    if (w.attempts > 1 && (w.op === "delete" ? server === null : !!server && !!w.result && equal(server.data, w.result.data))) {
      this.acknowledge(w, server);
    } else if (conflict) await this.conflict(w, server, error);
    else this.reject(w, error);
    return true;
  }

  /** The server took `w`: its answer replaces this device's version. */
  private acknowledge(w: Queued, doc: Doc | null): void {
    const before = this.view(w.collection, w.id);
    this.dequeue(w);
    if (doc) this.remember(doc);
    else this.forget(w.collection, w.id);
    // The next write to the document was made against what this one leaves.
    const next = this.queue.find((q) => q.collection === w.collection && q.id === w.id);
    if (next?.ifVersion === "previous") {
      next.ifVersion = doc?.version ?? null;
      this.mark(`w:${next.seq}`, next);
    }
    const after = this.view(w.collection, w.id);
    if (!sameDoc(before, after)) this.emitLocal(w.collection, w.id, before, after);
    this.statusChanged();
  }

  /** Drops every queued write to the document of `w`; returns what this device showed. */
  private dropDocument(w: Queued): Doc | null | undefined {
    const before = this.view(w.collection, w.id);
    for (const other of this.queue.filter((q) => q.collection === w.collection && q.id === w.id)) this.dequeue(other);
    return before;
  }

  private async conflict(w: Queued, server: Doc | null, error: EmberbaseError): Promise<void> {
    const before = this.dropDocument(w);
    if (server) this.remember(server);
    else this.forget(w.collection, w.id);
    this.emitLocal(w.collection, w.id, before, server);
    this.statusChanged();
    const local = before ? before.data : null;
    const resolution = await this.options.onConflict?.({ collection: w.collection, id: w.id, local, server, error });
    if (resolution === undefined || (resolution === null && !server)) return;
    const op: WriteKind = resolution === null ? "delete" : server ? "set" : "create";
    const write = { op, collection: w.collection, id: w.id, ifVersion: server?.version, ...(resolution ? { data: resolution } : {}) };
    await this.enqueue(write, 0, true);
  }

  private reject(w: Queued, error: EmberbaseError): void {
    const before = this.dropDocument(w);
    this.emitLocal(w.collection, w.id, before, this.view(w.collection, w.id));
    this.statusChanged();
    const rejection = { collection: w.collection, id: w.id, op: w.op, error };
    if (this.options.onRejected) this.options.onRejected(rejection);
    else console.warn(`emberbase: the server refused a ${w.op} of ${w.collection}/${w.id} made offline:`, error.message);
  }

  private dequeue(w: Queued): void {
    this.queue = this.queue.filter((q) => q !== w);
    this.mark(`w:${w.seq}`, undefined);
  }

  /** Sends again after `ms` (at once for 0). */
  private schedule(ms: number): void {
    if (this.closed || this.paused || this.queue.length === 0) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.sync();
    }, ms);
    // A Node process may end while writes wait: they are stored, and sent on the next start.
    (this.retryTimer as { unref?: () => void }).unref?.();
  }

  private readonly wake = () => {
    this.retryMs = RETRY_MS;
    this.schedule(0);
  };

  // -------------------------------------------------------------------------------------------
  // The realtime stream.

  /** Where the stream resumes: the id of the last event the cache holds. */
  async resumePosition(): Promise<string | null> {
    await this.ready();
    return this.position;
  }

  /** The stream connected: the server is reachable again. */
  connected(): void {
    this.reached();
  }

  /** An event from the stream: its document is stored, and the position with it. */
  received(type: string, data: unknown, id: string | undefined): void {
    const event = data as { collection?: string; id?: string; doc?: Doc } | null;
    if (event?.doc && event.collection && event.id) {
      if (type === "delete") this.forget(event.collection, event.id, event.doc.version);
      else if (type === "create" || type === "update") this.remember(event.doc);
    }
    if (id !== undefined) {
      this.position = id;
      this.mark("p", id);
    }
  }

  /** Whether this device has writes to the document the server does not have yet. */
  hasPending(collection: string, id: string): boolean {
    return this.queue.some((w) => w.collection === collection && w.id === id);
  }

  /** Tells `listener` of writes made on this device to documents that match; returns the stop. */
  watch(collection: string, filter: string | undefined, ids: string[] | undefined, listener: (event: ChangeEvent<DocData>) => void): () => void {
    let parsed: Filter | null = null;
    try {
      parsed = filter ? Filter.parse(filter) : null;
    } catch {
      // The server refuses it too, and says so through the subscription's onError.
      return () => {};
    }
    const watcher: Watcher = { collection, filter: parsed, ids: ids?.length ? new Set(ids) : null, listener };
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  // -------------------------------------------------------------------------------------------
  // The cache.

  private async load(): Promise<void> {
    let entries: Map<string, unknown>;
    try {
      entries = await this.storage.load();
    } catch (e) {
      console.warn(`emberbase: the offline cache cannot open (${(e as Error).message}); this page keeps it in memory only`);
      this.storage = new MemoryStorage();
      entries = new Map();
    }
    for (const [key, value] of entries) {
      if (key.startsWith("d:")) this.docs.set(key, value as Doc);
      else if (key.startsWith("q:")) this.queries.set(key.slice(2), new Set(value as string[]));
      else if (key.startsWith("w:")) this.queue.push(value as Queued);
      else if (key === "p") this.position = value as string;
      else if (key === "u") this.owner = value as string | null;
    }
    this.queue.sort((a, b) => a.seq - b.seq);
    if (this.queue.length > 0) {
      this.statusChanged();
      this.schedule(0);
    }
  }

  /**
   * The signed-in user changed. The cache belongs to one user: signing in as another clears it
   * (the writes still queued are reported to `onRejected`); signing out pauses sending until
   * the same user signs in again.
   */
  async userChanged(user: string | null): Promise<void> {
    await this.ready();
    this.paused = user === null && !!this.owner && this.queue.length > 0;
    if (user === null || user === this.owner) {
      if (!this.paused) this.schedule(0);
      return;
    }
    if (this.owner !== undefined && this.owner !== null) {
      const signedOut = new EmberbaseError(401, "signed_out", `another user signed in on this device`);
      for (const w of this.queue) this.options.onRejected?.({ collection: w.collection, id: w.id, op: w.op, error: signedOut });
      for (const key of [...this.docs.keys(), ...[...this.queries.keys()].map((k) => `q:${k}`), ...this.queue.map((w) => `w:${w.seq}`), "p"]) {
        this.mark(key, undefined);
      }
      this.docs.clear();
      this.queries.clear();
      this.parsed.clear();
      this.queue = [];
      this.position = null;
      this.statusChanged();
    }
    this.owner = user;
    this.mark("u", user);
    await this.save();
  }

  /** Stores a document the server returned, unless the cache holds a newer one. */
  private remember(doc: Doc): void {
    const key = docKey(doc.collection, doc.id);
    const known = this.docs.get(key);
    if (known && known.version > doc.version) return;
    const stored = stripExpand(doc);
    this.docs.set(key, stored);
    this.mark(key, stored);
    for (const [query, ids] of this.queries) {
      const { collection, filter } = this.parsedQuery(query);
      if (collection !== doc.collection) continue;
      const matches = !filter || filter.matches(stored);
      if (matches === ids.has(doc.id)) continue;
      if (matches) ids.add(doc.id);
      else ids.delete(doc.id);
      this.mark(`q:${query}`, [...ids]);
    }
  }

  /** Forgets a document the server no longer has (unless the cache holds a newer version). */
  private forget(collection: string, id: string, version?: number): void {
    const key = docKey(collection, id);
    const known = this.docs.get(key);
    if (known && version !== undefined && known.version > version) return;
    if (known) {
      this.docs.delete(key);
      this.mark(key, undefined);
    }
    for (const [query, ids] of this.queries) {
      if (ids.delete(id) && this.parsedQuery(query).collection === collection) this.mark(`q:${query}`, [...ids]);
    }
  }

  /** The ids of a query, marked as the most recently used; the oldest query beyond the cap goes. */
  private touchQuery(key: string): Set<string> {
    const ids = this.queries.get(key) ?? new Set<string>();
    this.queries.delete(key);
    this.queries.set(key, ids);
    if (this.queries.size > MAX_QUERIES) {
      const oldest = this.queries.keys().next().value as string;
      this.queries.delete(oldest);
      this.parsed.delete(oldest);
      this.mark(`q:${oldest}`, undefined);
    }
    return ids;
  }

  private parsedQuery(key: string): { collection: string; filter: Filter | null } {
    let parsed = this.parsed.get(key);
    if (!parsed) {
      const [collection, filter] = JSON.parse(key) as [string, string, string];
      let compiled: Filter | null = null;
      try {
        compiled = filter ? Filter.parse(filter) : null;
      } catch {
        compiled = null;
      }
      parsed = { collection, filter: compiled };
      this.parsed.set(key, parsed);
    }
    return parsed;
  }

  /** What this device shows for a document: its last pending write, else the cached copy. */
  private view(collection: string, id: string): Doc | null | undefined {
    const pending = this.pendingView(collection, id);
    return pending !== undefined ? pending : this.docs.get(docKey(collection, id));
  }

  /** The outcome of the last pending write to a document whose outcome is known here. */
  private pendingView(collection: string, id: string): Doc | null | undefined {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const w = this.queue[i];
      if (w.collection === collection && w.id === id) return w.result;
    }
    return undefined;
  }

  private pendingIn(collection: string): boolean {
    return this.queue.some((w) => w.collection === collection);
  }

  /** Records a change to store with the next save (`undefined` removes the key). */
  private mark(key: string, value: unknown): void {
    this.unsaved.set(key, value);
    if (!this.saveTimer) {
      this.saveTimer = setTimeout(() => void this.save().catch(() => {}), SAVE_DELAY_MS);
      (this.saveTimer as { unref?: () => void }).unref?.();
    }
  }

  /** Writes every recorded change in one batch. */
  private async save(): Promise<void> {
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    if (this.unsaved.size === 0) return;
    const changes = this.unsaved;
    this.unsaved = new Map();
    try {
      await this.storage.write(changes);
    } catch (e) {
      // Keep them for the next attempt, unless something newer replaced them meanwhile.
      for (const [k, v] of changes) if (!this.unsaved.has(k)) this.unsaved.set(k, v);
      throw e;
    }
  }

  private emitLocal(collection: string, id: string, before: Doc | null | undefined, after: Doc | null | undefined): void {
    if (after === undefined) return;
    for (const watcher of this.watchers) {
      if (watcher.collection !== collection || (watcher.ids && !watcher.ids.has(id))) continue;
      const was = !!before && (!watcher.filter || watcher.filter.matches(before));
      const is = !!after && (!watcher.filter || watcher.filter.matches(after));
      if (!was && !is) continue;
      if (after && is) watcher.listener({ type: was ? "update" : "create", id, doc: clone(after), seq: 0, local: true });
      else if (before) watcher.listener({ type: "delete", id, doc: clone(before), seq: 0, local: true });
    }
  }

  private reached(): void {
    if (this.online) return;
    this.online = true;
    this.retryMs = RETRY_MS;
    this.statusChanged();
    this.schedule(0);
  }

  private unreached(): void {
    if (!this.online) return;
    this.online = false;
    this.statusChanged();
  }

  private statusChanged(): void {
    const status = this.status;
    for (const listener of this.statusListeners) listener(status);
  }
}

/** The batch op that sends a queued write. */
function batchOp(w: Queued): Record<string, unknown> {
  const op: Record<string, unknown> = { op: w.op, collection: w.collection, id: w.id };
  if (w.data !== undefined) op.data = w.data;
  if (w.transforms !== undefined) op.transforms = w.transforms as Record<string, Transform>;
  if (typeof w.ifVersion === "number") op.if_version = w.ifVersion;
  return op;
}

function notFound(collection: string, id: string): never {
  throw new EmberbaseError(404, "not_found", `document ${collection}/${id} was deleted on this device`);
}

function parseFilter(filter: string | undefined): Filter | null {
  try {
    return filter ? Filter.parse(filter) : null;
  } catch (e) {
    throw asBadRequest(e, "filter");
  }
}

function parseSortOrThrow(sort: string | undefined): SortKey[] {
  try {
    return parseSort(sort);
  } catch (e) {
    throw asBadRequest(e, "sort");
  }
}

function asBadRequest(e: unknown, field: string): unknown {
  if (!(e instanceof FilterError)) return e;
  return new EmberbaseError(400, "bad_request", `invalid ${field}: ${e.message}`, { field, column: e.column });
}

function stripExpand(doc: Doc): Doc {
  if (!("expand" in doc)) return doc;
  const { expand: _expand, ...rest } = doc;
  return rest as Doc;
}

function stripUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

function sameDoc(a: Doc | null | undefined, b: Doc | null | undefined): boolean {
  if (!a || !b) return a === b;
  return a.version === b.version && equal(a.data, b.data);
}

function clone<T>(value: T): T {
  return structuredClone(value);
}
