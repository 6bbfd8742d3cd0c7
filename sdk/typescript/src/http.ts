import createClient, { type Client } from "openapi-fetch";
import { EmberbaseError } from "./errors.js";
import type { paths } from "./generated/schema.js";

/** What the transport needs from the auth layer. */
export interface TokenSource {
  /** A valid access token (refreshed first when it is about to expire), or null. */
  token(): Promise<string | null>;
  /** The server refused `rejected`: renew the session once; false when there is none left. */
  renew(rejected: string): Promise<boolean>;
}

/** The `{data, error, response}` of an openapi-fetch call. */
interface Outcome<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

export type Headers = Record<string, string>;

/** The generated, typed client (openapi-fetch over the OpenAPI document) plus auth. */
export class Transport {
  readonly baseUrl: string;
  readonly api: Client<paths>;
  private readonly fetchImpl: typeof fetch;
  tokens: TokenSource | null = null;

  constructor(baseUrl: string, fetchImpl?: typeof fetch) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    // Bound late, so a test or app that swaps globalThis.fetch after creating the client wins.
    this.fetchImpl = fetchImpl ?? ((input, init) => globalThis.fetch(input, init));
    this.api = createClient<paths>({ baseUrl: this.baseUrl, fetch: (request) => this.fetchImpl(request) });
  }

  /** The `Authorization` header for a token. */
  static bearer(token: string | null): Headers {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  /**
   * Runs a typed call with the caller's token. When the server answers 401 the session is renewed
   * once (shared with every concurrent call) and the call is repeated.
   */
  async call<T>(run: (headers: Headers) => Promise<Outcome<T>>): Promise<T> {
    const outcome = await this.withToken((headers) => run(headers).catch(rethrowNetwork), (o) => o.response.status);
    if (outcome.error !== undefined || !outcome.response.ok) {
      throw EmberbaseError.fromBody(outcome.response.status, outcome.error);
    }
    return outcome.data as T;
  }

  /** An untyped request with the caller's token and the same renewal; returns a 2xx response. */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const response = await this.withToken(
      (headers) =>
        this.fetchImpl(this.url(path), { ...init, headers: { ...(init.headers as Headers), ...headers } }).catch(
          rethrowNetwork,
        ),
      (r) => r.status,
    );
    if (!response.ok) throw await EmberbaseError.fromResponse(response);
    return response;
  }

  /**
   * Sends a body through XMLHttpRequest, which reports upload progress (fetch cannot), with the
   * caller's token and the same renewal; returns a 2xx answer's text.
   */
  async sendWithProgress(
    method: string,
    path: string,
    headers: Headers,
    body: XMLHttpRequestBodyInit,
    progress: (sent: number, total: number) => void,
  ): Promise<string> {
    const attempt = (auth: Headers) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open(method, this.url(path));
        for (const [name, value] of Object.entries({ ...headers, ...auth })) xhr.setRequestHeader(name, value);
        xhr.upload.onprogress = (e) => progress(e.loaded, e.total);
        xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
        xhr.onerror = () => reject(EmberbaseError.network(new Error(`${method} ${path}: the server could not be reached`)));
        xhr.send(body);
      });
    const outcome = await this.withToken(attempt, (o) => o.status);
    if (outcome.status < 200 || outcome.status >= 300) {
      let parsed: unknown = outcome.text;
      try {
        parsed = JSON.parse(outcome.text);
      } catch {
        // Not the API's error shape: keep the text.
      }
      throw EmberbaseError.fromBody(outcome.status, parsed);
    }
    return outcome.text;
  }

  /** A request that carries no token (sign-up, login, refresh). */
  async anonymous(path: string, init: RequestInit = {}): Promise<Response> {
    return this.fetchImpl(this.url(path), init).catch(rethrowNetwork);
  }

  url(path: string): string {
    return /^https?:/.test(path) ? path : `${this.baseUrl}${path}`;
  }

  private async withToken<R>(run: (headers: Headers) => Promise<R>, status: (r: R) => number): Promise<R> {
    const token = (await this.tokens?.token()) ?? null;
    const first = await run(Transport.bearer(token));
    if (status(first) !== 401 || !token || !this.tokens) return first;
    if (!(await this.tokens.renew(token))) return first;
    return run(Transport.bearer(await this.tokens.token()));
  }
}

function rethrowNetwork(e: unknown): never {
  throw EmberbaseError.network(e);
}

/** `a/b c.png` → `a/b%20c.png`: each segment encoded, the slashes kept. */
export function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}
