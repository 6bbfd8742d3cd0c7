// Starts the real `emberbase` binary on 127.0.0.1 with a temporary data directory.
// SDK_TEST_BIN names the binary (the Rust test suite passes the one it built); otherwise
// target/debug/emberbase of this repository.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const binary = process.env.SDK_TEST_BIN ?? join(root, "target/debug/emberbase");

/** A running server: `url`, `key` (the service key), `stop()`, `restart()`. */
export async function startServer(env = {}, { bind = "127.0.0.1:0", dataDir } = {}) {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), "emberbase-sdk-"));
  const child = spawn(binary, ["serve", "--bind", bind, "--data-dir", dir], {
    env: {
      ...process.env,
      EMBERBASE_LOG__LEVEL: "warn,emberbase=info",
      // Cheap hashing, and room for signups: the tests sign up many users from one address.
      EMBERBASE_AUTH__ARGON2_MEMORY_KIB: "1024",
      EMBERBASE_AUTH__ARGON2_ITERATIONS: "1",
      EMBERBASE_AUTH__SIGNUPS_PER_IP_PER_HOUR: "10000",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const address = await new Promise((resolveAddress, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start within 30 s")), 30_000);
    child.once("exit", (code) => reject(new Error(`the server exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = /listening on http:\/\/(\S+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolveAddress(match[1]);
      }
    });
  });
  const key = readFileSync(join(dir, "service_key"), "utf8").trim();
  const exited = new Promise((r) => child.once("exit", r));
  return {
    url: `http://${address}`,
    address,
    key,
    dir,
    /** Stops the server (SIGKILL with `kill: true`); keeps the data unless `keepData` is false. */
    async stop({ kill = false, keepData = false } = {}) {
      child.kill(kill ? "SIGKILL" : "SIGTERM");
      await exited;
      if (!keepData) rmSync(dir, { recursive: true, force: true });
    },
    /** Starts the same data directory on the same address again. */
    async restart() {
      await this.stop({ kill: true, keepData: true });
      return startServer(env, { bind: address, dataDir: dir });
    },
  };
}

/** A request with the service key, for test setup. */
export async function admin(server, method, path, body) {
  const send = () =>
    fetch(`${server.url}${path}`, {
      method,
      headers: {
        Authorization: `Bearer ${server.key}`,
        ...(body instanceof Uint8Array ? { "Content-Type": "application/wasm" } : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : body instanceof Uint8Array ? body : JSON.stringify(body),
    });
  // A test that blocks the event loop (spawnSync of the CLI) can outlast the server's keep-alive,
  // and fetch then reuses a connection the server has just closed: sent again on a new one.
  const response = await send().catch((e) => {
    if (["UND_ERR_SOCKET", "ECONNRESET"].includes(e?.cause?.code)) return send();
    throw e;
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Resolves when `check()` returns a truthy value; fails after `ms`. */
export async function eventually(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The TOTP code (RFC 6238: SHA-1, 6 digits, 30 s) of a base32 secret, `steps` from now. */
export function totp(secret, steps = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 30_000) + steps));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

/**
 * The test sign-in providers of tests/oidc (whose packages the Rust suite installs; it passes
 * their folder in SDK_TEST_OIDC_DIR, else null): `url` and `stop()`. `addGithub(server,
 * redirectUrls)` makes their GitHub-style OAuth2 server the `github` provider of `server`.
 */
export async function startProviders() {
  const dir = process.env.SDK_TEST_OIDC_DIR;
  if (!dir) return null;
  const child = spawn(process.execPath, ["provider.mjs"], { cwd: dir, stdio: ["pipe", "pipe", "inherit"] });
  const url = await new Promise((resolveUrl, reject) => {
    child.once("exit", (code) => reject(new Error(`the test providers exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (line.startsWith("{")) resolveUrl(JSON.parse(line).url);
    });
  });
  return {
    url,
    stop: () => child.kill(),
    addGithub: (server, redirectUrls) =>
      admin(server, "PUT", "/v1/admin/auth/providers/github", {
        client_id: "gh-client",
        client_secret: "gh-secret",
        redirect_urls: redirectUrls,
        authorization_url: `${url}/github/login/oauth/authorize`,
        token_url: `${url}/github/login/oauth/access_token`,
        userinfo_url: `${url}/github/user`,
        callback_url: `${server.url}/v1/auth/oauth/github/callback`,
      }),
  };
}
