/** Every failure the SDK reports: an error status from the server, or no answer at all. */
export class EmberbaseError extends Error {
  /** The HTTP status, or 0 when the request never got an answer (network, abort). */
  readonly status: number;
  /** The stable error code (`not_found`, `forbidden`, ...), or `network_error`. */
  readonly code: string;
  /** Extra facts the server gave, such as the failing field or batch op. */
  readonly details: Record<string, unknown>;

  constructor(status: number, code: string, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = "EmberbaseError";
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** Builds the error from a response and its parsed body (`{"error": {...}}` when it is ours). */
  static fromBody(status: number, body: unknown): EmberbaseError {
    const error = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } } | null)?.error;
    if (error && typeof error.code === "string") {
      const message = typeof error.message === "string" ? error.message : error.code;
      const details = error.details && typeof error.details === "object" ? (error.details as Record<string, unknown>) : {};
      return new EmberbaseError(status, error.code, message, details);
    }
    const text = typeof body === "string" && body ? body : `HTTP ${status}`;
    return new EmberbaseError(status, `http_${status}`, text);
  }

  /** Reads a failed response's body and builds the error. */
  static async fromResponse(response: Response): Promise<EmberbaseError> {
    const text = await response.text().catch(() => "");
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // Not JSON: a proxy's page, or a function's own response.
    }
    return EmberbaseError.fromBody(response.status, body);
  }

  /** Wraps a failure to reach the server at all. */
  static network(cause: unknown): EmberbaseError {
    if (cause instanceof EmberbaseError) return cause;
    const message = cause instanceof Error ? cause.message : String(cause);
    return new EmberbaseError(0, "network_error", `cannot reach the server: ${message}`);
  }
}

/**
 * A right password for an account with two-factor authentication on: no session yet. Answer
 * the challenge with `auth.mfa.verify(error.mfaToken, { code })` (a code from the authenticator
 * app) or `{ recoveryCode }` within five minutes.
 */
export class MfaRequiredError extends EmberbaseError {
  /** The challenge to answer, once. */
  readonly mfaToken: string;
  /** What can answer it: `totp`, `recovery_code`. */
  readonly methods: string[];

  constructor(mfaToken: string, methods: string[]) {
    super(200, "mfa_required", "a second factor is required to sign in");
    this.name = "MfaRequiredError";
    this.mfaToken = mfaToken;
    this.methods = methods;
  }
}
