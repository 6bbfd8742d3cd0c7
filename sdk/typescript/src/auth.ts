import { EmberbaseError, MfaRequiredError } from "./errors.js";
import type { components } from "./generated/schema.js";
import { Transport, type TokenSource } from "./http.js";
import type { StoredSession, TokenStore, User } from "./storage.js";

type Session = components["schemas"]["Session"];
type LoginResult = components["schemas"]["LoginResult"];
type TotpEnrollment = components["schemas"]["TotpEnrollment"];

/** What answers a second-factor check: a code from the authenticator app, or a recovery code. */
export type MfaAnswer = { code: string } | { recoveryCode: string };

function answerBody(answer: MfaAnswer): { code?: string; recovery_code?: string } {
  return "code" in answer ? { code: answer.code } : { recovery_code: answer.recoveryCode };
}

/** Refresh this long before the access token expires (at most half its lifetime). */
const DEFAULT_MARGIN_MS = 30_000;

/**
 * Accounts and the session: sign-up, login, logout, the current user, and access tokens that are
 * refreshed before they expire. Concurrent calls share one refresh: a refresh token is single
 * use, and presenting a rotated one revokes the whole login, so two refreshes in flight would
 * sign the user out. Across browser tabs the refresh also holds a Web Lock when the browser
 * has them, and adopts a session another tab already refreshed.
 */
export class Auth implements TokenSource {
  private current: StoredSession | null = null;
  private loading: Promise<void> | null = null;
  private refreshing: Promise<StoredSession | null> | null = null;
  private readonly listeners = new Set<(user: User | null) => void>();

  constructor(
    private readonly transport: Transport,
    private readonly store: TokenStore,
    private readonly marginMs = DEFAULT_MARGIN_MS,
  ) {}

  /** The signed-in user as last known, or null (call `ready()` first after a page load). */
  get user(): User | null {
    return this.current?.user ?? null;
  }

  /** Loads the stored session; resolves to the signed-in user or null. */
  async ready(): Promise<User | null> {
    this.loading ??= Promise.resolve(this.store.get()).then((session) => {
      this.current ??= session;
    });
    await this.loading;
    return this.user;
  }

  /**
   * Creates an account and signs in. `profile` is what the app keeps about the user (a display
   * name, an avatar URL...): any JSON object of at most 4 KiB, which rules read as `auth.profile`.
   */
  async signup(email: string, password: string, profile?: Record<string, unknown>): Promise<User> {
    return this.start("/v1/auth/signup", profile ? { email, password, profile } : { email, password });
  }

  /**
   * Signs in with email and password. For an account with two-factor authentication on, it
   * rejects with a `MfaRequiredError`, whose `mfaToken` `mfa.verify` takes with a code.
   */
  async login(email: string, password: string): Promise<User> {
    return this.start("/v1/auth/login", { email, password });
  }

  /** Two-factor authentication with an authenticator app (TOTP). */
  readonly mfa = {
    /**
     * Starts enrolling the signed-in user: the secret, an `otpauth://` URI and a QR code (SVG)
     * to show. Nothing changes at sign-in until `confirm` succeeds.
     */
    enroll: (): Promise<TotpEnrollment> =>
      this.transport.call<TotpEnrollment>((headers) => this.transport.api.POST("/v1/auth/mfa/totp/enroll", { headers })),
    /** Turns it on with a first code from the app; resolves to the recovery codes, shown this once. */
    confirm: async (code: string): Promise<string[]> => {
      const result = await this.transport.call((headers) =>
        this.transport.api.POST("/v1/auth/mfa/totp/confirm", { headers, body: { code } }),
      );
      return result.recovery_codes;
    },
    /** Turns it off, proved with a current code or a recovery code. */
    disable: (answer: MfaAnswer): Promise<void> =>
      this.transport.call((headers) => this.transport.api.DELETE("/v1/auth/mfa/totp", { headers, body: answerBody(answer) })),
    /** Answers the challenge of a `MfaRequiredError` and signs in. */
    verify: async (mfaToken: string, answer: MfaAnswer): Promise<User> => {
      await this.ready();
      const response = await this.transport.anonymous("/v1/auth/mfa/verify", json({ mfa_token: mfaToken, ...answerBody(answer) }));
      if (!response.ok) throw await EmberbaseError.fromResponse(response);
      const session = stored_(await response.json());
      await this.replace(session);
      return session.user;
    },
  };

  /**
   * Starts an anonymous account (no address; rules see `auth.anonymous`) and signs in. `upgrade`
   * (or `verifyOtp` while signed in as it) gives it an address, keeping its id and data.
   */
  async signInAnonymously(): Promise<User> {
    await this.ready();
    const response = await this.transport.anonymous("/v1/auth/anonymous", { method: "POST" });
    if (!response.ok) throw await EmberbaseError.fromResponse(response);
    const session = stored_(await response.json());
    await this.replace(session);
    return session.user;
  }

  /** Gives the signed-in anonymous account an address and a password; the id stays. */
  async upgrade(email: string, password: string): Promise<User> {
    const user = await this.transport.call<User>((headers) =>
      this.transport.api.POST("/v1/auth/upgrade", { headers, body: { email, password } }),
    );
    if (this.current) await this.replace({ ...this.current, user });
    return user;
  }

  /**
   * Mails a sign-in code and link to `email` (an unknown address gets its account when it signs
   * in). The link goes to `redirectUrl` (one the server allows) with `?token=` added; pass that
   * token, or the code with the address, to `verifyOtp`. Resolves the same whether or not the
   * address has an account.
   */
  async sendMagicLink(email: string, options: { redirectUrl?: string } = {}): Promise<void> {
    const body = options.redirectUrl ? { email, redirect_url: options.redirectUrl } : { email };
    const response = await this.transport.anonymous("/v1/auth/passwordless/request", json(body));
    if (!response.ok) throw await EmberbaseError.fromResponse(response);
  }

