import type { components } from "./generated/schema.js";
import { EmberbaseError } from "./errors.js";
import { Transport } from "./http.js";
import { readEvents } from "./realtime.js";

/** One run of a function, as its invocation log records it. */
export type Invocation = components["schemas"]["Invocation"];

/** How long to wait before following a function's log again after the stream ended. */
const FOLLOW_RETRY_MS = 2000;

/** Functions: `call` those with an `http` trigger; `follow` a function's runs (admins). */
export class Functions {
  constructor(private readonly transport: Transport) {}

  /**
   * Calls a function with a JSON body and returns what it answered: parsed JSON, or text.
   * A function that fails gives `EmberbaseError` 502 `function_failed`; one that answers an
   * error status of its own gives that status.
   */
  async call<R = unknown>(name: string, body: unknown = {}): Promise<R> {
    const response = await this.transport.fetch(`/v1/functions/${encodeURIComponent(name)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    const type = response.headers.get("Content-Type") ?? "";
    return (type.includes("json") && text ? JSON.parse(text) : text) as R;
  }

  /**
   * Calls `listener` with each new run of function `name` as it is recorded, whichever node ran
   * it (admins only), until the returned function is called. Reconnects by itself after the
   * last run it saw; `onError` hears a refusal (no such function, not an admin), which ends it.
   */
  follow(
    name: string,
    listener: (run: Invocation) => void,
    options: { onReady?: () => void; onError?: (error: EmberbaseError) => void } = {},
  ): () => void {
    const abort = new AbortController();
    let last: string | undefined;
    const run = async () => {
      while (!abort.signal.aborted) {
        try {
          const response = await this.transport.fetch(`/v1/admin/functions/${encodeURIComponent(name)}/logs`, {
            headers: { Accept: "text/event-stream", ...(last ? { "Last-Event-ID": last } : {}) },
            signal: abort.signal,
            cache: "no-store",
          });
          if (!response.body) throw new EmberbaseError(0, "network_error", "the log stream has no body");
          options.onReady?.();
          for await (const event of readEvents(response.body)) {
            if (event.event !== "invocation") continue;
            last = event.id ?? last;
            listener(JSON.parse(event.data) as Invocation);
          }
        } catch (e) {
          if (abort.signal.aborted) return;
          const error = EmberbaseError.network(e);
          if (error.status >= 400 && error.status < 500 && error.status !== 429) {
            options.onError?.(error);
            return;
          }
        }
        await new Promise((resolve) => setTimeout(resolve, FOLLOW_RETRY_MS));
      }
    };
    void run();
    return () => abort.abort();
  }
}
