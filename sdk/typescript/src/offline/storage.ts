/**
 * Where the offline cache keeps what it knows between runs: a durable map from string keys to
 * JSON values, read whole when the cache opens and changed in atomic batches.
 *
 * `IndexedDbStorage` (browsers), `FileStorage` (Node, from `emberbase/node`) and
 * `MemoryStorage` (nothing survives; for tests) implement it; an app can bring its own (React
 * Native's SQLite, say) with the same two methods.
 */
export interface OfflineStorage {
  /** Every entry. Called once, when the cache opens. */
  load(): Promise<Map<string, unknown>>;
  /**
   * Applies every change or none (`undefined` removes the key), and resolves once they would
   * survive the app or the machine stopping.
   */
  write(changes: Map<string, unknown>): Promise<void>;
  /** Lets go of the storage (a lock, a file handle). */
  close?(): Promise<void>;
}

/** Keeps the cache in memory only: offline reads and queued writes last as long as the page. */
export class MemoryStorage implements OfflineStorage {
  private readonly entries = new Map<string, unknown>();

  async load(): Promise<Map<string, unknown>> {
    return new Map(this.entries);
  }

  async write(changes: Map<string, unknown>): Promise<void> {
    for (const [key, value] of changes) {
      if (value === undefined) this.entries.delete(key);
      else this.entries.set(key, structuredClone(value));
    }
  }
}

/** How long a page waits for another tab to let go of the same cache (a reload hands it over). */
const LOCK_WAIT_MS = 2_000;

/**
 * Keeps the cache in IndexedDB, in a database of its own (`name`). One tab at a time owns it:
 * the cache holds a Web Lock while open, and a second tab of the same app waits for it
 * briefly, then fails to open (the SDK then runs that tab without a persistent cache and says
 * so on the console). A reload hands the lock over.
 */
export class IndexedDbStorage implements OfflineStorage {
  private db: IDBDatabase | null = null;
  private release: (() => void) | null = null;

  constructor(readonly name = "emberbase") {}

  async load(): Promise<Map<string, unknown>> {
    await this.lock();
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const open = indexedDB.open(this.name, 1);
      open.onupgradeneeded = () => open.result.createObjectStore("entries");
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
      open.onblocked = () => reject(new Error(`the IndexedDB database ${this.name} is blocked by another tab`));
    });
    this.db = db;
    const tx = db.transaction("entries", "readonly");
    const store = tx.objectStore("entries");
    const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
    return new Map(keys.map((k, i) => [String(k), values[i]]));
  }

  write(changes: Map<string, unknown>): Promise<void> {
    const db = this.db;
    if (!db) return Promise.reject(new Error("the offline cache is not open"));
    return new Promise((resolve, reject) => {
      // Strict durability: the transaction completes once the data is flushed to disk.
      const tx = db.transaction("entries", "readwrite", { durability: "strict" } as IDBTransactionOptions);
      const store = tx.objectStore("entries");
      for (const [key, value] of changes) {
        if (value === undefined) store.delete(key);
        else store.put(value, key);
      }
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("the offline cache write was aborted"));
    });
  }

  async close(): Promise<void> {
    this.db?.close();
    this.db = null;
    this.release?.();
    this.release = null;
  }

  /** Takes the tab-exclusive Web Lock for this cache, where the browser has Web Locks. */
  private async lock(): Promise<void> {
    const locks = (globalThis.navigator as { locks?: LockManager } | undefined)?.locks;
    if (!locks) return;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), LOCK_WAIT_MS);
    try {
      await new Promise<void>((acquired, failed) => {
        locks
          .request(`emberbase.offline:${this.name}`, { signal: abort.signal }, () => {
            acquired();
            return new Promise<void>((release) => (this.release = release));
          })
          .catch(() => failed(new Error(`another tab holds the offline cache ${this.name}`)));
      });
    } finally {
      clearTimeout(timer);
    }
  }
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
