// examples/node-quickstart: type-checks against the SDK's declarations and runs its flows
// against a real server.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { startServer } from "./server.mjs";

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const example = resolve(sdk, "../../examples/node-quickstart");

test("node-quickstart type-checks and runs", async () => {
  if (!existsSync(join(example, "node_modules/emberbase"))) {
    // Links the SDK (a `file:` dependency): nothing is downloaded. `npm ci` installs exactly
    // the committed lockfile and never rewrites it (it fails instead when the lockfile is stale).
    execFileSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: example, stdio: "inherit" });
  }
  execFileSync(
    join(sdk, "node_modules/.bin/tsc"),
    [
      "--noEmit",
      "--allowJs",
      "--checkJs",
      "--module", "nodenext",
      "--moduleResolution", "nodenext",
      "--target", "es2022",
      "--lib", "es2022,dom",
      "--skipLibCheck",
      "--types", "node",
      "--typeRoots", join(sdk, "node_modules/@types"),
      "quickstart.mjs",
    ],
    { cwd: example, stdio: "inherit" },
  );
  const server = await startServer();
  try {
    const out = execFileSync(process.execPath, ["quickstart.mjs"], {
      cwd: example,
      env: { ...process.env, EMBERBASE_URL: server.url },
      encoding: "utf8",
      timeout: 30_000,
    });
    for (const line of [
      'live: create "buy milk" (done: false)',
      'live: update "buy milk" (done: true)',
      "open todos: [ 'walk the dog' ]",
      "expected failure: 412 precondition_failed",
      "done",
    ]) {
      assert.ok(out.includes(line), `missing ${JSON.stringify(line)} in:\n${out}`);
    }
  } finally {
    await server.stop();
  }
});
