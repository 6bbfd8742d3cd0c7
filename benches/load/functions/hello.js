// Load harness: the smallest JavaScript HTTP function, for the round trip of a fresh instance.
export default function handle(event) {
  return { status: 200, body: { hello: event.body?.name ?? "world" } };
}
