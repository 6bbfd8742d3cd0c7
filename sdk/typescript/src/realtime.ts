import { EmberbaseError } from "./errors.js";
import { Transport } from "./http.js";

/** One Server-Sent Event. */
export interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

/**
 * Splits an event stream into events (the WHATWG algorithm, minus what the server never sends).
 * Comments (heartbeats) are skipped; `retry:` values are reported through `onRetry`.
 */
export async function* readEvents(
  body: ReadableStream<Uint8Array>,
  onRetry: (ms: number) => void = () => {},
): AsyncGenerator<SseEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event: SseEvent = { event: "message", data: "" };
  let hasData = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (hasData || event.id !== undefined) yield event;
          event = { event: "message", data: "" };
          hasData = false;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") {
          event.data = hasData ? `${event.data}\n${value}` : value;
          hasData = true;
        } else if (field === "event") event.event = value;
        else if (field === "id") event.id = value;
        else if (field === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
      }
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => {});
  }
}

/** What a subscription delivers to its owner. */
export interface StreamHandlers {
  /** A change event (`create`, `update`, `delete`) or `reset`. */
  event(type: string, data: unknown, seq: number): void;
  /** Caught up and live (after every (re)connect). */
  ready(): void;
  /** A failure that ends the subscription for good (a bad topic, a rule that denies everything). */
  fatal(error: EmberbaseError): void;
}

/** What one subscription asks for: topics (`posts`, `posts/ID`) and an optional filter. */
export interface SubscriptionSpec {
  subscribe: string;
  filter?: string;
}

/** Where the offline cache meets the stream: it keeps the resume position and every change. */
export interface StreamCache {
  /** The id of the last event the cache holds, to resume from after a reload. */
  resumePosition(): Promise<string | null>;
  /** The stream is open: the server is reachable. */
  connected(): void;
  /** An event, before any subscriber hears of it. */
  received(type: string, data: unknown, id: string | undefined): void;
}

interface Entry {
  spec: SubscriptionSpec;
  handlers: StreamHandlers;
  /** Whether the server holds it on the current connection. */
  held: boolean;
}

const MAX_BACKOFF_MS = 30_000;

/**
 * One realtime connection for every subscription of a client: each `subscribe` becomes a named
 * subscription on the same stream, added and removed without reconnecting (browsers allow six
 * HTTP/1.1 connections per origin). It reconnects after drops with `Last-Event-ID`, sending every
 * subscription it holds, so that each resumes exactly where it left off; refreshes an expired
 * token; and backs off while the server is away. Read through `fetch`, so it works in Node and
 * sends the token in a header, never in the URL. Opened by the first subscription, closed after
 * the last.
 */
export class Connection {
  private readonly entries = new Map<string, Entry>();
  private abort: AbortController | null = null;
  private connection: string | null = null;
  private lastEventId: string | null = null;
  private retryMs = 2000;
  private failures = 0;
  private next = 0;
  /**
   * After the server refused a connect that carried several subscriptions: the next connect
   * carries none, and each is asked for on its own, so only the refused one fails.
   */
  private isolating = false;

  constructor(
    private readonly transport: Transport,
    private readonly cache: StreamCache | null = null,
  ) {}

  /** Adds a subscription; returns what removes it. */
  add(spec: SubscriptionSpec, handlers: StreamHandlers): () => void {
    const name = `s${++this.next}`;
    this.entries.set(name, { spec, handlers, held: false });
    if (!this.abort) {
      const abort = new AbortController();
      this.abort = abort;
      void this.run(abort);
    } else if (this.connection) {
      void this.hold(this.connection, name);
    }
    return () => this.remove(name);
  }

  /** Forgets a subscription; closes the connection after the last. Returns whether it stays open. */
  private forget(name: string): boolean {
    this.entries.delete(name);
    if (this.entries.size > 0) return true;
    this.abort?.abort();
    this.abort = null;
    this.connection = null;
    this.lastEventId = null;
    return false;
  }

  private remove(name: string): void {
    const entry = this.entries.get(name);
    if (!entry || !this.forget(name)) return;
    if (entry.held && this.connection) {
      const connection = this.connection;
      void this.transport
        .call((headers) =>
          this.transport.api.DELETE("/v1/realtime/connection/{connection}/subscriptions/{name}", {
            params: { path: { connection, name } },
            headers,
          }),
        )
        .catch(() => {});
    }
  }

