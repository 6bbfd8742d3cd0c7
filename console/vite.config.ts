// Builds the console into dist/, which the server embeds and serves at /_/ (src/api/console.rs).
// Hashed file names under assets/ are cached for a year; index.html is not cached, and carries
// the Content-Security-Policy nonce the server fills in for each response.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/_/",
  resolve: {
    // The console calls the API through the TypeScript SDK, built from its source.
    alias: { emberbase: fileURLToPath(new URL("../sdk/typescript/src/index.ts", import.meta.url)) },
  },
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // Every script is a file: nothing inline, so the policy needs no 'unsafe-inline'.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
});
