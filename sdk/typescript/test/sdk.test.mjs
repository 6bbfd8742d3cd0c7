// The SDK against a real server: every method, token refresh under concurrency, subscriptions,
// files, functions and error mapping.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import {
  arrayRemove,
  arrayUnion,
  deleteField,
  Emberbase,
  EmberbaseError,
  increment,
  MemoryStore,
  MfaRequiredError,
  serverTime,
} from "../dist/index.js";
import { admin, eventually, sleep, startProviders, startServer, totp } from "./server.mjs";

const PASSWORD = "correct horse battery";
let counter = 0;
const email = (tag) => `${tag}-${Date.now()}-${counter++}@example.com`;

/** Resolves with the error a promise rejects with; fails if it resolves. */
async function failure(promise) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof EmberbaseError, `expected an EmberbaseError, got ${e}`);
    return e;
  }
  assert.fail("expected a failure");
}

/** A fetch that counts the requests per "METHOD path". */
function countingFetch() {
  const counts = new Map();
  const f = (input, init) => {
    const request = input instanceof Request ? input : new Request(input, init);
    const key = `${request.method} ${new URL(request.url).pathname}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    return fetch(input, init);
  };
  return { fetch: f, count: (key) => counts.get(key) ?? 0 };
}

/** Collects a subscription's events; `ready()` resolves on each (re)connect. */
function collect(collection, options = {}) {
  const events = [];
  let readies = 0;
  const errors = [];
  const stop = collection.subscribe((e) => events.push(e), {
    ...options,
    onReady: () => readies++,
    onError: (e) => errors.push(e),
  });
  return {
    events,
    errors,
    stop,
    readies: () => readies,
    ready: (n = 1) => eventually(`ready #${n}`, () => readies >= n),
  };
}

