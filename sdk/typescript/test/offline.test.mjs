// The offline cache in Node against a real server: reads answered from the cache (a file) while
// the server is down, writes queued durably across a restart of the client and sent in order
// when the server is back, conflicts handed to onConflict, and realtime resuming from the
// position kept in the file.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Emberbase, EmberbaseError, increment, MemoryStore } from "../dist/index.js";
import { FileStorage } from "../dist/node.js";
import { admin, eventually, startServer } from "./server.mjs";

const PASSWORD = "correct horse battery";
const RULES = {
  read: "auth != null && doc.owner == auth.id",
  create: "auth != null",
  update: "auth != null && doc.owner == auth.id",
  delete: "auth != null && doc.owner == auth.id",
};

let server;
const dirs = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A client whose network can be cut (`client.down = true`) without stopping the server. */
function client(options) {
  const state = { down: false };
  const eb = new Emberbase(server.url, {
    ...options,
    fetch: (input, init) => (state.down ? Promise.reject(new TypeError("fetch failed")) : fetch(input, init)),
  });
  Object.defineProperty(eb, "down", { set: (v) => (state.down = v), get: () => state.down });
  return eb;
}

let n = 0;
async function setup() {
  const name = `offline${Date.now()}_${n++}`;
  await admin(server, "PUT", `/v1/admin/collections/${name}`, { rules: RULES });
  const dir = mkdtempSync(join(tmpdir(), "emberbase-offline-"));
  dirs.push(dir);
  const file = join(dir, "cache.log");
  const tokens = new MemoryStore();
  return { name, file, tokens };
}

const titles = (page) => page.items.map((d) => d.data.title);

test("reads come from the file while the server is away; queued writes survive a restart of the client and arrive in order", async () => {
  const { name, file, tokens } = await setup();
  const first = client({ storage: tokens, offline: { storage: new FileStorage(file) } });
  await first.auth.signup(`offline-${Date.now()}@example.com`, PASSWORD);
  const notes = first.collection(name);
  const a = await notes.create({ title: "a", done: false, n: 1 });
  const b = await notes.create({ title: "b", done: false, n: 2 });
  const open = { filter: "data.done == false", sort: "data.n" };
  assert.deepEqual(titles(await notes.list(open)), ["a", "b"]);
  assert.equal((await notes.list(open)).fromCache, undefined);

  first.down = true;
  const cached = await notes.list({ ...open, count: true });
  assert.equal(cached.fromCache, true);
  assert.deepEqual(titles(cached), ["a", "b"]);
  assert.equal(cached.total, 2);

  // Offline writes: they show at once, in the cached queries they now match (or no longer do).
  const c = await notes.create({ title: "c", done: false, n: 0 });
  assert.equal(c.version, 1);
  await notes.update(a.id, { done: true });
  await notes.transform(a.id, { n: increment(10) });
  await notes.delete(b.id);
  assert.deepEqual(first.offline.status, { online: false, pending: 4 });
  assert.deepEqual(titles(await notes.list(open)), ["c"]);
  assert.deepEqual(titles(await notes.list({ sort: "-data.n" })), ["a", "c"]);
  assert.deepEqual((await notes.get(a.id)).data, { title: "a", done: true, n: 11 });
  const missing = await notes.get(b.id).catch((e) => e);
  assert.ok(missing instanceof EmberbaseError && missing.status === 404);
  // Paging through the cache.
  const page1 = await notes.list({ sort: "data.n", limit: 1 });
  assert.deepEqual(titles(page1), ["c"]);
  assert.deepEqual(titles(await notes.list({ sort: "data.n", limit: 1, cursor: page1.next_cursor })), ["a"]);
  await first.offline.close();

  // The process restarts, still offline: everything is in the file.
  const second = client({ storage: tokens, offline: { storage: new FileStorage(file) } });
  second.down = true;
  const again = second.collection(name);
  assert.deepEqual(titles(await again.list(open)), ["c"]);
  assert.deepEqual((await again.get(c.id)).data, { title: "c", done: false, n: 0 });
  await again.update(c.id, { title: "c2" });
  assert.equal(second.offline.status.pending, 5);

  // A subscriber on the server sees the writes in the order they were made.
  const watcher = client({ storage: tokens });
  const seen = [];
  let live = false;
  const stop = watcher.collection(name).subscribe((e) => seen.push(`${e.type} ${e.doc.data.title} v${e.doc.version}`), {
    onReady: () => (live = true),
  });
  await eventually("the watcher is live", () => live);

  second.down = false;
  await second.offline.sync();
  assert.deepEqual(second.offline.status, { online: true, pending: 0 });
  await eventually("every write arrived", () => seen.length === 5);
  stop();
  assert.deepEqual(seen, ["create c v1", "update a v2", "update a v3", "delete b v1", "update c2 v2"]);
  const stored = await admin(server, "GET", `/v1/collections/${name}/docs?sort=data.n`);
  assert.deepEqual(
    stored.items.map((d) => [d.data.title, d.data.done, d.data.n, d.version]),
    [
      ["c2", false, 0, 2],
      ["a", true, 11, 3],
    ],
  );
  // Online again, reads come from the server.
  assert.equal((await again.list(open)).fromCache, undefined);
  await second.offline.close();
});