  /**
   * Signs in with the 6-digit code of a sign-in mail (and its address) or the token of its
   * link; rejects with a `MfaRequiredError` when the account has two-factor authentication on.
   */
  async verifyOtp(proof: { email: string; code: string } | { token: string }): Promise<User> {
    // Signed in anonymously: the address becomes this account's (an upgrade, same id).
    const guest = this.user?.anonymous ? await this.token() : null;
    return this.start("/v1/auth/passwordless/verify", proof, guest);
  }

  /** Signs out: the server revokes this login's refresh token, and the stored session is removed. */
  async logout(): Promise<void> {
    await this.ready();
    const session = this.current;
    if (!session) return;
    try {
      await this.transport.fetch("/v1/auth/logout", json({ refresh_token: session.refresh_token }));
    } catch (e) {
      // Already revoked or expired: signed out either way. Anything else is worth reporting,
      // after the local session is gone.
      if (!(e instanceof EmberbaseError && e.status === 401)) {
        await this.replace(null);
        throw e;
      }
    }
    await this.replace(null);
  }

  /** The signed-in user, fresh from the server. */
  async me(): Promise<User> {
    const user = await this.transport.call<User>((headers) => this.transport.api.GET("/v1/auth/me", { headers }));
    if (this.current) await this.replace({ ...this.current, user });
    return user;
  }

  /**
   * Merges `patch` into the signed-in user's profile (a key set to null is removed) and
   * returns the user as it is now.
   */
  async updateProfile(patch: Record<string, unknown>): Promise<User> {
    const user = await this.transport.call<User>((headers) =>
      this.transport.api.PATCH("/v1/auth/me", { headers, body: { profile: patch } }),
    );
    if (this.current) await this.replace({ ...this.current, user });
    return user;
  }

  /**
   * Calls `listener` with the user now (once loaded) and whenever it changes: sign-in, sign-out,
   * or a session the server no longer accepts. Returns a function that stops the calls.
   */
  onChange(listener: (user: User | null) => void): () => void {
    this.listeners.add(listener);
    void this.ready().then((user) => {
      if (this.listeners.has(listener)) listener(user);
    });
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** A valid access token, refreshed first when it expires within the margin; null when signed out. */
  async token(): Promise<string | null> {
    await this.ready();
    const session = this.current;
    if (!session) return null;
    const margin = Math.min(this.marginMs, (session.expires_in * 1000) / 2);
    if (session.expires_at - Date.now() > margin) return session.access_token;
    const refreshed = await this.refresh();
    return refreshed?.access_token ?? null;
  }

  /** The server refused `rejected`: refresh unless someone already has. False when signed out. */
  async renew(rejected: string): Promise<boolean> {
    await this.ready();
    if (this.current && this.current.access_token !== rejected) return true;
    return (await this.refresh()) !== null;
  }

  /**
   * Rotates the session now. Every concurrent caller gets the same refresh. Resolves to null
   * (and signs out) when the server no longer accepts the refresh token.
   */
  refresh(): Promise<StoredSession | null> {
    this.refreshing ??= this.exclusive(() => this.rotate()).finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async rotate(): Promise<StoredSession | null> {
    const mine = this.current;
    // Another tab (sharing the store) may have rotated the token this tab holds.
    const stored = await this.store.get();
    if (stored && mine && stored.refresh_token !== mine.refresh_token && stored.expires_at > Date.now()) {
      this.current = stored;
      return stored;
    }
    const session = stored ?? mine;
    if (!session) return null;
    const response = await this.transport.anonymous("/v1/auth/refresh", json({ refresh_token: session.refresh_token }));
    if (response.status === 401) {
      await this.replace(null);
      return null;
    }
    if (!response.ok) throw await EmberbaseError.fromResponse(response);
    const next = stored_(await response.json());
    await this.replace(next);
    return next;
  }

  /** Runs `f` holding the cross-tab refresh lock where the platform has Web Locks. */
  private exclusive<T>(f: () => Promise<T>): Promise<T> {
    const locks = (globalThis.navigator as { locks?: LockManager } | undefined)?.locks;
    return locks ? (locks.request("emberbase.refresh", f) as Promise<T>) : f();
  }

  private async start(path: string, body: Record<string, unknown>, bearer: string | null = null): Promise<User> {
    await this.ready();
    const init = json(body);
    if (bearer) init.headers = { ...(init.headers as Record<string, string>), Authorization: `Bearer ${bearer}` };
    const response = await this.transport.anonymous(path, init);
    if (!response.ok) throw await EmberbaseError.fromResponse(response);
    const result = (await response.json()) as LoginResult;
    if ("mfa_required" in result) throw new MfaRequiredError(result.mfa_token, result.methods);
    const session = stored_(result);
    await this.replace(session);
    return session.user;
  }

  private async replace(session: StoredSession | null): Promise<void> {
    const before = this.current?.user.id ?? null;
    this.current = session;
    await this.store.set(session);
    const after = session?.user ?? null;
    if ((after?.id ?? null) !== before) this.listeners.forEach((l) => l(after));
  }
}

function stored_(session: Session): StoredSession {
  return {
    access_token: session.access_token,
    refresh_token: session.refresh_token,
    expires_in: session.expires_in,
    expires_at: Date.now() + session.expires_in * 1000,
    user: session.user,
  };
}

function json(body: unknown): RequestInit {
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}
