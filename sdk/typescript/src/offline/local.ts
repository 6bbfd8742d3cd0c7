/**
 * What a write does to a document, worked out on this device so that it shows at once, before
 * the server has it. The server's answer replaces it when it comes.
 */
import type { Doc, DocData, Transform } from "../collection.js";
import { equal } from "../filter.js";

/** A write as the offline queue keeps it. */
export type WriteKind = "create" | "set" | "update" | "delete";

export interface LocalWrite {
  op: WriteKind;
  collection: string;
  id: string;
  data?: DocData;
  transforms?: Record<string, Transform>;
}

/**
 * The document after `write`, from `base` (what this device knows: a document, null when it
 * does not exist, undefined when unknown). Undefined when it cannot be known here (a patch of
 * a document this device never read).
 */
export function applyLocally(base: Doc | null | undefined, write: LocalWrite, owner: string | null): Doc | null | undefined {
  const now = new Date().toISOString();
  const fresh = (data: DocData): Doc => ({
    collection: write.collection,
    id: write.id,
    owner,
    version: 1,
    created_at: now,
    updated_at: now,
    data,
  });
  const next = (data: DocData): Doc => (base ? { ...base, version: base.version + 1, updated_at: now, data } : fresh(data));
  switch (write.op) {
    case "create":
      return fresh(clone(write.data ?? {}));
    case "set":
      return next(clone(write.data ?? {}));
    case "delete":
      return null;
    case "update": {
      if (!base) return base === null ? null : undefined;
      const data = mergePatch(base.data, write.data ?? {}) as DocData;
      for (const [path, transform] of Object.entries(write.transforms ?? {})) transformAt(data, path.split("."), transform, now);
      return next(data);
    }
  }
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** RFC 7386: listed fields replace, `null` removes, objects merge recursively. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const out: Record<string, unknown> = isObject(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

function transformAt(data: DocData, path: string[], transform: Transform, now: string): void {
  let parent: Record<string, unknown> = data;
  for (const segment of path.slice(0, -1)) {
    if (!isObject(parent[segment])) parent[segment] = {};
    parent = parent[segment] as Record<string, unknown>;
  }
  const key = path[path.length - 1];
  const current = parent[key];
  const list = Array.isArray(current) ? current : [];
  if ("$inc" in transform) parent[key] = (typeof current === "number" ? current : 0) + transform.$inc;
  else if ("$serverTime" in transform) parent[key] = now;
  else if ("$delete" in transform) delete parent[key];
  else if ("$arrayUnion" in transform) {
    const out = [...list];
    for (const v of transform.$arrayUnion) if (!out.some((x) => equal(x, v))) out.push(v);
    parent[key] = out;
  } else if ("$arrayRemove" in transform) {
    parent[key] = list.filter((x) => !transform.$arrayRemove.some((v) => equal(x, v)));
  }
}
