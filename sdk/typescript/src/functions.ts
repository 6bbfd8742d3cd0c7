import { Transport } from "./http.js";

/** Functions with an `http` trigger. */
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
}
