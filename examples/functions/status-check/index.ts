// An HTTP function that checks an upstream service: POST /v1/functions/status-check {} requests
// the URL in the function's secret STATUS_URL and answers its status and the length of its body.
// Trigger: {"on": "http"}; config "fetch": {"allow": ["<the upstream's host>"]}.
import { register, env, http, quote, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

function failure(status: i32, code: string, message: string): string {
  return '{"status":' + status.toString() + ',"body":{"error":{"code":' + quote(code) +
    ',"message":' + quote(message) + "}}}";
}

register((event: JSONValue): string | null => {
  const url = env.get("STATUS_URL");
  if (url === null) return failure(503, "not_configured", "set the STATUS_URL secret");
  const reply = http.fetch("GET", url, '{"accept":"application/json"}');
  const error = reply.get("error");
  if (!error.isNull()) {
    // Refused (forbidden), too large (payload_too_large) or unreachable (unavailable).
    return failure(502, error.get("code").asString(""), error.get("message").asString(""));
  }
  const status = <i32>reply.get("status").asNumber(0);
  const body = reply.get("body").asString("");
  return '{"status":200,"body":{"up":' + (status >= 200 && status < 300 ? "true" : "false") +
    ',"upstream_status":' + status.toString() + ',"length":' + body.length.toString() + "}}";
});
