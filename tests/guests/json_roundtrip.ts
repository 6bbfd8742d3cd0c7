// Test guest (tests/it/functions.rs): an HTTP function that parses its request body with the
// AssemblyScript SDK's JSON parser and answers it serialised again, with one string of it quoted
// on its own, and two objects built with `set`, so that the parser's and quote's fast paths, and
// the empty member arrays that scalars share, are checked against serde_json.
import { register, quote, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

register((event: JSONValue): string | null => {
  const body = event.get("body");
  const a = JSONValue.null();
  a.set("x", JSONValue.string("1"));
  const b = JSONValue.null();
  b.set("y", body.get("s"));
  const built = "[" + a.toString() + "," + b.toString() + "," + JSONValue.null().toString() + "]";
  return '{"status":200,"body":{"echo":' + body.toString() + ',"quoted":' + quote(body.get("s").asString()) +
    ',"built":' + built + "}}";
});
