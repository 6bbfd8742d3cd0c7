// `npx emberbase functions bundle|deploy`: a TypeScript function (the order-total example, two
// files) bundled with esbuild and uploaded by the built CLI, then run by the real server; its
// types check with tsc; a thrown error's stack names the TypeScript functions.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Emberbase, EmberbaseError } from "../dist/index.js";
import { admin, eventually, startServer } from "./server.mjs";

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const example = resolve(sdk, "../../examples/functions/order-total");
const tsc = join(sdk, "node_modules/.bin/tsc");

let server;
let dir;
before(async () => {
  server = await startServer();
  dir = mkdtempSync(join(tmpdir(), "emberbase-functions-"));
});
after(async () => {
  await server.stop({ keepData: false });
  rmSync(dir, { recursive: true, force: true });
});

function cli(args) {
  return spawnSync(process.execPath, [join(sdk, "dist/cli.js"), ...args], {
    env: { ...process.env, EB_SERVICE_KEY: server.key, EB_URL: server.url },
    encoding: "utf8",
  });
}

test("functions deploy: a TypeScript hook, bundled and uploaded, computes and refuses", async () => {
  const run = cli([
    "functions", "deploy", "order-total", join(example, "index.ts"), "--config", join(example, "config.json"),
  ]);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stderr, /deployed order-total: version 1/);
  assert.match(run.stderr, /configured order-total/);
  const info = await admin(server, "GET", "/v1/admin/functions/order-total");
  assert.equal(info.language, "javascript");

  // Writes as the service (the SDK's fetch, with the service key added).
  const asService = (input, init = {}) =>
    fetch(input, { ...init, headers: { ...Object.fromEntries(new Headers(init.headers)), Authorization: `Bearer ${server.key}` } });
  const eb = new Emberbase(server.url, { fetch: asService });
  const orders = eb.collection("orders");
  const order = await orders.set("o1", {
    lines: [
      { sku: "tea", quantity: 2, unit_cents: 350 },
      { sku: "pot", quantity: 1, unit_cents: 1200 },
    ],
    total_cents: 1,
  });
  assert.equal(order.data.total_cents, 1900);
  const updated = await orders.update("o1", { lines: [{ sku: "tea", quantity: 3, unit_cents: 350 }] });
  assert.equal(updated.data.total_cents, 1050);
  const refused = await orders.create({ lines: [] }).catch((e) => e);
  assert.ok(refused instanceof EmberbaseError, String(refused));
  assert.equal(refused.status, 400);
  assert.equal(refused.code, "validation_failed");
  assert.equal(refused.details.message, "an order needs at least one line");
  const log = await eventually("the hook's log line", async () => {
    const { items } = await admin(server, "GET", "/v1/admin/functions/order-total/invocations?limit=10");
    return items.find((r) => r.logs.some((l) => l.message === "order o1: 2 lines, 1900 cents"));
  });
  assert.equal(log.status, "ok");
});

test("functions bundle: one ES module; the SDK's types check the source", () => {
  const out = join(dir, "bundle.js");
  const run = cli(["functions", "bundle", join(example, "index.ts"), "--out", out]);
  assert.equal(run.status, 0, run.stderr);
  const code = readFileSync(out, "utf8");
  // money.ts is inside, the type-only import is gone, and the default export remains.
  assert.match(code, /function totalCents/);
  assert.doesNotMatch(code, /emberbase\/function/);
  assert.match(code, /export \{[^}]*as default/);

  const app = mkdtempSync(join(dir, "check-"));
  writeFileSync(
    join(app, "fn.ts"),
    `import type { HttpEvent, HttpAnswer } from "emberbase/function";
export default async function handle(event: HttpEvent<{ n: number }>): Promise<HttpAnswer> {
  const doc = await emberbase.db.get<{ title: string }>("posts", "p1");
  const title: string | undefined = doc?.data.title;
  const res = await emberbase.fetch("https://api.example.com", { method: "POST", body: { n: event.body.n } });
  const secret: string | null = emberbase.env.get("KEY");
  await emberbase.mail.send({ to: "a@example.com", subject: "s", text: String(res.status) + secret });
  console.log(title);
  // @ts-expect-error: db.get takes a collection and an id
  await emberbase.db.get("posts");
  return { status: 200, body: { title } };
}
`,
  );
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, target: "ES2022", module: "ES2022", moduleResolution: "bundler",
        lib: ["ES2022"], types: [], paths: { "emberbase/function": [join(sdk, "dist/function.d.ts")] },
      },
      include: ["*.ts"],
    }),
  );
  const checked = spawnSync(process.execPath, [tsc, "-p", app], { encoding: "utf8" });
  assert.equal(checked.status, 0, checked.stdout + checked.stderr);
});

test("functions deploy: source that does not parse is refused with where, and a throw has its stack", async () => {
  const broken = join(dir, "broken.ts");
  writeFileSync(broken, "export default function handle() {\n  return JSON.parse(;\n}\n");
  // esbuild finds it first, with the file, line and column.
  const refused = cli(["functions", "deploy", "broken", broken]);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /broken\.ts:2:20: ERROR: Unexpected ";"/);

  const thrower = join(dir, "thrower.ts");
  writeFileSync(
    thrower,
    `function check(n: number): void {
  if (n > 1) throw new RangeError("too big: " + n);
}
export default async function handle(event: { body: { n: number } }) {
  check(event.body.n);
  return { status: 200, body: { ok: true } };
}
`,
  );
  assert.equal(cli(["functions", "deploy", "thrower", thrower]).status, 0);
  await admin(server, "PUT", "/v1/admin/functions/thrower/config", { triggers: [{ on: "http" }] });
  const eb = new Emberbase(server.url);
  const failed = await eb.functions.call("thrower", { n: 5 }).catch((e) => e);
  assert.equal(failed.status, 502);
  // An HTTP call's record is written after its answer.
  const record = await eventually("the failed call's record", async () => {
    const { items } = await admin(server, "GET", "/v1/admin/functions/thrower/invocations?limit=1");
    return items[0];
  });
  assert.match(record.error, /RangeError: too big: 5/);
  assert.match(record.error, /at check \(function\.js:\d+/);
  assert.match(record.error, /at handle \(function\.js:\d+/);
});
