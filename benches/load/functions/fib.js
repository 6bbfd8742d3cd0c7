// Load harness: naive recursive fib(n) (n from the body, default 30), as a JavaScript HTTP
// function: the same code as pb_fib.pb.js.
function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

export default function handle(event) {
  return { status: 200, body: { fib: fib(event.body?.n ?? 30) } };
}
