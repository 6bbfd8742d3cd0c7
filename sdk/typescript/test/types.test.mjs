// `npx emberbase types`: types generated from the collections' JSON Schemas type
// `eb.collection(name)` in an app, and `tsc` refuses a wrong field. Runs the built CLI
// (dist/cli.js) against the real server.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { admin, startServer } from "./server.mjs";

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(sdk, "node_modules/.bin/tsc");

// Nested objects, arrays, enums, optional fields and a $ref.
const GUESTBOOK = {
  type: "object",
  required: ["text", "mood", "author"],
  additionalProperties: false,
  properties: {
    text: { type: "string", maxLength: 500 },
    stars: { type: "integer", minimum: 1, maximum: 5 },
    mood: { enum: ["happy", "sad"] },
    tags: { type: "array", items: { type: "string" } },
    author: { $ref: "#/$defs/person" },
  },
  $defs: {
    person: {
      type: "object",
      required: ["name"],
      additionalProperties: false,
      properties: { name: { type: "string" }, links: { type: "array", items: { $ref: "#/$defs/link" } } },
    },
    link: { type: "object", required: ["url"], properties: { url: { type: "string" } } },
  },
};

let server;
let dir;
before(async () => {
  server = await startServer();
  dir = mkdtempSync(join(tmpdir(), "emberbase-types-"));
  await admin(server, "PUT", "/v1/admin/collections/guest_book", { schema: GUESTBOOK });
  // Another schema with a definition of the same name: the two must not collide.
  await admin(server, "PUT", "/v1/admin/collections/people", {
    schema: { type: "object", properties: { who: { $ref: "#/$defs/person" } }, $defs: { person: { type: "string" } } },
  });
  await admin(server, "PUT", "/v1/admin/collections/free", { rules: { read: "", create: "" } });
});
after(async () => {
  await server.stop({ keepData: false });
  rmSync(dir, { recursive: true, force: true });
});

function cli(args, env = {}) {
  return spawnSync(process.execPath, [join(sdk, "dist/cli.js"), ...args], {
    env: { ...process.env, EB_SERVICE_KEY: server.key, ...env },
    encoding: "utf8",
  });
}

/** Type-checks `source` as an app next to the generated types; returns tsc's result. */
function typecheck(name, source) {
  const app = mkdtempSync(join(dir, `${name}-`));
  writeFileSync(join(app, "emberbase-types.ts"), readFileSync(join(dir, "emberbase-types.ts")));
  writeFileSync(join(app, "app.ts"), source);
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: "ES2020",
        module: "ES2020",
        moduleResolution: "bundler",
        lib: ["ES2020", "DOM"],
        skipLibCheck: true,
        paths: { emberbase: [join(sdk, "dist/index.d.ts")] },
      },
      include: ["*.ts"],
    }),
  );
  return spawnSync(process.execPath, [tsc, "-p", app], { encoding: "utf8" });
}

test("types: generated from the stored schemas, they type eb.collection(name)", () => {
  const out = join(dir, "emberbase-types.ts");
  const run = cli(["types", "--url", server.url, "--out", out]);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stderr, /3 collections, 2 with a schema/);
  const text = readFileSync(out, "utf8");
  assert.match(text, /export type GuestBook = GuestBookSchema\.GuestBook;/);
  assert.match(text, /"free": Record<string, unknown>;/);

  const good = typecheck(
    "good",
    `import { Emberbase } from "emberbase";
const eb = new Emberbase("http://127.0.0.1:7070");
export async function app() {
  const doc = await eb.collection("guest_book").create({
    text: "hello", mood: "happy", tags: ["a"], author: { name: "Ada", links: [{ url: "https://x" }] },
  });
  const text: string = doc.data.text;
  const stars: number | undefined = doc.data.stars;
  const mood: "happy" | "sad" = doc.data.mood;
  const who: string = doc.data.author.name;
  const who2: string | undefined = (await eb.collection("people").get("p"))?.data.who;
  const free = await eb.collection("free").create({ anything: [1, 2] });
  const own = eb.collection<{ n: number }>("elsewhere");
  return [text, stars, mood, who, who2, free.data.anything, own];
}
`,
  );
  assert.equal(good.status, 0, good.stdout + good.stderr);

  // A wrong field type, a value outside the enum and a missing required field are compile errors.
  const bad = typecheck(
    "bad",
    `import { Emberbase } from "emberbase";
const eb = new Emberbase("http://127.0.0.1:7070");
export async function app() {
  await eb.collection("guest_book").create({ text: 5, mood: "happy", author: { name: "Ada" } });
  await eb.collection("guest_book").create({ text: "x", mood: "angry", author: { name: "Ada" } });
  await eb.collection("guest_book").create({ text: "x", mood: "sad" });
}
`,
  );
  assert.notEqual(bad.status, 0, "tsc accepted a wrong field");
  const errors = bad.stdout.split("\n").filter((line) => line.includes("app.ts("));
  assert.deepEqual(
    errors.map((line) => /app\.ts\((\d+),/.exec(line)[1]),
    ["4", "5", "6"],
    bad.stdout,
  );
});

test("types: a clear refusal without a key or with a bad option", () => {
  const noKey = cli(["types", "--url", server.url], { EB_SERVICE_KEY: "" });
  assert.equal(noKey.status, 2);
  assert.match(noKey.stderr, /EB_SERVICE_KEY/);
  const wrongKey = cli(["types", "--url", server.url], { EB_SERVICE_KEY: "ebsk_wrong" });
  assert.equal(wrongKey.status, 1);
  assert.match(wrongKey.stderr, /answered 401/);
  const unknown = cli(["types", "--colour", "red"]);
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /unknown option --colour/);
  const toStdout = cli(["types", "--url", server.url]);
  assert.equal(toStdout.status, 0);
  assert.match(toStdout.stdout, /declare module "emberbase"/);
});