describe("against one server", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test("auth: signup, me, onChange, logout, login, and typed errors", async () => {
    const eb = new Emberbase(server.url);
    const seen = [];
    const off = eb.auth.onChange((user) => seen.push(user?.email ?? null));
    const address = email("auth");
    const user = await eb.auth.signup(address, PASSWORD);
    assert.equal(user.email, address);
    assert.equal(user.role, "user");
    assert.equal(eb.auth.user?.id, user.id);
    assert.equal((await eb.auth.me()).id, user.id);
    await eb.auth.logout();
    assert.equal(eb.auth.user, null);
    const again = await eb.auth.login(address, PASSWORD);
    assert.equal(again.id, user.id);
    await eventually("onChange calls", () => seen.length >= 4);
    assert.deepEqual(seen, [null, address, null, address]);
    off();
    await eb.auth.logout();
    assert.deepEqual(seen.length, 4, "no calls after unsubscribing");

    const wrong = await failure(eb.auth.login(address, "not the password"));
    assert.equal(wrong.status, 401);
    assert.equal(wrong.code, "unauthenticated");
    const weak = await failure(eb.auth.signup(email("weak"), "12345678"));
    assert.equal(weak.status, 400);
    assert.equal(weak.code, "validation_failed");
    const taken = await failure(eb.auth.signup(address, PASSWORD));
    assert.equal(taken.code, "conflict");
    const anonymous = await failure(eb.auth.me());
    assert.equal(anonymous.status, 401);
  });

  test("auth: two-factor sign-in with an authenticator app", async () => {
    const eb = new Emberbase(server.url);
    const address = email("mfa");
    const user = await eb.auth.signup(address, PASSWORD);
    const enrollment = await eb.auth.mfa.enroll();
    assert.match(enrollment.otpauth_uri, /^otpauth:\/\/totp\//);
    const recovery = await eb.auth.mfa.confirm(totp(enrollment.secret));
    assert.equal(recovery.length, 10);
    assert.equal((await eb.auth.me()).mfa_enabled, true);
    await eb.auth.logout();

    // A right password rejects with the challenge; the next step's code answers it.
    let challenge;
    try {
      await eb.auth.login(address, PASSWORD);
      assert.fail("expected a challenge");
    } catch (e) {
      assert.ok(e instanceof MfaRequiredError, `expected a MfaRequiredError, got ${e}`);
      challenge = e;
    }
    assert.deepEqual(challenge.methods, ["totp", "recovery_code"]);
    assert.equal(eb.auth.user, null);
    const signedIn = await eb.auth.mfa.verify(challenge.mfaToken, { code: totp(enrollment.secret, 1) });
    assert.equal(signedIn.id, user.id);
    assert.equal(eb.auth.user?.id, user.id);
    const used = await failure(eb.auth.mfa.verify(challenge.mfaToken, { recoveryCode: recovery[0] }));
    assert.equal(used.status, 401);

    await eb.auth.mfa.disable({ recoveryCode: recovery[0] });
    await eb.auth.logout();
    assert.equal((await eb.auth.login(address, PASSWORD)).id, user.id);
  });

  test("auth: sign in with a code or a link from a mail", async () => {
    const eb = new Emberbase(server.url);
    const address = email("link");
    await eb.auth.sendMagicLink(address);
    const body = await eventually("the sign-in mail", async () => {
      const outbox = await admin(server, "GET", "/v1/admin/outbox?limit=1000");
      return outbox.items.find((m) => m.to === address)?.body;
    });
    const token = body.split(/\s+/).find((w) => w.startsWith("eblink_"));
    const user = await eb.auth.verifyOtp({ token });
    assert.equal(user.email, address);
    assert.equal(eb.auth.user?.id, user.id);
    const used = await failure(eb.auth.verifyOtp({ token }));
    assert.equal(used.status, 401);
    await eb.auth.logout();

    await eb.auth.sendMagicLink(address);
    const second = await eventually("the second mail", async () => {
      const outbox = await admin(server, "GET", "/v1/admin/outbox?limit=1000");
      const mails = outbox.items.filter((m) => m.to === address);
      return mails.length > 1 ? mails[0].body : undefined;
    });
    const code = second.split(/\s+/).find((w) => /^\d{6}$/.test(w));
    assert.equal((await eb.auth.verifyOtp({ email: address, code })).id, user.id);
  });

  test("auth: an anonymous account upgraded in place", async () => {
    const eb = new Emberbase(server.url);
    const guest = await eb.auth.signInAnonymously();
    assert.equal(guest.anonymous, true);
    assert.equal(guest.email, null);
    const address = email("guest");
    const upgraded = await eb.auth.upgrade(address, PASSWORD);
    assert.equal(upgraded.id, guest.id);
    assert.equal(eb.auth.user?.email, address);
    await eb.auth.logout();
    assert.equal((await eb.auth.login(address, PASSWORD)).id, guest.id);
    await eb.auth.logout();

    // Signed in anonymously, a mailed code gives this account its address.
    const second = await eb.auth.signInAnonymously();
    const linked = email("guest-link");
    await eb.auth.sendMagicLink(linked);
    const body = await eventually("the sign-in mail", async () => {
      const outbox = await admin(server, "GET", "/v1/admin/outbox?limit=1000");
      return outbox.items.find((m) => m.to === linked)?.body;
    });
    const code = body.split(/\s+/).find((w) => /^\d{6}$/.test(w));
    const user = await eb.auth.verifyOtp({ email: linked, code });
    assert.equal(user.id, second.id);
    assert.equal(user.anonymous, false);
  });

  test("auth: a profile at signup, merged by updateProfile", async () => {
    const eb = new Emberbase(server.url);
    const user = await eb.auth.signup(email("profile"), PASSWORD, { name: "Ada", avatar: "a.png" });
    assert.deepEqual(user.profile, { name: "Ada", avatar: "a.png" });
    const updated = await eb.auth.updateProfile({ avatar: null, team: "red" });
    assert.deepEqual(updated.profile, { name: "Ada", team: "red" });
    assert.deepEqual(eb.auth.user?.profile, updated.profile);
    const big = await failure(eb.auth.updateProfile({ bio: "x".repeat(5000) }));
    assert.equal(big.code, "validation_failed");
  });

  test("collections: create, get, set, update, delete, list, iterate, versions", async () => {
    const eb = new Emberbase(server.url);
    const me = await eb.auth.signup(email("docs"), PASSWORD);
    const name = `posts_${counter++}`;
    // Owners only (the private default), except that a missing document is a 404, not a 403.
    await admin(server, "PUT", `/v1/admin/collections/${name}`, {
      rules: {
        read: "auth != null && (doc == null || doc.owner == auth.id)",
        create: "auth != null",
        update: "auth != null && doc.owner == auth.id",
        delete: "auth != null && doc.owner == auth.id",
      },
    });
    const posts = eb.collection(name);
    const created = await posts.create({ title: "first", n: 1, tags: ["a"] });
    assert.equal(created.version, 1);
    assert.equal(created.owner, me.id);
    assert.deepEqual(created.data, { title: "first", n: 1, tags: ["a"] });
    assert.deepEqual(await posts.get(created.id), created);

    const replaced = await posts.set(created.id, { title: "replaced", n: 2 });
    assert.equal(replaced.version, 2);
    assert.deepEqual(replaced.data, { title: "replaced", n: 2 });
    const patched = await posts.update(created.id, { n: 3, title: null }, { ifVersion: 2 });
    assert.deepEqual(patched.data, { n: 3 });
    const stale = await failure(posts.update(created.id, { n: 4 }, { ifVersion: 2 }));
    assert.equal(stale.status, 412);
    assert.equal(stale.code, "precondition_failed");
    const mine = await posts.set("my-id", { title: "chosen", n: 10 });
    assert.equal(mine.id, "my-id");

    for (let n = 20; n < 45; n++) await posts.create({ title: `t${n}`, n });
    const page = await posts.list({ filter: "data.n >= 20", sort: "-data.n", limit: 10 });
    assert.equal(page.items.length, 10);
    assert.equal(page.items[0].data.n, 44);
    assert.ok(page.next_cursor);
    const next = await posts.list({ filter: "data.n >= 20", sort: "-data.n", limit: 10, cursor: page.next_cursor });
    assert.equal(next.items[0].data.n, 34);
    const all = [];
    for await (const doc of posts.iterate({ filter: "data.n >= 20", limit: 7 })) all.push(doc.data.n);
    assert.deepEqual(all, Array.from({ length: 25 }, (_, i) => 20 + i));
    let count = 0;
    for await (const _doc of posts) count++;
    assert.equal(count, 27);

    // Counts and aggregates over what this user may read.
    assert.equal((await posts.list({ filter: "data.n >= 20", limit: 1, count: true })).total, 25);
    assert.equal(await posts.count("data.n >= 40"), 5);
    assert.equal(await posts.count(), 27);
    const groups = await posts.aggregate({
      filter: "data.n >= 20",
      groupBy: ["data.big"],
      ops: ["count", "sum:data.n", "avg:data.n", "max:data.title"],
    });
    assert.deepEqual(groups, [
      { key: { "data.big": null }, values: { count: 25, "sum:data.n": 800, "avg:data.n": 32, "max:data.title": "t44" } },
    ]);
    const badOp = await failure(posts.aggregate({ ops: ["median:data.n"] }));
    assert.equal(badOp.code, "bad_request");

    // Atomic transforms: concurrent increments all count; the patch applies first.
    const liked = await posts.transform(
      "my-id",
      { likes: increment(1), seen_at: serverTime(), tags: arrayUnion("x", "y"), n: deleteField() },
      { patch: { title: "liked" } },
    );
    assert.deepEqual(liked.data, { title: "liked", likes: 1, seen_at: liked.updated_at, tags: ["x", "y"] });
    await Promise.all(Array.from({ length: 10 }, () => posts.transform("my-id", { likes: increment(1) })));
    const after = await posts.transform("my-id", { tags: arrayRemove("x") }, { ifVersion: liked.version + 10 });
    assert.equal(after.data.likes, 11);
    assert.deepEqual(after.data.tags, ["y"]);
    const badTransform = await failure(posts.transform("my-id", { title: increment(1) }));
    assert.equal(badTransform.status, 400);
    // Relations: expand embeds the referenced document; a missing reference is refused.
    await admin(server, "PUT", `/v1/admin/collections/${name}_comments`, {
      rules: { read: "auth != null", create: "auth != null", update: null, delete: null },
      relations: { post: { collection: name, on_delete: "cascade" } },
    });
    const comments = eb.collection(`${name}_comments`);
    const comment = await comments.create({ post: "my-id", text: "hi" });
    const expanded = await comments.get(comment.id, { expand: ["post"] });
    assert.equal(expanded.expand?.post?.id, "my-id");
    const listed = await comments.list({ expand: ["post"] });
    assert.equal(listed.items[0].expand?.post?.data.title, "liked");
    const dangling = await failure(comments.create({ post: "nope" }));
    assert.equal(dangling.code, "validation_failed");

    const [batched] = await eb.batch([{ op: "update", collection: name, id: "my-id", transforms: { likes: increment(-1) } }]);
    assert.equal(batched.data.likes, 10);

    await posts.delete(created.id);
    const gone = await failure(posts.get(created.id));
    assert.equal(gone.status, 404);
    assert.equal(gone.code, "not_found");
    const badFilter = await failure(posts.list({ filter: "data.n >" }));
    assert.equal(badFilter.code, "bad_request");
    const badName = await failure(eb.collection("no spaces").create({}));
    assert.equal(badName.code, "bad_request");
  });

  test("batch: all or nothing, with the failing op's index", async () => {
    const eb = new Emberbase(server.url);
    await eb.auth.signup(email("batch"), PASSWORD);
    const name = `batch_${counter++}`;
    const results = await eb.batch([
      { op: "create", collection: name, data: { n: 1 } },
      { op: "set", collection: name, id: "b", data: { n: 2 } },
      { op: "update", collection: name, id: "b", data: { n: 3 } },
    ]);
    assert.equal(results.length, 3);
    assert.equal(results[2].data.n, 3);
    const failed = await failure(
      eb.batch([
        { op: "create", collection: name, data: { n: 4 } },
        { op: "update", collection: name, id: "b", data: { n: 9 }, if_version: 1 },
      ]),
    );
    assert.equal(failed.code, "precondition_failed");
    assert.equal(failed.details.op, 1);
    assert.equal((await eb.collection(name).list()).items.length, 2, "nothing of the failed batch applied");
  });

  test("files: upload, download, list, url, sign, delete", async () => {
    const eb = new Emberbase(server.url);
    // Owners only (the private default), except that a missing file is a 404, not a 403.
    await admin(server, "PUT", "/v1/admin/buckets/photos", {
      rules: {
        read: "auth != null && (file == null || file.owner == auth.id)",
        write: "auth != null && (file == null || file.owner == auth.id)",
        delete: "auth != null && file.owner == auth.id",
      },
    });
    await eb.auth.signup(email("files"), PASSWORD);
    const bytes = new Uint8Array(300_000).map((_, i) => (i * 7) % 251);
    const progress = [];
    const info = await eb.files.upload("photos", "trips/day-1.bin", bytes, {
      contentType: "application/octet-stream",
      onProgress: (sent, total) => progress.push([sent, total]),
    });
    assert.equal(info.size, bytes.length);
    // Node has no XMLHttpRequest: progress is told once, at the end (browsers: as bytes leave).
    assert.deepEqual(progress, [[bytes.length, bytes.length]]);
    assert.equal(info.path, "trips/day-1.bin");
    const back = new Uint8Array(await (await eb.files.download("photos", "trips/day-1.bin")).arrayBuffer());
    assert.deepEqual(back, bytes);
    await eb.files.upload("photos", "trips/note.txt", new Blob(["hello"], { type: "text/plain" }));
    const listed = await eb.files.list("photos", { prefix: "trips/" });
    assert.deepEqual(
      listed.items.map((f) => f.path),
      ["trips/day-1.bin", "trips/note.txt"],
    );
    assert.equal(listed.items[1].content_type, "text/plain");

    // The plain URL needs a token (the default read rule); a signed one does not.
    assert.equal(eb.files.url("photos", "trips/note.txt"), `${server.url}/v1/files/photos/trips/note.txt`);
    assert.equal((await fetch(eb.files.url("photos", "trips/note.txt"))).status, 403);
    const signed = await eb.files.sign("photos", "trips/note.txt", 60);
    const viaUrl = await fetch(signed.url);
    assert.equal(viaUrl.status, 200);
    assert.equal(await viaUrl.text(), "hello");
    assert.ok(Date.parse(signed.expires_at) > Date.now());

    await eb.files.delete("photos", "trips/note.txt");
    const gone = await failure(eb.files.download("photos", "trips/note.txt"));
    assert.equal(gone.status, 404);
    const bad = await failure(eb.files.upload("photos", "../escape", "x"));
    assert.equal(bad.code, "bad_request");
  });

  test("functions.call: JSON in and out, the caller's auth, failures", async (t) => {
    const wasm = process.env.SDK_TEST_ECHO_WASM;
    if (!wasm) {
      t.skip("SDK_TEST_ECHO_WASM is not set (the Rust suite sets it)");
      return;
    }
    await admin(server, "PUT", "/v1/admin/functions/echo", new Uint8Array(readFileSync(wasm)));
    await admin(server, "PUT", "/v1/admin/functions/echo/config", { triggers: [{ on: "http" }] });
    const eb = new Emberbase(server.url);
    const event = await eb.functions.call("echo", { q: 1 });
    assert.deepEqual(event.body, { q: 1 });
    assert.equal(event.auth, null);
    const address = email("fn");
    await eb.auth.signup(address, PASSWORD);
    const authed = await eb.functions.call("echo", [1, 2]);
    assert.equal(authed.auth.email, address);
    const missing = await failure(eb.functions.call("nope", {}));
    assert.equal(missing.status, 404);

    // An admin follows the function's runs as they are recorded.
    const boss = email("fn-admin");
    await admin(server, "POST", "/v1/admin/admins", { email: boss, password: PASSWORD });
    const ops = new Emberbase(server.url);
    await ops.auth.login(boss, PASSWORD);
    const runs = [];
    let live = false;
    const stop = ops.functions.follow("echo", (run) => runs.push(run), { onReady: () => (live = true) });
    await eventually("following", () => live);
    await eb.functions.call("echo", { n: 1 });
    await eventually("the run", () => runs.length === 1);
    assert.equal(runs[0].trigger, "http");
    assert.equal(runs[0].status, "ok");
    stop();
    const refused = [];
    eb.functions.follow("echo", () => {}, { onError: (e) => refused.push(e) });
    await eventually("a refusal for a user", () => refused.length === 1);
    assert.equal(refused[0].status, 403);
  });

  test("subscribe: events in order, filters, ids, unsubscribe", async () => {
    const eb = new Emberbase(server.url);
    await eb.auth.signup(email("rt"), PASSWORD);
    const todos = eb.collection(`todos_${counter++}`);
    const everything = collect(todos);
    const open = collect(todos, { filter: "data.done == false" });
    await everything.ready();
    await open.ready();

    const a = await todos.create({ title: "a", done: false });
    const b = await todos.create({ title: "b", done: true });
    const one = collect(todos, { ids: [a.id] });
    await one.ready();
    await todos.update(a.id, { done: true });
    await todos.delete(b.id);
    await todos.delete(a.id);

    await eventually("4+1 events", () => everything.events.length === 5);
    assert.deepEqual(
      everything.events.map((e) => `${e.type} ${e.doc.data.title}`),
      ["create a", "create b", "update a", "delete b", "delete a"],
    );
    const seqs = everything.events.map((e) => e.seq);
    assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `increasing: ${seqs}`);
    assert.equal(everything.events[2].doc.version, 2);
    await eventually("filtered events", () => open.events.length === 2);
    assert.deepEqual(
      open.events.map((e) => `${e.type} ${e.doc.data.title}`),
      ["create a", "update a"],
    );
    // The create was acknowledged before this subscription, but may not have been fanned out
    // yet, so it can arrive too; what follows is exact.
    await eventually("one document's delete", () => one.events.some((e) => e.type === "delete"));
    assert.deepEqual(
      one.events.filter((e) => e.type !== "create").map((e) => e.type),
      ["update", "delete"],
    );
    assert.ok(one.events.every((e) => e.id === a.id));

    everything.stop();
    await sleep(100);
    await todos.create({ title: "after", done: false });
    await eventually("the open filter sees it", () => open.events.length === 3);
    assert.equal(everything.events.length, 5, "nothing after unsubscribing");
    open.stop();
    one.stop();

    const denied = collect(eb.collection("bad name"));
    await eventually("a fatal error", () => denied.errors.length === 1);
    assert.equal(denied.errors[0].code, "bad_request");
  });

  test("admins: call runs any route with the session, and changes() follows every collection", async () => {
    const address = email("admin");
    await admin(server, "POST", "/v1/admin/admins", { email: address, password: PASSWORD });
    const eb = new Emberbase(server.url);
    await eb.auth.login(address, PASSWORD);
    const name = `tail_${counter++}`;
    await admin(server, "PUT", `/v1/collections/${name}/docs/first`, { n: 1 });
    const { items } = await eb.call((headers) => eb.api.GET("/v1/admin/collections", { headers }));
    assert.equal(items.find((c) => c.name === name)?.documents, 1);
    const refused = await failure(
      eb.call((headers) => eb.api.GET("/v1/admin/collections/{collection}", { headers, params: { path: { collection: "bad name" } } })),
    );
    assert.equal(refused.status, 400);

    const events = [];
    let ready = false;
    const stop = eb.changes((e) => events.push(e), { onReady: () => (ready = true) });
    await eventually("the tail is live", () => ready);
    await admin(server, "PUT", `/v1/collections/${name}/docs/second`, { n: 2 });
    await admin(server, "PUT", `/v1/collections/${name}_other/docs/third`, { n: 3 });
    await eventually("both changes", () => events.length === 2);
    assert.deepEqual(
      events.map((e) => `${e.type} ${e.collection}/${e.id} ${e.doc.data.n}`),
      [`create ${name}/second 2`, `create ${name}_other/third 3`],
    );
    stop();

    // Not for users.
    const user = new Emberbase(server.url);
    await user.auth.signup(email("nosy"), PASSWORD);
    const errors = [];
    user.changes(() => {}, { onError: (e) => errors.push(e) });
    await eventually("a refusal", () => errors.length === 1);
    assert.equal(errors[0].status, 403);
  });

  test("errors: network failures and unknown routes are typed", async () => {
    const down = new Emberbase("http://127.0.0.1:9");
    const e = await failure(down.collection("x").list());
    assert.equal(e.status, 0);
    assert.equal(e.code, "network_error");
    const eb = new Emberbase(server.url);
    const { response } = await eb.api.GET("/v1/health");
    assert.equal(response.status, 200);
    assert.equal((await eb.health()).status, "ok");
  });
});

