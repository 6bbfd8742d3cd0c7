import type { components } from "./generated/schema.js";
import { EmberbaseError } from "./errors.js";
import type { WriteKind } from "./offline/local.js";
import { Transport, type Headers } from "./http.js";
import type { Offline } from "./offline/index.js";
import type { Connection } from "./realtime.js";

type Envelope = components["schemas"]["Document"];

/** Any JSON object a document can hold. */
export type DocData = Record<string, unknown>;

/**
 * A stored document: the server's envelope around your data. Read with `expand`, it carries
 * the documents its relation fields reference, by field (`null` when gone or unreadable; an
 * array for a field that holds several ids).
 */
export type Doc<T extends object = DocData> = Omit<Envelope, "data"> & {
  data: T;
  expand?: Record<string, Doc | null | (Doc | null)[]>;
};

export interface GetOptions {
  /** Relation fields to embed under `expand`, nested with dots: `["author", "comments.author"]`. */
  expand?: string[];
}

/** One page of a list. */
export interface Page<T extends object = DocData> {
  items: Doc<T>[];
  /** Pass it as `cursor` for the next page; null on the last one. */
  next_cursor: string | null;
  /** With `count: true`: every match you may read, over all pages. */
  total?: number;
  /** Answered by the offline cache, the server being out of reach. */
  fromCache?: boolean;
}

export interface ListOptions {
  /** A filter expression, e.g. `data.done == false && owner == "…"`. */
  filter?: string;
  /** Comma list of paths, `-` for descending: `-data.n,created_at`. Default: creation order. */
  sort?: string;
  /** Page size, 1 to 1000 (default 50). */
  limit?: number;
  cursor?: string | null;
  /** Also count every match you may read, over all pages (`total`). */
  count?: boolean;
  /** Relation fields to embed under `expand` in every item (see `GetOptions`). */
  expand?: string[];
}

/** An aggregate operation over a path of the envelope (`data.n`, `created_at`, ...). */
export type AggregateOp =
  | "count"
  | `count:${string}`
  | `sum:${string}`
  | `avg:${string}`
  | `min:${string}`
  | `max:${string}`;

/** What each operation gives: counts and sums are numbers, an average is null without numbers. */
export type AggregateValue<O extends string> = O extends "count" | `count:${string}` | `sum:${string}`
  ? number
  : O extends `avg:${string}`
    ? number | null
    : unknown;

export interface AggregateOptions<O extends AggregateOp> {
  /** Which documents (all you may read by default). */
  filter?: string;
  /** At most 4 paths; the groups come ordered by them. Without it, one group of everything. */
  groupBy?: string[];
  /** At most 16 operations (default `["count"]`). */
  ops?: O[];
}

/** One group of an aggregate: the `groupBy` values its documents share, and each result. */
export interface AggregateGroup<O extends string> {
  key: Record<string, unknown>;
  values: { [K in O]: AggregateValue<K> };
}

export interface WriteOptions {
  /** Apply only if the stored version is this one (else `412 precondition_failed`). */
  ifVersion?: number;
}

/**
 * An atomic change to one field, applied by the server to the stored value in the commit, so
 * that concurrent writers never lose one another's update. Build them with `increment`,
 * `serverTime`, `arrayUnion`, `arrayRemove` and `deleteField`.
 */
export type Transform =
  | { $inc: number }
  | { $serverTime: true }
  | { $arrayUnion: unknown[] }
  | { $arrayRemove: unknown[] }
  | { $delete: true };

/** Adds `by` to a number (negative to subtract); a missing field counts as 0. */
export const increment = (by: number): Transform => ({ $inc: by });
/** The commit's time (the document's `updated_at`), as an RFC 3339 string. */
export const serverTime = (): Transform => ({ $serverTime: true });
/** Appends each value the array does not already hold (a missing field becomes an array). */
export const arrayUnion = (...values: unknown[]): Transform => ({ $arrayUnion: values });
/** Removes every element equal to one of the values. */
export const arrayRemove = (...values: unknown[]): Transform => ({ $arrayRemove: values });
/** Removes the field. */
export const deleteField = (): Transform => ({ $delete: true });

/** Transforms by field: a top-level field of `T`, or a dotted path into nested objects. */
export type Transforms<T> = { [K in keyof T & string]?: Transform } & { [path: string]: Transform };

/** The content type of an update that carries transforms. */
const TRANSFORM_UPDATE = "application/vnd.emberbase.update+json";

/** An RFC 7386 merge patch of `T`: listed fields are replaced, `null` removes one. */
export type Patch<T> = { [K in keyof T]?: T[K] | null };

