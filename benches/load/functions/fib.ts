// Load harness: naive recursive fib(n) (n from the body, default 30), as an HTTP function.
import { register, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

function fib(n: i32): i32 {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

register((event: JSONValue): string | null => {
  const n = <i32>event.path("body.n").asNumber(30);
  return '{"status":200,"body":{"fib":' + fib(n).toString() + "}}";
});
