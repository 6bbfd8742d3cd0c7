/*
 * Emberbase's JavaScript engine: QuickJS (quickjs-ng) compiled to a WebAssembly module that
 * speaks the functions guest ABI (memory, alloc, handle; imports emberbase.log/call/
 * result_read), plus two exports of its own that the server alone uses:
 *
 *   load(ptr, len) -> i64   compiles and evaluates a function's ES module source and keeps its
 *                           default export. 0 on success, else (ptr << 32 | len) of an error
 *                           JSON {"message", "stack"}. The server runs it once per upload and
 *                           keeps the linear memory that results: every event starts from a
 *                           copy of that memory, so no event pays for the engine's start.
 *   handle(ptr, len) -> i64 as the ABI says: the event JSON in, the result JSON out. A thrown
 *                           error or a rejected promise is reported through the import
 *                           emberbase.throw(ptr, len) (message and stack), which ends the run.
 *
 * The host API (the global `emberbase`, `console`) is written in JavaScript in prelude.js, over
 * two native functions: __eb_call(json) -> json and __eb_log(level, message).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quickjs.h"
#include "prelude.h"

#define IMPORT(name) __attribute__((import_module("emberbase"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("log") void eb_log(int32_t level, const char *ptr, int32_t len);
IMPORT("call") int32_t eb_call(const char *ptr, int32_t len);
IMPORT("result_read") void eb_result_read(char *dst);
IMPORT("throw") void eb_throw(const char *ptr, int32_t len);

static JSRuntime *rt;
static JSContext *ctx;
static JSValue handler;
static int ready;
/* Set while `load` runs: the host is not called at snapshot time. */
static int loading;
static uint64_t random_state;

static int64_t pack(const char *ptr, size_t len) {
    return ((int64_t)(uintptr_t)ptr << 32) | (int64_t)(uint32_t)len;
}

EXPORT("alloc") void *eb_alloc(int32_t len) {
    if (len < 0)
        return 0;
    /* One spare byte: JS_ParseJSON wants a terminating NUL. */
    char *p = malloc((size_t)len + 1);
    if (p)
        p[len] = 0;
    return p;
}

/* __eb_call(requestJson) -> replyJson: one host request. */
static JSValue js_call(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val;
    if (loading)
        return JS_ThrowTypeError(c, "emberbase cannot be called while the module loads; call it from handle()");
    if (argc < 1)
        return JS_ThrowTypeError(c, "__eb_call needs a request");
    size_t len;
    const char *request = JS_ToCStringLen(c, &len, argv[0]);
    if (!request)
        return JS_EXCEPTION;
    int32_t n = eb_call(request, (int32_t)len);
    JS_FreeCString(c, request);
    if (n < 0)
        return JS_ThrowInternalError(c, "the host refused the request (%d)", n);
    char *reply = malloc((size_t)n + 1);
    if (!reply)
        return JS_ThrowOutOfMemory(c);
    eb_result_read(reply);
    JSValue out = JS_NewStringLen(c, reply, (size_t)n);
    free(reply);
    return out;
}

/* __eb_log(level, message) */
static JSValue js_log(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val;
    int32_t level = 1;
    if (argc < 2 || JS_ToInt32(c, &level, argv[0]))
        return JS_UNDEFINED;
    size_t len;
    const char *message = JS_ToCStringLen(c, &len, argv[1]);
    if (!message)
        return JS_EXCEPTION;
    eb_log(level, message, (int32_t)len);
    JS_FreeCString(c, message);
    return JS_UNDEFINED;
}

/* Math.random, seeded per event (the engine's own seed would be the snapshot's, the same for
 * every event). xorshift64*. */
static JSValue js_random(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val; (void)argc; (void)argv;
    uint64_t x = random_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    random_state = x;
    uint64_t bits = (x * 0x2545F4914F6CDD1DULL) >> 11;
    return JS_NewFloat64(c, (double)bits / 9007199254740992.0);
}

/* The exception pending in `ctx` as {"message", "stack"} JSON, in malloc'd memory. */
static int64_t describe_exception(void) {
    JSValue error = JS_GetException(ctx);
    JSValue report = JS_NewObject(ctx);
    JSValue message, stack = JS_UNDEFINED;
    if (JS_IsError(error)) {
        JSValue name = JS_GetPropertyStr(ctx, error, "name");
        JSValue text = JS_GetPropertyStr(ctx, error, "message");
        const char *n = JS_ToCString(ctx, name);
        const char *t = JS_ToCString(ctx, text);
        size_t size = (n ? strlen(n) : 0) + (t ? strlen(t) : 0) + 3;
        char *joined = malloc(size);
        if (joined) {
            strcpy(joined, n ? n : "Error");
            if (t && *t) {
                strcat(joined, ": ");
                strcat(joined, t);
            }
            message = JS_NewString(ctx, joined);
            free(joined);
        } else {
            message = JS_NewString(ctx, "Error");
        }
        JS_FreeCString(ctx, n);
        JS_FreeCString(ctx, t);
        JS_FreeValue(ctx, name);
        JS_FreeValue(ctx, text);
        stack = JS_GetPropertyStr(ctx, error, "stack");
    } else {
        message = JS_ToString(ctx, error);
        if (JS_IsException(message)) {
            JS_FreeValue(ctx, JS_GetException(ctx));
            message = JS_NewString(ctx, "a value that cannot be shown was thrown");
        }
    }
    JS_SetPropertyStr(ctx, report, "message", message);
    if (JS_IsString(stack))
        JS_SetPropertyStr(ctx, report, "stack", stack);
    else
        JS_FreeValue(ctx, stack);
    JS_FreeValue(ctx, error);
    JSValue json = JS_JSONStringify(ctx, report, JS_UNDEFINED, JS_UNDEFINED);
    JS_FreeValue(ctx, report);
    size_t len = 0;
    const char *text = JS_IsException(json) ? NULL : JS_ToCStringLen(ctx, &len, json);
    JS_FreeValue(ctx, json);
    if (!text) {
        static const char fallback[] = "{\"message\":\"the engine ran out of memory\"}";
        return pack(fallback, sizeof fallback - 1);
    }
    return pack(text, len);
}

