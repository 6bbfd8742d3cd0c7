import { EmberbaseError, MfaRequiredError } from "./errors.js";
import type { components } from "./generated/schema.js";
import { Transport, type TokenSource } from "./http.js";
import type { StoredSession, TokenStore, User } from "./storage.js";

type Session = components["schemas"]["Session"];
type LoginResult = components["schemas"]["LoginResult"];
type TotpEnrollment = components["schemas"]["TotpEnrollment"];
/** A sign-in provider the server offers (`auth.providers()`). */
export type SignInProvider = components["schemas"]["SignInProvider"];

/** Where a redirect sign-in keeps its PKCE verifier between leaving the page and coming back. */
const VERIFIER_KEY = "emberbase.oauth.verifier";

/** Options of a redirect to a provider. */
export interface OAuthRedirectOptions {
  /** Where the browser comes back to (one the server allows for the provider). */
  redirectUrl: string;
  /**
   * Whether to send the browser there now (the default where there is a `window`). Without it,
   * open `url` yourself (a React Native web view, a system browser) and keep `verifier` for
   * `exchangeCode`.
   */
  redirect?: boolean;
}

/** A PKCE verifier (43 characters) and its S256 challenge. */
async function pkcePair(): Promise<{ verifier: string; challenge: string }> {
  const bytes = new Uint8Array(32);
  globalThis.crypto.getRandomValues(bytes);
  const verifier = base64url(bytes);
  const digest = await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return { verifier, challenge: base64url(new Uint8Array(digest)) };
}

function base64url(bytes: Uint8Array): string {
  let text = "";
  bytes.forEach((b) => (text += String.fromCharCode(b)));
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The browser's session storage, where there is one. */
function sessionStore(): Storage | null {
  try {
    return (globalThis as { sessionStorage?: Storage }).sessionStorage ?? null;
  } catch {
    return null;
  }
}

function navigate(url: string, redirect: boolean | undefined): void {
  const location = (globalThis as { location?: Location }).location;
  if ((redirect ?? true) && location && typeof location.assign === "function") location.assign(url);
}

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

  /** The sign-in providers the server offers, for sign-in buttons. */
  async providers(): Promise<SignInProvider[]> {
    const response = await this.transport.anonymous("/v1/auth/oauth/providers", { method: "GET" });
    if (!response.ok) throw await EmberbaseError.fromResponse(response);
    return (await response.json()) as SignInProvider[];
  }

  /**
   * Starts signing in with a provider (`google`, `github`... as the server names them): sends
   * the browser to it, with a PKCE challenge whose verifier waits in session storage. The
   * browser comes back to `redirectUrl` with a one-time code; call `exchangeCode()` there.
   * Resolves to the URL and the verifier, for apps that open the URL themselves.
   */
  async signInWithOAuth(provider: string, options: OAuthRedirectOptions): Promise<{ url: string; verifier: string }> {
    const { verifier, challenge } = await pkcePair();
    const query = new URLSearchParams({ redirect_url: options.redirectUrl, code_challenge: challenge });
    const url = this.transport.url(`/v1/auth/oauth/${encodeURIComponent(provider)}/authorize?${query}`);
    sessionStore()?.setItem(VERIFIER_KEY, verifier);
    navigate(url, options.redirect);
    return { url, verifier };
  }

  /**
   * Finishes a redirect sign-in: exchanges the `code` the browser came back with (read from
   * the page's URL when not given) and the stored verifier for a session. Rejects with the
   * provider's or the server's `error` when the URL carries one, and with a `MfaRequiredError`
   * when the account has two-factor authentication on.
   */
  async exchangeCode(code?: string, verifier?: string): Promise<User> {
    const params = new URLSearchParams((globalThis as { location?: Location }).location?.search ?? "");
    const error = params.get("error");
    if (!code && error) {
      throw new EmberbaseError(401, error, params.get("error_description") ?? error);
    }
    const found = code ?? params.get("code");
    if (!found) throw new EmberbaseError(400, "bad_request", "no code to exchange: the URL has none");
    const store = sessionStore();
    const proof = verifier ?? store?.getItem(VERIFIER_KEY) ?? undefined;
    store?.removeItem(VERIFIER_KEY);
    return this.start("/v1/auth/oauth/exchange", proof ? { code: found, code_verifier: proof } : { code: found });
  }

  /**
   * Signs in with an ID token from a provider's platform SDK (Sign in with Apple, Google
   * Sign-In...), with the nonce given to that SDK if there was one.
   */
  async signInWithIdToken(provider: string, idToken: string, nonce?: string): Promise<User> {
    const body = nonce ? { id_token: idToken, nonce } : { id_token: idToken };
    return this.start(`/v1/auth/oauth/${encodeURIComponent(provider)}/token`, body);
  }

  /**
   * Links a provider to the signed-in account: with `redirectUrl`, through the provider's page
   * (the browser comes back with `?linked=<provider>`, or `?error=`); with `idToken`, at once,
   * resolving to the user. An anonymous account linked this way keeps its id and data.
   */
  async linkIdentity(
    provider: string,
    how: OAuthRedirectOptions | { idToken: string; nonce?: string },
  ): Promise<{ url: string } | User> {
    if ("idToken" in how) {
      const body = how.nonce ? { id_token: how.idToken, nonce: how.nonce } : { id_token: how.idToken };
      const user = await this.transport.call<User>((headers) =>
        this.transport.api.POST("/v1/auth/identities/{provider}", { headers, params: { path: { provider } }, body }),
      );
      if (this.current) await this.replace({ ...this.current, user });
      return user;
    }
    const started = await this.transport.call((headers) =>
      this.transport.api.POST("/v1/auth/identities/{provider}/authorize", {
        headers,
        params: { path: { provider } },
        body: { redirect_url: how.redirectUrl },
      }),
    );
    navigate(started.authorize_url, how.redirect);
    return { url: started.authorize_url };
  }

  /** Unlinks the signed-in account's identity of `provider`; resolves to the user. */
  async unlinkIdentity(provider: string): Promise<User> {
    const user = await this.transport.call<User>((headers) =>
      this.transport.api.DELETE("/v1/auth/identities/{provider}", {
        headers,
        params: { path: { provider } },
      }),
    );
    if (this.current) await this.replace({ ...this.current, user });
    return user;
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
