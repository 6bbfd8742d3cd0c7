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

/** What a stream delivers to its owner. */
export interface StreamHandlers {
  /** A change event (`create`, `update`, `delete`) or `reset`. */
  event(type: string, data: unknown, seq: number): void;
  /** Caught up and live (after every (re)connect). */
  ready(): void;
  /** A failure that ends the stream for good (a bad topic, a rule that denies everything). */
  fatal(error: EmberbaseError): void;
}

const MAX_BACKOFF_MS = 30_000;

/**
 * A subscription that stays open: it reconnects after drops with `Last-Event-ID` (so nothing is
 * missed within the server's retention window), refreshes an expired token, and backs off while
 * the server is away. Read through `fetch`, so it works in Node (which has no `EventSource`) and
 * sends the token in a header, never in the URL.
 */
export class Stream {
  private readonly abort = new AbortController();
  private lastEventId: string | null = null;
  private retryMs = 2000;
  private failures = 0;

  constructor(
    private readonly transport: Transport,
    private readonly query: string,
    private readonly handlers: StreamHandlers,
  ) {
    void this.run();
  }

  /** Stops for good. */
  close(): void {
    this.abort.abort();
  }

  private get closed(): boolean {
    return this.abort.signal.aborted;
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      let delay = 0;
      try {
        delay = await this.connectOnce();
      } catch (e) {
        if (this.closed) return;
        const error = EmberbaseError.network(e);
        if (error.status >= 400 && error.status < 500 && error.status !== 429) {
          this.handlers.fatal(error);
          return;
        }
        this.failures += 1;
        delay = Math.min(MAX_BACKOFF_MS, this.retryMs * 2 ** Math.min(this.failures - 1, 6));
        delay *= 0.8 + Math.random() * 0.4;
      }
      if (delay > 0) await sleep(delay, this.abort.signal);
    }
  }

  /** One connection, read to its end; returns how long to wait before the next. */
  private async connectOnce(): Promise<number> {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    const response = await this.transport.fetch(`/v1/realtime?${this.query}`, {
      headers,
      signal: this.abort.signal,
      cache: "no-store",
    });
    if (!response.body) throw new EmberbaseError(0, "network_error", "the event stream has no body");
    let reason: string | null = null;
    for await (const e of readEvents(response.body, (ms) => (this.retryMs = ms))) {
      if (e.id !== undefined) this.lastEventId = e.id;
      const data: unknown = e.data ? JSON.parse(e.data) : null;
      if (e.event === "ready") {
        this.failures = 0;
        this.handlers.ready();
      } else if (e.event === "close") {
        reason = (data as { reason?: string } | null)?.reason ?? "close";
      } else {
        this.handlers.event(e.event, data, Number(e.id ?? 0));
      }
    }
    // `expired`: the next connect refreshes the token first. `overflow`: resume at once.
    if (reason === "expired" || reason === "overflow") return 0;
    return this.retryMs;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}
