// Load harness: a PocketBase JS hook on creates of hooked_w that lets every write through.
onRecordCreateRequest((e) => {
  e.next();
}, "hooked_w");