/** What a subscription delivers. */
export type ChangeEvent<T extends object = DocData> =
  | {
      type: "create" | "update" | "delete";
      id: string;
      doc: Doc<T>;
      seq: number;
      /**
       * A write made on this device with the offline cache on, shown before the server has it
       * (`seq` 0), or the cache going back to the server's document after a conflict.
       */
      local?: true;
    }
  /** The changes missed while disconnected are no longer retained: refetch what you show. */
  | { type: "reset"; seq: number };

export interface SubscribeOptions {
  /** Only changes to documents that match (before or after the change). */
  filter?: string;
  /** Only these documents. */
  ids?: string[];
  /** Called when the stream is live, after every (re)connect. */
  onReady?: () => void;
  /** Called when the subscription cannot continue (a bad filter, a rule that denies it all). */
  onError?: (error: EmberbaseError) => void;
}

/** The documents of one collection, typed by what they hold. */
export class Collection<T extends object = DocData> {
  constructor(
    private readonly transport: Transport,
    readonly name: string,
    private readonly realtime: Connection,
    /** The offline cache, and how it sends a write (a batch of one): both or neither. */
    private readonly offline: { cache: Offline; sendOne: (op: Record<string, unknown>) => Promise<Doc | null> } | null,
  ) {}

  private get path() {
    return { params: { path: { collection: this.name } } };
  }

  private doc(id: string) {
    return { params: { path: { collection: this.name, id } } };
  }

  /**
   * Creates a document with a new time-ordered id (made by the server, or here with the
   * offline cache on, so that a create queued offline keeps its id).
   */
  async create(data: T): Promise<Doc<T>> {
    if (this.offline) {
      const { cache, sendOne } = this.offline;
      const op = { op: "create" as const, collection: this.name, id: cache.newId(), data: data as DocData };
      return (await cache.write(op, () => sendOne(op))) as Doc<T>;
    }
    return this.transport.call((headers) =>
      this.transport.api.POST("/v1/collections/{collection}/docs", { ...this.path, body: data as never, headers }),
    ) as Promise<Doc<T>>;
  }

  /** Reads one document (`404 not_found` when absent). */
  get(id: string, options: GetOptions = {}): Promise<Doc<T>> {
    const query = { expand: options.expand?.join(",") };
    const read = () =>
      this.transport.call((headers) =>
        this.transport.api.GET("/v1/collections/{collection}/docs/{id}", {
          params: { path: { collection: this.name, id }, query },
          headers,
        }),
      ) as Promise<Doc<T>>;
    return this.offline ? (this.offline.cache.get(this.name, id, read as () => Promise<Doc>) as Promise<Doc<T>>) : read();
  }

  /** Creates or replaces a document under an id of your choosing. */
  set(id: string, data: T, options: WriteOptions = {}): Promise<Doc<T>> {
    const send = () =>
      this.transport.call((headers) =>
        this.transport.api.PUT("/v1/collections/{collection}/docs/{id}", {
          ...this.doc(id),
          body: data as never,
          headers: withVersion(headers, options),
        }),
      ) as Promise<Doc<T>>;
    return this.queued({ op: "set", id, data: data as DocData, ifVersion: options.ifVersion }, send);
  }

  /** Merges a patch into a document (`404` when absent). */
  update(id: string, patch: Patch<T>, options: WriteOptions = {}): Promise<Doc<T>> {
    const send = () =>
      this.transport.call((headers) =>
        this.transport.api.PATCH("/v1/collections/{collection}/docs/{id}", {
          ...this.doc(id),
          body: patch as never,
          headers: withVersion(headers, options),
        }),
      ) as Promise<Doc<T>>;
    return this.queued({ op: "update", id, data: patch as DocData, ifVersion: options.ifVersion }, send);
  }

  /**
   * Applies atomic field transforms to a document, after an optional merge patch:
   * `posts.transform(id, { likes: increment(1), seen_at: serverTime() })`. The update rule and
   * the schema see the result.
   */
  transform(id: string, transforms: Transforms<T>, options: WriteOptions & { patch?: Patch<T> } = {}): Promise<Doc<T>> {
    const send = () =>
      this.transport.call((headers) =>
        this.transport.api.PATCH("/v1/collections/{collection}/docs/{id}", {
          ...this.doc(id),
          body: { data: options.patch, transforms } as never,
          headers: { ...withVersion(headers, options), "Content-Type": TRANSFORM_UPDATE },
        }),
      ) as Promise<Doc<T>>;
    const write = { op: "update" as const, id, data: options.patch as DocData | undefined, transforms, ifVersion: options.ifVersion };
    return this.queued(write, send);
  }