  /** Asks the server to hold subscription `name` on the open connection. */
  private async hold(connection: string, name: string): Promise<void> {
    const entry = this.entries.get(name);
    if (!entry || entry.held) return;
    entry.held = true;
    try {
      await this.transport.call((headers) =>
        this.transport.api.PUT("/v1/realtime/connection/{connection}/subscriptions/{name}", {
          params: { path: { connection, name } },
          body: { subscribe: entry.spec.subscribe, filter: entry.spec.filter ?? null },
          headers,
        }),
      );
    } catch (e) {
      const error = EmberbaseError.network(e);
      if (this.connection !== connection || !this.entries.has(name)) return;
      if (error.status >= 400 && error.status < 500 && error.status !== 404 && error.status !== 429) {
        this.forget(name);
        entry.handlers.fatal(error);
      } else {
        // The connection went away meanwhile: the reconnect sends this subscription.
        entry.held = false;
      }
    }
  }

  private async run(abort: AbortController): Promise<void> {
    // Subscriptions added in the same turn go with the first connect; with the offline cache,
    // it resumes where the last page (or process) stopped.
    const position = await this.cache?.resumePosition();
    this.lastEventId ??= position ?? null;
    while (!abort.signal.aborted) {
      let delay = 0;
      try {
        delay = await this.connectOnce(abort);
      } catch (e) {
        if (abort.signal.aborted) return;
        const error = EmberbaseError.network(e);
        if (error.status >= 400 && error.status < 500 && error.status !== 429) {
          const held = [...this.entries].filter(([, e]) => e.held);
          if (held.length > 1) {
            // One of several subscriptions is refused now (a rule changed while away): ask
            // for each on its own. What they missed cannot be replayed that way: `reset`.
            this.isolating = true;
            for (const [, entry] of held) {
              entry.held = false;
              if (this.lastEventId !== null) entry.handlers.event("reset", null, Number(this.lastEventId) || 0);
            }
          } else {
            for (const [name, entry] of held) {
              this.forget(name);
              entry.handlers.fatal(error);
            }
          }
          this.lastEventId = null;
          continue;
        }
        this.failures += 1;
        delay = Math.min(MAX_BACKOFF_MS, this.retryMs * 2 ** Math.min(this.failures - 1, 6));
        delay *= 0.8 + Math.random() * 0.4;
      }
      this.connection = null;
      if (delay > 0) await sleep(delay, abort.signal);
    }
  }

  /** One connection, read to its end; returns how long to wait before the next. */
  private async connectOnce(abort: AbortController): Promise<number> {
    if (!this.isolating) for (const entry of this.entries.values()) entry.held = true;
    this.isolating = false;
    const held = [...this.entries].filter(([, e]) => e.held);
    const subscriptions = held.map(([name, e]) => ({ name, subscribe: e.spec.subscribe, filter: e.spec.filter }));
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    const query = new URLSearchParams({ subscriptions: JSON.stringify(subscriptions) });
    const response = await this.transport.fetch(`/v1/realtime/connection?${query}`, {
      headers,
      signal: abort.signal,
      cache: "no-store",
    });
    if (!response.body) throw new EmberbaseError(0, "network_error", "the event stream has no body");
    let reason: string | null = null;
    for await (const e of readEvents(response.body, (ms) => (this.retryMs = ms))) {
      if (e.id !== undefined) this.lastEventId = e.id;
      const data = (e.data ? JSON.parse(e.data) : null) as Record<string, unknown> | null;
      if (e.id !== undefined || e.event === "reset") this.cache?.received(e.event, data, e.id);
      if (e.event === "connected") {
        const connection = String(data?.connection ?? "");
        this.connection = connection;
        this.cache?.connected();
        // Subscriptions added while connecting are asked for now.
        for (const [name, entry] of this.entries) if (!entry.held) void this.hold(connection, name);
      } else if (e.event === "ready") {
        this.failures = 0;
        for (const [name, entry] of this.entries) if (held.some(([n]) => n === name)) entry.handlers.ready();
      } else if (e.event === "subscribed") {
        this.entries.get(String(data?.subscription))?.handlers.ready();
      } else if (e.event === "close") {
        reason = (data as { reason?: string } | null)?.reason ?? "close";
      } else if (e.event === "reset") {
        for (const entry of this.entries.values()) if (entry.held) entry.handlers.event("reset", data, Number(e.id ?? 0));
      } else if (Array.isArray(data?.subscriptions)) {
        for (const name of data.subscriptions as string[]) {
          this.entries.get(name)?.handlers.event(e.event, data, Number(e.id ?? 0));
        }
      }
    }
    this.connection = null;
    // `expired`: the next connect refreshes the token first. `overflow`: resume at once.
    if (reason === "expired" || reason === "overflow") return 0;
    return this.retryMs;
  }
}

/** Waits `ms`, or less when aborted or when the browser says the network is back. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      globalThis.removeEventListener?.("online", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    globalThis.addEventListener?.("online", done);
  });
}
