// The `emberbase` global and `console` of JavaScript functions, over the engine's two native
// functions. Every host request is synchronous underneath; the API returns promises so that
// code written for other platforms (`await fetch(...)`) reads the same.
(function (global) {
  "use strict";
  const call = global.__eb_call;
  const log = global.__eb_log;
  delete global.__eb_call;
  delete global.__eb_log;

  class EmberbaseError extends Error {
    constructor(code, message) {
      super(message);
      this.name = "EmberbaseError";
      this.code = code;
    }
  }

  function request(body) {
    const reply = JSON.parse(call(JSON.stringify(body)));
    if (reply !== null && typeof reply === "object" && reply.error && typeof reply.error === "object" &&
        typeof reply.error.code === "string") {
      throw new EmberbaseError(reply.error.code, reply.error.message);
    }
    return reply;
  }

  function op(fn) {
    return function () {
      try {
        return Promise.resolve(fn.apply(null, arguments));
      } catch (e) {
        return Promise.reject(e);
      }
    };
  }

  function show(value) {
    if (typeof value === "string") return value;
    if (value instanceof Error) return value.stack ? value.name + ": " + value.message + "\n" + value.stack : String(value);
    try {
      const json = JSON.stringify(value);
      return json === undefined ? String(value) : json;
    } catch (e) {
      return String(value);
    }
  }

  function logger(level) {
    return function () {
      const parts = [];
      for (let i = 0; i < arguments.length; i++) parts.push(show(arguments[i]));
      log(level, parts.join(" "));
    };
  }

  class Response {
    constructor(reply) {
      this.status = reply.status;
      this.ok = reply.status >= 200 && reply.status < 300;
      this.headers = reply.headers || {};
      this.body = reply.body !== undefined ? reply.body : null;
      this.bodyBase64 = reply.body_base64 !== undefined ? reply.body_base64 : null;
    }
    text() {
      if (this.body === null) return Promise.reject(new TypeError("the body is not UTF-8 text; read bodyBase64"));
      return Promise.resolve(this.body);
    }
    json() {
      return this.text().then(JSON.parse);
    }
  }

  // A request with the options given in JavaScript's camelCase under the host's names.
  function withOptions(body, options, names) {
    if (options) {
      for (const name in names) {
        if (options[name] !== undefined) body[names[name]] = options[name];
      }
    }
    return request(body);
  }
  const version = { ifVersion: "if_version" };

  const db = Object.freeze({
    get: op((collection, id) => request({ op: "get", collection, id })),
    create: op((collection, data) => request({ op: "create", collection, data })),
    set: op((collection, id, data, options) =>
      withOptions({ op: "set", collection, id, data }, options, version)),
    update: op((collection, id, data, options) =>
      withOptions({ op: "update", collection, id, data }, options,
        { ifVersion: "if_version", transforms: "transforms" })),
    delete: op((collection, id, options) =>
      withOptions({ op: "delete", collection, id }, options, version)),
    query: op((collection, options) =>
      withOptions({ op: "query", collection }, options,
        { filter: "filter", sort: "sort", limit: "limit", cursor: "cursor", count: "count" })),
    aggregate: op((collection, options) =>
      withOptions({ op: "aggregate", collection }, options,
        { filter: "filter", groupBy: "group_by", ops: "ops" })),
  });

  const fetch = op((url, init) => {
    const body = { op: "fetch", url: String(url) };
    if (init) {
      if (init.method !== undefined) body.method = init.method;
      if (init.headers !== undefined) body.headers = init.headers;
      if (init.body !== undefined && init.body !== null) {
        if (typeof init.body === "string") {
          body.body = init.body;
        } else {
          // An object goes as JSON, and says so unless the caller set a content type.
          body.body = JSON.stringify(init.body);
          const headers = Object.assign({}, body.headers);
          if (!Object.keys(headers).some((name) => name.toLowerCase() === "content-type")) {
            headers["content-type"] = "application/json";
          }
          body.headers = headers;
        }
      }
    }
    return new Response(request(body));
  });

  const env = Object.freeze({
    get: (name) => request({ op: "env", name: String(name) }).value,
  });

  const mail = Object.freeze({
    send: op((message) => request(Object.assign({ op: "mail" }, message))),
  });

  global.emberbase = Object.freeze({ db, fetch, env, mail, EmberbaseError });
  global.console = Object.freeze({
    debug: logger(0),
    log: logger(1),
    info: logger(1),
    warn: logger(2),
    error: logger(3),
  });
})(globalThis);
