// @ts-check
// The todo flows of examples/todo-web, as a Node script. Run `emberbase serve` first, then:
//   npm install && npm start            (EMBERBASE_URL picks another server)
import { Emberbase, EmberbaseError } from "emberbase";

/** @typedef {{ title: string, done: boolean }} Todo */

const eb = new Emberbase(process.env.EMBERBASE_URL ?? "http://127.0.0.1:7070");

// 1. An account (a fresh one each run).
const email = `quickstart-${Date.now()}@example.com`;
const user = await eb.auth.signup(email, "correct horse battery");
console.log(`signed up as ${user.email} (${user.id})`);

// 2. Live updates: every change to my todos, as it happens.
/** @type {import("emberbase").Collection<Todo>} */
const todos = eb.collection("todos");
const mine = `owner == "${user.id}"`;
/** @type {() => void} */
let live = () => {};
const ready = new Promise((resolve) => (live = () => resolve(null)));
const stop = todos.subscribe(
  (event) => {
    if (event.type === "reset") console.log("live: missed too much, refetch");
    else console.log(`live: ${event.type} "${event.doc.data.title}" (done: ${event.doc.data.done})`);
  },
  { filter: mine, onReady: () => live() },
);
await ready;

// 3. Writes: create, complete, and one more.
const milk = await todos.create({ title: "buy milk", done: false });
await todos.update(milk.id, { done: true });
await todos.create({ title: "walk the dog", done: false });

// 4. Reads: a filtered, sorted page, and every document through the iterator.
const open = await todos.list({ filter: `${mine} && data.done == false`, sort: "-created_at" });
console.log("open todos:", open.items.map((t) => t.data.title));
for await (const todo of todos.iterate({ filter: mine })) {
  console.log(`  ${todo.data.done ? "[x]" : "[ ]"} ${todo.data.title} (version ${todo.version})`);
}

// 5. A file: upload, then a link that works without a token for ten minutes.
await eb.files.upload("notes", `${user.id}/hello.txt`, "hello from Node", { contentType: "text/plain" });
const link = await eb.files.sign("notes", `${user.id}/hello.txt`, 600);
console.log("signed link:", link.url);

// 6. Errors are typed: status and code, never a silent failure.
try {
  await todos.update(milk.id, { title: "stale write" }, { ifVersion: 1 });
} catch (e) {
  if (e instanceof EmberbaseError) console.log(`expected failure: ${e.status} ${e.code}: ${e.message}`);
  else throw e;
}

// 7. Functions: call one with an `http` trigger, if the server has `http-hello` (examples/functions/http-hello).
try {
  console.log("hello says:", await eb.functions.call("http-hello", { name: "quickstart" }));
} catch (e) {
  if (e instanceof EmberbaseError && e.status === 404) console.log("no `http-hello` function deployed; skipping");
  else throw e;
}

await new Promise((r) => setTimeout(r, 200)); // let the last live events print
stop();
await eb.auth.logout();
console.log("done");
