import type { components } from "./generated/schema.js";

export type User = components["schemas"]["User"];

/** A signed-in session as the SDK keeps it. */
export interface StoredSession {
  access_token: string;
  refresh_token: string;
  /** When the access token expires, in milliseconds since the epoch. */
  expires_at: number;
  /** The access token's lifetime in seconds, as the server gave it. */
  expires_in: number;
  user: User;
}

/**
 * Where sessions live between calls (and page loads). Methods may be async, so a store can wrap
 * React Native's AsyncStorage or a secure keychain.
 */
export interface TokenStore {
  get(): StoredSession | null | Promise<StoredSession | null>;
  set(session: StoredSession | null): void | Promise<void>;
}

/** Keeps the session in memory only: signed out when the process or page ends. The default. */
export class MemoryStore implements TokenStore {
  private session: StoredSession | null = null;
  get(): StoredSession | null {
    return this.session;
  }
  set(session: StoredSession | null): void {
    this.session = session;
  }
}

/** Keeps the session in `localStorage` (browsers), shared by every tab of the origin. */
export class LocalStorageStore implements TokenStore {
  constructor(private readonly key = "emberbase.session") {}
  get(): StoredSession | null {
    const raw = globalThis.localStorage?.getItem(this.key);
    if (!raw) return null;
    try {
      return JSON.parse(raw) as StoredSession;
    } catch {
      return null;
    }
  }
  set(session: StoredSession | null): void {
    if (session) globalThis.localStorage?.setItem(this.key, JSON.stringify(session));
    else globalThis.localStorage?.removeItem(this.key);
  }
}
