// examples/todo-web in headless Chromium (Debian's, driven by playwright-core): sign up, add, complete and delete todos, with a
// second tab following live. Skipped (and says so) where no Chromium is installed; CI installs
// one. CHROMIUM names the browser binary.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium as driver } from "playwright-core";
import { admin, startProviders, startServer } from "./server.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const chromium =
  process.env.CHROMIUM ??
  ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find((p) => existsSync(p));
if (!chromium) console.log("SKIPPED: the browser test needs Chromium (apt-get install chromium)");
/** Where the pages' screenshots go, to look at after a run. */
const shots = join(root, "target", "screenshots");
mkdirSync(shots, { recursive: true });

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };

/** Serves the repository's files read-only, as a static host would serve the example. While
 * `offline` is set, it drops every connection, as an unreachable host would. */
function staticServer() {
  const http = createServer((req, res) => {
    if (http.offline) {
      req.socket.destroy();
      return;
    }
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    // A directory serves its index.html, as static hosts do.
    const file = join(root, path.endsWith("/") ? `${path}index.html` : path);
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
let providers;
before(async () => {
  if (!chromium) return;
  web = await staticServer();
  // Sign-in links may lead back to the example's page.
  const page = `http://127.0.0.1:${web.address().port}/examples/todo-web/`;
  api = await startServer({
    EMBERBASE_AUTH__REDIRECT_URLS: JSON.stringify([page]),
    // The test providers are on loopback.
    EMBERBASE_OUTBOUND__ALLOW_PRIVATE_HOSTS: '["127.0.0.1"]',
  });
  providers = await startProviders();
  await providers?.addGithub(api, [page]);
  browser = await driver.launch({
    executablePath: chromium,
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
  providers?.stop();
  await browser?.close();
  web?.close();
  await api?.stop();
});

/** One browser profile, whose tabs share storage (the session) as a user's tabs do. */
let profile;

async function open() {
  profile ??= await browser.newContext();
  const page = await profile.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const url = `http://127.0.0.1:${web.address().port}/examples/todo-web/index.html?server=${encodeURIComponent(api.url)}`;
  await page.goto(url);
  page.errors = errors;
  return page;
}

/** The example in a fresh profile (signed out, its own storage), collecting page errors. */
async function freshPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  const url = `http://127.0.0.1:${web.address().port}/examples/todo-web/?server=${encodeURIComponent(api.url)}`;
  await page.goto(url);
  return { context, page, url };
}

const titles = (page) => page.$$eval("#todos li span", (spans) => spans.map((s) => s.textContent));
const doneTitles = (page) => page.$$eval("#todos li.done span", (spans) => spans.map((s) => s.textContent));

async function until(page, what, fn, ...args) {
  const timeout = typeof args[args.length - 1] === "number" ? args.pop() : 10_000;
  try {
    // Polled by timer: requestAnimationFrame does not run in a background tab.
    await page.waitForFunction(fn, args[0], { timeout, polling: 50 });
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
  await first.fill("#email", `web-${Date.now()}@example.com`);
  await first.fill("#password", "correct horse battery");
  await first.click("#signup");
  await until(first, "signed in", () => !document.getElementById("signed-in").hidden);
  await until(first, "live", () => document.getElementById("status").textContent === "live");

  // The second tab shares the session through localStorage.
  const second = await open();
  await until(second, "signed in, second tab", () => !document.getElementById("signed-in").hidden);
  await until(second, "live, second tab", () => document.getElementById("status").textContent === "live");

  await first.bringToFront();
  await first.fill("#title", "buy milk");
  await first.keyboard.press("Enter");
  await until(first, "the new todo", hasTodo, "buy milk");
  await until(second, "the new todo, live", hasTodo, "buy milk");

  await first.click("#todos li input[type=checkbox]");
  await until(second, "completed, live", () => document.querySelector("#todos li.done span")?.textContent === "buy milk");
  assert.deepEqual(await doneTitles(second), ["buy milk"]);

  await second.bringToFront();
  await second.fill("#title", "walk the dog");
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

test("todo-web: sign in with a link from the mail, which works once", { skip: !chromium }, async () => {
  const { context, page, url } = await freshPage();
  await until(page, "the sign-in form", () => !document.getElementById("signed-out").hidden);
  const email = `link-${Date.now()}@example.com`;
  await page.fill("#email", email);
  await page.click("#magic-link");
  await until(page, "the mail sent", () => document.getElementById("sent").textContent.includes("Check"));
  await page.screenshot({ path: join(shots, "todo-web-link-sent.png") });

  // The mail (in the outbox: no SMTP here) links back to this page with a token.
  let link;
  for (let i = 0; i < 200 && !link; i++) {
    const outbox = await admin(api, "GET", "/v1/admin/outbox");
    const mail = outbox.items.find((m) => m.to === email);
    link = mail?.body.match(/Or open this link: (\S+)/)?.[1];
    if (!link) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(link?.startsWith(url.replace(/\?.*/, "")), `a link to the page: ${link}`);
  await page.goto(link);
  await until(page, "signed in by the link", () => !document.getElementById("signed-in").hidden);
  assert.equal(await page.$eval("#who", (e) => e.textContent), email);
  await until(page, "the token gone from the address bar", () => !location.search.includes("token="));
  await until(page, "live", () => document.getElementById("status").textContent === "live");
  await page.screenshot({ path: join(shots, "todo-web-link-signed-in.png") });

  // The link works once: opened again, signed out, it says so.
  await page.click("#logout");
  await until(page, "signed out", () => !document.getElementById("signed-out").hidden);
  await page.goto(link);
  await until(page, "the used link refused", () => document.getElementById("error").textContent.includes("used"));
  assert.equal(await page.$eval("#signed-in", (e) => e.hidden), true);
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("todo-web: sign in with GitHub through the redirect flow", { skip: !chromium || !process.env.SDK_TEST_OIDC_DIR }, async () => {
  const { context, page } = await freshPage();
  // A button for each provider the server offers.
  await until(page, "the GitHub button", () => [...document.querySelectorAll("#providers button")].some((b) => b.textContent === "Sign in with GitHub"));
  await page.screenshot({ path: join(shots, "todo-web-providers.png") });
  // To the provider and back with a one-time code, which the page exchanges with the
  // verifier it kept in session storage.
  await page.click("#providers button");
  await until(page, "signed in with GitHub", () => !document.getElementById("signed-in").hidden);
  assert.equal(await page.$eval("#who", (e) => e.textContent), "octocat@example.com");
  await until(page, "the code gone from the address bar", () => !location.search.includes("code="));
  assert.equal(await page.evaluate(() => sessionStorage.getItem("emberbase.oauth.verifier")), null);
  assert.deepEqual(page.errors, []);
  await context.close();
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
    async ([server, names, email]) => {
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
    [api.url, names, `seven-${Date.now()}@example.com`],
  );
  await until(page, "seven subscriptions live", () => window.ready === 7);
  for (const [i, name] of names.entries()) await admin(api, "POST", `/v1/collections/${name}/docs`, { n: i });
  await until(page, "an event on every query", () => window.got.every((events) => events.length === 1));
  assert.deepEqual(await page.evaluate(() => window.got), names.map((_, i) => [i]));
  assert.equal(await page.evaluate(() => window.streams), 1, "one realtime stream for seven queries");
  assert.deepEqual(page.errors, []);
});

test("todo-web offline: cached todos, changes kept across a reload, sent in order, and a conflict shown", { skip: !chromium }, async () => {
  // A fresh profile: its own localStorage, IndexedDB and service worker.
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.errors = errors;
  const url = `http://127.0.0.1:${web.address().port}/examples/todo-web/index.html?server=${encodeURIComponent(api.url)}`;
  await page.goto(url);
  await until(page, "the sign-up form", () => !document.getElementById("signed-out").hidden);
  await page.fill("#email", `offline-${Date.now()}@example.com`);
  await page.fill("#password", "correct horse battery");
  await page.click("#signup");
  await until(page, "live", () => document.getElementById("status").textContent === "live");
  await until(page, "the service worker in control", () => navigator.serviceWorker.controller !== null);
  for (const title of ["one", "two"]) {
    await page.fill("#title", title);
    await page.keyboard.press("Enter");
    await until(page, `todo ${title}`, hasTodo, title);
  }
  const session = await page.evaluate(() => JSON.parse(localStorage.getItem("emberbase.session")));
  const mine = async () => {
    const filter = encodeURIComponent(`owner == "${session.user.id}"`);
    return (await admin(api, "GET", `/v1/collections/todos/docs?filter=${filter}&sort=id`)).items;
  };

  // Offline: the browser's offline mode for the profile, and the page's host gone too, for the
  // service worker's own requests.
  const goOffline = async (offline) => {
    web.offline = offline;
    await context.setOffline(offline);
  };
  await goOffline(true);
  await page.fill("#title", "three");
  await page.keyboard.press("Enter");
  await until(page, "the todo added offline", hasTodo, "three");
  await page.click("#todos li input[type=checkbox]");
  await until(page, "ticked offline", () => document.querySelector("#todos li.done span")?.textContent === "one");
  await until(page, "two changes waiting", () => document.getElementById("status").textContent === "offline · 2 changes waiting");
  assert.deepEqual((await mine()).map((t) => t.data.title), ["one", "two"], "nothing reached the server yet");

  // A reload, still offline: the service worker serves the page, the cache the todos and queue.
  await page.reload();
  await until(page, "the cached todos after an offline reload", hasTodo, "three");
  assert.deepEqual(await titles(page), ["one", "two", "three"]);
  assert.deepEqual(await doneTitles(page), ["one"]);
  await until(page, "the queue after the reload", () => document.getElementById("status").textContent.includes("2 changes waiting"));
  await page.screenshot({ path: join(shots, "todo-web-offline.png") });

  // Back online: the changes reach the server, in the order they were made.
  await goOffline(false);
  await until(page, "sent and live", () => document.getElementById("status").textContent === "live", 40_000);
  const stored = await mine();
  assert.deepEqual(
    stored.map((t) => [t.data.title, t.data.done, t.version]),
    [
      ["one", true, 2],
      ["two", false, 1],
      ["three", false, 1],
    ],
  );

  // A conflict: ticked here offline, renamed elsewhere meanwhile. The page keeps the other
  // version and says so.
  await goOffline(true);
  await page.click("#todos li:nth-child(2) input[type=checkbox]");
  await until(page, "ticked offline", () => document.getElementById("status").textContent.includes("1 change waiting"));
  await admin(api, "PATCH", `/v1/collections/todos/docs/${stored[1].id}`, { title: "two (renamed elsewhere)" });
  await goOffline(false);
  await until(page, "the conflict notice", () => document.getElementById("notice").textContent.includes("changed on another device"), 40_000);
  await until(page, "the other version shown", hasTodo, "two (renamed elsewhere)");
  assert.deepEqual(await doneTitles(page), ["one"]);
  await page.screenshot({ path: join(shots, "todo-web-conflict.png") });
  assert.deepEqual(errors, []);
  await context.close();
});
