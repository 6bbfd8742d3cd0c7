// Fails when src/generated/schema.ts is not what openapi-typescript makes of ../openapi.json
// (run `npm run generate` after regenerating the OpenAPI document).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "emberbase-schema-"));
try {
  const fresh = join(dir, "schema.ts");
  execFileSync(
    process.execPath,
    ["node_modules/openapi-typescript/bin/cli.js", "../openapi.json", "-o", fresh, "--silent"],
    { stdio: "inherit" },
  );
  if (readFileSync(fresh, "utf8") !== readFileSync("src/generated/schema.ts", "utf8")) {
    console.error("src/generated/schema.ts is stale: run `npm run generate` in sdk/typescript");
    process.exit(1);
  }
  console.log("src/generated/schema.ts is up to date");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
