/**
 * What only Node has: `import { FileStorage } from "emberbase/node"` keeps the offline cache in
 * a file, for CLIs, scripts and Electron main processes that must survive a restart offline.
 */
import { open, readFile, rename, type FileHandle } from "node:fs/promises";
import type { OfflineStorage } from "./offline/storage.js";

export type { OfflineStorage } from "./offline/storage.js";

/** Rewrite the log once it is this many times larger than what it holds (and over 1 MiB). */
const COMPACT_RATIO = 4;
const COMPACT_MIN_BYTES = 1 << 20;

/**
 * Keeps the offline cache in one file, as an append-only log of change batches (a JSON line
 * each, synced to disk before `write` resolves). A batch cut short by a crash is a last line
 * that does not parse: it is dropped, so a batch is applied whole or not at all. The log is
 * rewritten (to a temporary file, synced, then renamed over it) when it grows well past what
 * it holds.
 */
export class FileStorage implements OfflineStorage {
  private readonly entries = new Map<string, unknown>();
  private handle: FileHandle | null = null;
  private logBytes = 0;
  /** Writes run one after another. */
  private tail: Promise<void> = Promise.resolve();

  constructor(readonly path: string) {}

  async load(): Promise<Map<string, unknown>> {
    const text = await readFile(this.path, "utf8").catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return "";
      throw e;
    });
    const lines = text.split("\n");
    let torn = false;
    lines.forEach((line, i) => {
      if (!line) return;
      let batch: [string, unknown?][];
      try {
        batch = JSON.parse(line);
      } catch (e) {
        // Only the last line can be cut short by a crash; anything else is a damaged file.
        if (i >= lines.length - 2) {
          torn = true;
          return;
        }
        throw new Error(`${this.path}: line ${i + 1} is damaged: ${(e as Error).message}`);
      }
      this.apply(batch);
    });
    this.logBytes = Buffer.byteLength(text);
    if (torn) await this.compact();
    else this.handle = await open(this.path, "a");
    return new Map(this.entries);
  }

  write(changes: Map<string, unknown>): Promise<void> {
    const run = this.tail.then(async () => {
      if (!this.handle) throw new Error("the offline cache is not open");
      const batch: [string, unknown?][] = [...changes].map(([k, v]) => (v === undefined ? [k] : [k, v]));
      const line = `${JSON.stringify(batch)}\n`;
      await this.handle.appendFile(line);
      await this.handle.sync();
      this.logBytes += Buffer.byteLength(line);
      this.apply(batch);
      if (this.logBytes > COMPACT_MIN_BYTES && this.logBytes > COMPACT_RATIO * this.liveBytes()) await this.compact();
    });
    this.tail = run.catch(() => {});
    return run;
  }

  async close(): Promise<void> {
    await this.tail;
    await this.handle?.close();
    this.handle = null;
  }

  private apply(batch: [string, unknown?][]): void {
    for (const [key, ...value] of batch) {
      if (value.length === 0) this.entries.delete(key);
      else this.entries.set(key, value[0]);
    }
  }

  private liveBytes(): number {
    let bytes = 0;
    for (const [k, v] of this.entries) bytes += k.length + JSON.stringify(v).length;
    return bytes;
  }

  /** Writes what the log holds as one batch to a new file, and puts it in the log's place. */
  private async compact(): Promise<void> {
    const temporary = `${this.path}.tmp`;
    const line = this.entries.size ? `${JSON.stringify([...this.entries])}\n` : "";
    const file = await open(temporary, "w");
    try {
      await file.writeFile(line);
      await file.sync();
    } finally {
      await file.close();
    }
    await this.handle?.close();
    await rename(temporary, this.path);
    this.handle = await open(this.path, "a");
    this.logBytes = Buffer.byteLength(line);
  }
}