describe("sessions and reconnection", () => {
  let server;
  before(async () => {
    // Access tokens live 3 s, so the tests see them expire.
    server = await startServer({ EMBERBASE_AUTH__ACCESS_TOKEN_TTL_SECS: "3" });
  });
  after(() => server?.stop());

  test("concurrent calls near expiry share a single refresh", async () => {
    const counting = countingFetch();
    const eb = new Emberbase(server.url, { fetch: counting.fetch });
    await eb.auth.signup(email("refresh"), PASSWORD);
    const posts = eb.collection(`shared_${counter++}`);
    const doc = await posts.create({ n: 1 });
    for (let round = 1; round <= 3; round++) {
      // Past half the token's life: the next calls must refresh first.
      await sleep(1700);
      const results = await Promise.all(Array.from({ length: 20 }, () => posts.get(doc.id)));
      assert.ok(results.every((r) => r.id === doc.id));
      assert.equal(counting.count("POST /v1/auth/refresh"), round, `one refresh in round ${round}`);
    }
    // Had two refreshes raced, the login would have been revoked and this would fail.
    assert.ok((await eb.auth.me()).id);
  });

  test("a rejected token is renewed once for every concurrent caller, then retried", async () => {
    const first = new Emberbase(server.url, { storage: new MemoryStore() });
    await first.auth.signup(email("renew"), PASSWORD);
    const posts = first.collection(`renew_${counter++}`);
    const doc = await posts.create({ n: 1 });
    // A client whose stored access token the server refuses, though it looks fresh.
    const store = new MemoryStore();
    const session = await first.auth.refresh();
    store.set({ ...session, access_token: "revoked-or-forged", expires_at: Date.now() + 3_600_000 });
    const counting = countingFetch();
    const eb = new Emberbase(server.url, { storage: store, fetch: counting.fetch });
    const results = await Promise.all(Array.from({ length: 10 }, () => eb.collection(posts.name).get(doc.id)));
    assert.ok(results.every((r) => r.id === doc.id));
    assert.equal(counting.count("POST /v1/auth/refresh"), 1);
    assert.equal(counting.count(`GET /v1/collections/${posts.name}/docs/${doc.id}`), 20);

    // A session the server revoked signs the client out.
    const current = store.get();
    await fetch(`${server.url}/v1/auth/logout`, {
      method: "POST",
      headers: { Authorization: `Bearer ${current.access_token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: current.refresh_token }),
    });
    assert.equal(await eb.auth.refresh(), null);
    assert.equal(eb.auth.user, null);
    assert.equal(store.get(), null);
  });

  test("a subscription outlives token expiry and a server restart, missing nothing", async () => {
    const eb = new Emberbase(server.url);
    await eb.auth.signup(email("live"), PASSWORD);
    const feed = eb.collection(`feed_${counter++}`);
    const sub = collect(feed);
    await sub.ready();
    await feed.create({ n: 1 });
    // The stream ends when the 3 s token expires; the SDK refreshes and resumes.
    await eventually("a reconnect after expiry", () => sub.readies() >= 2, 15_000);
    await feed.create({ n: 2 });
    await eventually("event 2", () => sub.events.length === 2);

    // kill -9, restart on the same address, and write before the client reconnects: the
    // writes are replayed from Last-Event-ID.
    server = await server.restart();
    const writer = new Emberbase(server.url);
    await writer.auth.login(eb.auth.user.email, PASSWORD);
    const feed2 = writer.collection(feed.name);
    await feed2.create({ n: 3 });
    await feed2.create({ n: 4 });
    await eventually("replayed and live events", () => sub.events.length === 4, 15_000);
    await feed2.create({ n: 5 });
    await eventually("event 5", () => sub.events.length === 5);
    assert.deepEqual(
      sub.events.map((e) => e.doc.data.n),
      [1, 2, 3, 4, 5],
    );
    sub.stop();
  });
});

describe("sign-in with a provider", () => {
  let server;
  let providers;
  before(async () => {
    providers = await startProviders();
    if (!providers) return;
    server = await startServer({ EMBERBASE_OUTBOUND__ALLOW_PRIVATE_HOSTS: '["127.0.0.1"]' });
    await providers.addGithub(server, ["http://app.test/"]);
  });
  after(async () => {
    providers?.stop();
    await server?.stop();
  });

  /** Follows redirects as a browser would, until one leads to the app. */
  async function browse(url) {
    let next = url;
    for (let i = 0; i < 10 && !next.startsWith("http://app.test/"); i++) {
      const response = await fetch(next, { redirect: "manual" });
      assert.equal(response.status, 302, `${next}: ${await response.text()}`);
      next = new URL(response.headers.get("location"), next).toString();
    }
    return new URL(next);
  }

  test("auth: signInWithOAuth, exchangeCode, providers and unlinkIdentity", { skip: !process.env.SDK_TEST_OIDC_DIR }, async () => {
    const eb = new Emberbase(server.url);
    assert.deepEqual(await eb.auth.providers(), [
      { name: "github", display_name: "GitHub", kind: "github", id_tokens: false },
    ]);
    // Outside a browser: the URL and the verifier, kept by the app.
    const { url, verifier } = await eb.auth.signInWithOAuth("github", { redirectUrl: "http://app.test/cb", redirect: false });
    assert.ok(url.startsWith(`${server.url}/v1/auth/oauth/github/authorize?`), url);
    const back = await browse(url);
    const code = back.searchParams.get("code");
    assert.ok(code?.startsWith("ebauth_"), back.toString());
    // Another verifier: refused, and the code is spent.
    const wrong = await failure(eb.auth.exchangeCode(code, "x".repeat(43)));
    assert.equal(wrong.status, 401);
    const again = await eb.auth.signInWithOAuth("github", { redirectUrl: "http://app.test/cb", redirect: false });
    const user = await eb.auth.exchangeCode((await browse(again.url)).searchParams.get("code"), again.verifier);
    assert.equal(user.email, "octocat@example.com");
    assert.equal(user.identities[0].provider, "github");
    assert.equal(eb.auth.user?.id, user.id);
    assert.equal((await eb.auth.me()).identities.length, 1);
    // The account has an address, so the identity can go.
    const unlinked = await eb.auth.unlinkIdentity("github");
    assert.deepEqual(unlinked.identities, []);
    const gone = await failure(eb.auth.unlinkIdentity("github"));
    assert.equal(gone.code, "not_found");
    // ID tokens are for OpenID Connect providers; GitHub has none.
    const none = await failure(eb.auth.signInWithIdToken("github", "a.b.c"));
    assert.equal(none.code, "bad_request");
  });
});
