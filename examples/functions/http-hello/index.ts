// An HTTP function: POST /v1/functions/http-hello {"name": "Ada"} answers a greeting and who called.
// Trigger: {"on": "http"}.
import { register, quote, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

register((event: JSONValue): string | null => {
  const name = event.path("body.name").asString("world");
  const caller = event.path("auth.email").asString("anonymous");
  return '{"status":200,"body":{"greeting":' + quote("hello, " + name) + ',"caller":' + quote(caller) + "}}";
});
