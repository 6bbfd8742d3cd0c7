// examples/todo-web in headless Chromium: sign up, add, complete and delete todos, with a
// second tab following live. Skipped (and says so) where no Chromium is installed; CI installs
// one. CHROMIUM names the browser binary.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { admin, startServer } from "./server.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const chromium =
  process.env.CHROMIUM ??
  ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find((p) => existsSync(p));
if (!chromium) console.log("SKIPPED: the browser test needs Chromium (apt-get install chromium)");

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };

/** Serves the repository's files read-only, as a static host would serve the example. */
function staticServer() {
  const http = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = join(root, path);
    if (!file.startsWith(root) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((r) => http.listen(0, "127.0.0.1", () => r(http)));
}

let api;
let web;
let browser;
before(async () => {
  if (!chromium) return;
  api = await startServer();
  web = await staticServer();
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    protocolTimeout: 30_000,
    // Both tabs stay fully alive: the test acts in one while it watches the other.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-timer-throttling",
      "--disable-backgrounding-occluded-windows",
      "--disable-renderer-backgrounding",
    ],
  });
});
after(async () => {
  await browser?.close();
  web?.close();
  await api?.stop();
});

async function open() {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const url = `http://127.0.0.1:${web.address().port}/examples/todo-web/index.html?server=${encodeURIComponent(api.url)}`;
  await page.goto(url);
  page.errors = errors;
  return page;
}

const titles = (page) => page.$$eval("#todos li span", (spans) => spans.map((s) => s.textContent));
const doneTitles = (page) => page.$$eval("#todos li.done span", (spans) => spans.map((s) => s.textContent));

async function until(page, what, fn, ...args) {
  try {
    // Polled by timer: requestAnimationFrame does not run in a background tab.
    await page.waitForFunction(fn, { timeout: 10_000, polling: 50 }, ...args);
  } catch (e) {
    const text = await page.$eval("body", (b) => b.innerText).catch(() => "");
    throw new Error(`${what}: ${e.message}\npage: ${text}\nerrors: ${page.errors.join("; ")}`);
  }
}

// Run inside the page.
const hasTodo = (title) => [...document.querySelectorAll("#todos li span")].some((s) => s.textContent === title);
const lacksTodo = (title) => ![...document.querySelectorAll("#todos li span")].some((s) => s.textContent === title);

test("todo-web: sign up, add, complete, delete, live in a second tab", { skip: !chromium }, async () => {
  const first = await open();
  await until(first, "the sign-up form", () => !document.getElementById("signed-out").hidden);
  await first.type("#email", `web-${Date.now()}@example.com`);
  await first.type("#password", "correct horse battery");
  await first.click("#signup");
  await until(first, "signed in", () => !document.getElementById("signed-in").hidden);
  await until(first, "live", () => document.getElementById("status").textContent === "live");

  // The second tab shares the session through localStorage.
  const second = await open();
  await until(second, "signed in, second tab", () => !document.getElementById("signed-in").hidden);
  await until(second, "live, second tab", () => document.getElementById("status").textContent === "live");

  await first.bringToFront();
  await first.type("#title", "buy milk");
  await first.keyboard.press("Enter");
  await until(first, "the new todo", hasTodo, "buy milk");
  await until(second, "the new todo, live", hasTodo, "buy milk");

  await first.click("#todos li input[type=checkbox]");
  await until(second, "completed, live", () => document.querySelector("#todos li.done span")?.textContent === "buy milk");
  assert.deepEqual(await doneTitles(second), ["buy milk"]);

  await second.bringToFront();
  await second.type("#title", "walk the dog");
  await second.click("#add-form button");
  await until(first, "the second tab's todo", hasTodo, "walk the dog");
  assert.deepEqual(await titles(first), ["buy milk", "walk the dog"]);

  await second.click("#todos li button");
  await until(first, "deleted, live", lacksTodo, "buy milk");
  assert.deepEqual(await titles(first), ["walk the dog"]);

  // A reload shows the same list from the server.
  await first.bringToFront();
  await first.reload();
  await until(first, "after a reload", hasTodo, "walk the dog");
  assert.deepEqual(await titles(first), ["walk the dog"]);
  assert.deepEqual([...first.errors, ...second.errors], []);
});

test("seven live queries in one page share one connection and all receive events", { skip: !chromium }, async () => {
  const names = Array.from({ length: 7 }, (_, i) => `live${i}_${Date.now()}`);
  for (const name of names) {
    await admin(api, "PUT", `/v1/admin/collections/${name}`, {
      rules: { read: "auth != null", create: "auth != null", update: null, delete: null },
    });
  }
  const page = await open();
  // Seven subscriptions from the SDK in the page, counting the realtime requests it makes.
  await page.evaluate(
    async (server, names, email) => {
      const { Emberbase } = await import("/sdk/typescript/dist/emberbase.browser.js");
      window.streams = 0;
      const counted = (input, init) => {
        const url = input instanceof Request ? input.url : String(input);
        if (url.includes("/v1/realtime")) window.streams += url.includes("/subscriptions/") ? 0 : 1;
        return fetch(input, init);
      };
      const eb = new Emberbase(server, { fetch: counted });
      await eb.auth.signup(email, "correct horse battery");
      window.got = names.map(() => []);
      window.ready = 0;
      names.forEach((name, i) =>
        eb.collection(name).subscribe((e) => window.got[i].push(e.type === "reset" ? "reset" : e.doc.data.n), {
          onReady: () => window.ready++,
        }),
      );
    },
    api.url,
    names,
    `seven-${Date.now()}@example.com`,
  );
  await until(page, "seven subscriptions live", () => window.ready === 7);
  for (const [i, name] of names.entries()) await admin(api, "POST", `/v1/collections/${name}/docs`, { n: i });
  await until(page, "an event on every query", () => window.got.every((events) => events.length === 1));
  assert.deepEqual(await page.evaluate(() => window.got), names.map((_, i) => [i]));
  assert.equal(await page.evaluate(() => window.streams), 1, "one realtime stream for seven queries");
  assert.deepEqual(page.errors, []);
});
