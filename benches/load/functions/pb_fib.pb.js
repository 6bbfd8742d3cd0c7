// Load harness: the same naive fib(30) as a PocketBase JS hook.
routerAdd("POST", "/fib", (e) => {
  function fib(n) {
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
  }
  return e.json(200, { fib: fib(30) });
});