/* Runs queued promise jobs until none is left; -1 when one threw. */
static int drain_jobs(void) {
    JSContext *job_ctx;
    for (;;) {
        int r = JS_ExecutePendingJob(rt, &job_ctx);
        if (r == 0)
            return 0;
        if (r < 0)
            return -1;
    }
}

/* Settles `value` if it is a promise: its result, or JS_EXCEPTION with the reason pending. */
static JSValue settle(JSValue value) {
    if (!JS_IsPromise(value))
        return value;
    if (drain_jobs() < 0) {
        JS_FreeValue(ctx, value);
        return JS_EXCEPTION;
    }
    JSValue result;
    switch (JS_PromiseState(ctx, value)) {
    case JS_PROMISE_FULFILLED:
        result = JS_PromiseResult(ctx, value);
        break;
    case JS_PROMISE_REJECTED:
        result = JS_Throw(ctx, JS_PromiseResult(ctx, value));
        break;
    default:
        result = JS_ThrowInternalError(ctx, "the promise never settled (no host call waits: every emberbase call settles at once)");
        break;
    }
    JS_FreeValue(ctx, value);
    return result;
}

static int define_globals(void) {
    JSValue global = JS_GetGlobalObject(ctx);
    JS_SetPropertyStr(ctx, global, "__eb_call", JS_NewCFunction(ctx, js_call, "__eb_call", 1));
    JS_SetPropertyStr(ctx, global, "__eb_log", JS_NewCFunction(ctx, js_log, "__eb_log", 2));
    JSValue math = JS_GetPropertyStr(ctx, global, "Math");
    JS_SetPropertyStr(ctx, math, "random", JS_NewCFunction(ctx, js_random, "random", 0));
    JS_FreeValue(ctx, math);
    JS_FreeValue(ctx, global);
    JSValue r = JS_Eval(ctx, (const char *)prelude_js, prelude_js_len, "<emberbase>", JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(r))
        return -1;
    JS_FreeValue(ctx, r);
    return 0;
}

EXPORT("load") int64_t eb_load(const char *source, int32_t len) {
    if (rt)
        return pack("{\"message\":\"already loaded\"}", 28);
    rt = JS_NewRuntime();
    if (!rt)
        return pack("{\"message\":\"out of memory\"}", 27);
    JS_SetMaxStackSize(rt, 768 * 1024);
    ctx = JS_NewContext(rt);
    if (!ctx)
        return pack("{\"message\":\"out of memory\"}", 27);
    loading = 1;
    if (define_globals() < 0)
        return describe_exception();
    JSValue module = JS_Eval(ctx, source, (size_t)len, "function.js",
                             JS_EVAL_TYPE_MODULE | JS_EVAL_FLAG_COMPILE_ONLY);
    if (JS_IsException(module))
        return describe_exception();
    JSModuleDef *def = JS_VALUE_GET_PTR(module);
    JSValue evaluated = settle(JS_EvalFunction(ctx, module));
    if (JS_IsException(evaluated))
        return describe_exception();
    JS_FreeValue(ctx, evaluated);
    JSValue namespace = JS_GetModuleNamespace(ctx, def);
    if (JS_IsException(namespace))
        return describe_exception();
    handler = JS_GetPropertyStr(ctx, namespace, "default");
    JS_FreeValue(ctx, namespace);
    if (!JS_IsFunction(ctx, handler)) {
        static const char missing[] =
            "{\"message\":\"the module must export a function as its default: export default async function handle(event) { ... }\"}";
        return pack(missing, sizeof missing - 1);
    }
    loading = 0;
    ready = 1;
    return 0;
}

static void fail(void) {
    int64_t report = describe_exception();
    eb_throw((const char *)(uintptr_t)(report >> 32), (int32_t)(report & 0xffffffff));
}

EXPORT("handle") int64_t eb_handle(const char *event, int32_t len) {
    if (!ready) {
        static const char unloaded[] = "{\"message\":\"no JavaScript module is loaded\"}";
        eb_throw(unloaded, sizeof unloaded - 1);
        return 0;
    }
    if (getentropy(&random_state, sizeof random_state) != 0 || random_state == 0)
        random_state = 0x9E3779B97F4A7C15ULL;
    JSValue input = JS_ParseJSON(ctx, event, (size_t)len, "<event>");
    if (JS_IsException(input)) {
        fail();
        return 0;
    }
    JSValue result = settle(JS_Call(ctx, handler, JS_UNDEFINED, 1, (JSValueConst *)&input));
    JS_FreeValue(ctx, input);
    if (JS_IsException(result)) {
        fail();
        return 0;
    }
    if (JS_IsUndefined(result) || JS_IsNull(result))
        return 0;
    JSValue json = JS_JSONStringify(ctx, result, JS_UNDEFINED, JS_UNDEFINED);
    JS_FreeValue(ctx, result);
    if (JS_IsException(json)) {
        fail();
        return 0;
    }
    if (JS_IsUndefined(json))
        return 0;
    size_t out_len;
    const char *out = JS_ToCStringLen(ctx, &out_len, json);
    JS_FreeValue(ctx, json);
    if (!out) {
        fail();
        return 0;
    }
    return pack(out, out_len);
}