test("a document changed elsewhere meanwhile is a conflict, decided by onConflict", async () => {
  const { name, file, tokens } = await setup();
  const conflicts = [];
  let decide = () => undefined;
  const eb = client({
    storage: tokens,
    offline: {
      storage: new FileStorage(file),
      onConflict: (conflict) => {
        conflicts.push(conflict);
        return decide(conflict);
      },
    },
  });
  await eb.auth.signup(`conflict-${Date.now()}@example.com`, PASSWORD);
  const todos = eb.collection(name);
  const doc = await todos.create({ title: "original", likes: 0 });

  // Offline, this device edits version 1; meanwhile someone else makes version 2.
  eb.down = true;
  await todos.update(doc.id, { title: "mine" });
  // Increments carry no version: they compose with the other writer's change.
  await todos.transform(doc.id, { likes: increment(1) });
  const session = await tokens.get();
  const theirs = await fetch(`${server.url}/v1/collections/${name}/docs/${doc.id}`, {
    method: "PATCH",
    headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ title: "theirs" }),
  });
  assert.equal(theirs.status, 200);

  eb.down = false;
  await eb.offline.sync();
  assert.equal(conflicts.length, 1);
  assert.equal(conflicts[0].error.status, 412);
  assert.deepEqual(conflicts[0].local, { title: "mine", likes: 1 });
  assert.equal(conflicts[0].server.data.title, "theirs");
  // Kept the server's document: this device's edits to it are dropped, the cache follows.
  assert.deepEqual((await todos.get(doc.id)).data, { title: "theirs", likes: 0 });

  // Again, and this time the app merges.
  eb.down = true;
  await todos.update(doc.id, { title: "mine again" });
  const other = await fetch(`${server.url}/v1/collections/${name}/docs/${doc.id}`, {
    method: "PATCH",
    headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ likes: 5 }),
  });
  assert.equal(other.status, 200);
  decide = ({ local, server }) => ({ ...server.data, title: local.title });
  eb.down = false;
  await eb.offline.sync();
  assert.equal(conflicts.length, 2);
  const merged = await admin(server, "GET", `/v1/collections/${name}/docs/${doc.id}`);
  assert.deepEqual(merged.data, { title: "mine again", likes: 5 });
  assert.equal(merged.version, 4);
  await eb.offline.close();
});

test("a write the rules refuse is dropped and reported; the cache goes back to the server's copy", async () => {
  const { name, file, tokens } = await setup();
  const rejected = [];
  const eb = client({ storage: tokens, offline: { storage: new FileStorage(file), onRejected: (r) => rejected.push(r) } });
  await eb.auth.signup(`rejected-${Date.now()}@example.com`, PASSWORD);
  const todos = eb.collection(name);
  await admin(server, "PUT", `/v1/admin/collections/${name}`, { rules: { ...RULES, update: "request.data.title != \"forbidden\"" } });
  const doc = await todos.create({ title: "fine" });
  eb.down = true;
  await todos.update(doc.id, { title: "forbidden" });
  assert.equal((await todos.get(doc.id)).data.title, "forbidden");
  eb.down = false;
  await eb.offline.sync();
  assert.equal(rejected.length, 1);
  assert.equal(rejected[0].error.status, 403);
  assert.equal((await todos.get(doc.id)).data.title, "fine");
  await eb.offline.close();
});

test("the stream resumes from the position kept in the file", async () => {
  const { name, file, tokens } = await setup();
  const first = client({ storage: tokens, offline: { storage: new FileStorage(file) } });
  await first.auth.signup(`resume-${Date.now()}@example.com`, PASSWORD);
  const heard = [];
  let ready = false;
  const stop = first.collection(name).subscribe((e) => heard.push(e.doc.data.title), { onReady: () => (ready = true) });
  await eventually("live", () => ready);
  await first.collection(name).create({ title: "while open" });
  await eventually("its event", () => heard.includes("while open"));
  stop();
  await first.offline.close();

  // Written by the same user while no cached client runs.
  const written = await client({ storage: tokens }).collection(name).create({ title: "while closed" });

  const second = client({ storage: tokens, offline: { storage: new FileStorage(file) } });
  const replayed = [];
  const again = second.collection(name).subscribe((e) => replayed.push(`${e.type} ${e.doc.data.title}`));
  await eventually("the missed event", () => replayed.length >= 1);
  // The cache holds it now, and nothing heard before is heard again.
  second.down = true;
  assert.deepEqual((await second.collection(name).get(written.id)).data, { title: "while closed" });
  again();
  assert.deepEqual(replayed, ["create while closed"]);
  await second.offline.close();
});

test("a subscription the server refuses at a reconnect fails alone; the others resume with reset", async () => {
  const { name, tokens } = await setup();
  const other = `${name}_other`;
  await admin(server, "PUT", `/v1/admin/collections/${other}`, { rules: RULES });
  const eb = client({ storage: tokens });
  await eb.auth.signup(`isolate-${Date.now()}@example.com`, PASSWORD);
  const kept = [];
  const refused = [];
  let ready = 0;
  const stopKept = eb.collection(name).subscribe((e) => kept.push(e.type === "reset" ? "reset" : e.doc.data.title), {
    onReady: () => ready++,
  });
  const stopRefused = eb.collection(other).subscribe(() => {}, {
    onReady: () => ready++,
    onError: (e) => refused.push(e),
  });
  await eventually("both live", () => ready >= 2);
  // The second collection becomes admins-only; the server restarts, and the client's
  // reconnect carries both subscriptions.
  await admin(server, "PUT", `/v1/admin/collections/${other}`, { rules: { ...RULES, read: null } });
  server = await server.restart();
  await eventually("the refused subscription's error", () => refused.length === 1, 20_000);
  assert.equal(refused[0].status, 403);
  await eventually("the kept one told to refetch", () => kept.includes("reset"), 20_000);
  await eb.collection(name).create({ title: "after" });
  await eventually("the kept one still live", () => kept.includes("after"), 20_000);
  stopKept();
  stopRefused();
});
