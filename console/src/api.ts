// The console's one client of the API: the TypeScript SDK, with the session kept in this
// browser's localStorage so that it survives a reload.
import { Emberbase, EmberbaseError, LocalStorageStore, type components } from "emberbase";

export type Schemas = components["schemas"];
export type Doc = Schemas["Document"];

export const eb = new Emberbase(location.origin, { storage: new LocalStorageStore("emberbase.console") });

/** The admin API through the SDK's typed client, with the session's token. */
export const api = eb.api;
export const call = eb.call.bind(eb);

/** What to show for a failure: the API's message, and the column of a bad expression. */
export interface Problem {
  message: string;
  status?: number;
  code?: string;
  column?: number;
}

export function problem(e: unknown): Problem {
  if (e instanceof EmberbaseError) {
    const column = typeof e.details?.column === "number" ? e.details.column : undefined;
    return { message: e.message, status: e.status, code: e.code, column };
  }
  return { message: e instanceof Error ? e.message : String(e) };
}

/** `2026-11-29T10:00:00.000Z` as the browser's local date and time. */
export function when(time: string | null | undefined): string {
  if (!time) return "—";
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? time : date.toLocaleString();
}