  /** Deletes a document (`404` when absent). */
  async delete(id: string, options: WriteOptions = {}): Promise<void> {
    const send = async () => {
      await this.transport.call((headers) =>
        this.transport.api.DELETE("/v1/collections/{collection}/docs/{id}", {
          ...this.doc(id),
          headers: withVersion(headers, options),
          parseAs: "text",
        }),
      );
      return null;
    };
    await this.queued({ op: "delete", id, ifVersion: options.ifVersion }, send);
  }

  /** A write: through the offline cache when it is on (queued while the server is away). */
  private queued<R extends Doc<T> | null>(
    write: { op: WriteKind; id: string; data?: DocData; transforms?: Transforms<T>; ifVersion?: number },
    send: () => Promise<R>,
  ): Promise<R> {
    if (!this.offline) return send();
    const local = { ...write, collection: this.name, transforms: write.transforms as Record<string, Transform> | undefined };
    return this.offline.cache.write(local, send as () => Promise<Doc | null>) as Promise<R>;
  }

  /** One page of the documents that match and that you may read. */
  list(options: ListOptions = {}): Promise<Page<T>> {
    const read = () => this.listFromServer(options);
    return this.offline ? (this.offline.cache.list(this.name, options, read as () => Promise<Page>) as Promise<Page<T>>) : read();
  }

  private listFromServer(options: ListOptions): Promise<Page<T>> {
    const query = {
      filter: options.filter,
      sort: options.sort,
      limit: options.limit === undefined ? undefined : String(options.limit),
      cursor: options.cursor ?? undefined,
      count: options.count ? "true" : undefined,
      expand: options.expand?.join(","),
    };
    return this.transport.call((headers) =>
      this.transport.api.GET("/v1/collections/{collection}/docs", {
        params: { path: { collection: this.name }, query },
        headers,
      }),
    ) as Promise<Page<T>>;
  }

  /** How many documents match `filter` (all by default) and you may read. */
  async count(filter?: string): Promise<number> {
    const [group] = await this.aggregate({ filter, ops: ["count"] });
    return group?.values.count ?? 0;
  }

  /**
   * Counts, sums, averages, minima and maxima over the documents that match and you may read,
   * in groups: `orders.aggregate({ groupBy: ["data.country"], ops: ["count", "sum:data.total"] })`.
   */
  async aggregate<O extends AggregateOp = "count">(options: AggregateOptions<O> = {}): Promise<AggregateGroup<O>[]> {
    const query = {
      filter: options.filter,
      group_by: options.groupBy?.join(","),
      ops: options.ops?.join(","),
    };
    const result = (await this.transport.call((headers) =>
      this.transport.api.GET("/v1/collections/{collection}/aggregate", {
        params: { path: { collection: this.name }, query },
        headers,
      }),
    )) as { groups: AggregateGroup<O>[] };
    return result.groups;
  }

  /**
   * Every matching document, page after page: `for await (const doc of posts.iterate())`. Each
   * document comes once, in order, even while others are written.
   */
  async *iterate(options: Omit<ListOptions, "cursor"> = {}): AsyncGenerator<Doc<T>> {
    let cursor: string | null = null;
    do {
      const page: Page<T> = await this.list({ ...options, cursor });
      yield* page.items;
      cursor = page.next_cursor;
    } while (cursor);
  }

  [Symbol.asyncIterator](): AsyncGenerator<Doc<T>> {
    return this.iterate();
  }

  /**
   * Calls `listener` for every change you may read, live, until the returned function is called.
   * Reconnects by itself and resumes where it left off.
   */
  subscribe(listener: (event: ChangeEvent<T>) => void, options: SubscribeOptions = {}): () => void {
    const topics = options.ids?.length ? options.ids.map((id) => `${this.name}/${id}`) : [this.name];
    // With the offline cache, writes made here are heard at once, and the server's events for
    // a document with writes still queued wait until the cache settles it.
    const offline = this.offline?.cache;
    const stopLocal = offline?.watch(this.name, options.filter, options.ids, listener as (e: ChangeEvent) => void);
    const stop = this.realtime.add(
      { subscribe: topics.join(","), filter: options.filter },
      {
        event: (type, data, seq) => {
          if (type === "reset") listener({ type: "reset", seq });
          else if (type === "create" || type === "update" || type === "delete") {
            const { id, doc } = data as { id: string; doc: Doc<T> };
            if (!offline?.hasPending(this.name, id)) listener({ type, id, doc, seq });
          }
        },
        ready: () => options.onReady?.(),
        fatal: (error) => {
          if (options.onError) options.onError(error);
          else console.error(`emberbase: subscription to ${this.name} ended:`, error);
        },
      },
    );
    return () => {
      stop();
      stopLocal?.();
    };
  }
}

function withVersion(headers: Headers, options: WriteOptions): Headers {
  return options.ifVersion === undefined ? headers : { ...headers, "If-Match": `"${options.ifVersion}"` };
}
