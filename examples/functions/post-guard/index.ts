// Before-write hooks on posts, run before each write commits:
// - before_create and before_update: a post needs a title of at most 120 characters (else
//   400, with the reason); the hook adds a `slug` made from the title to what is written;
// - before_delete: a post marked `locked` cannot be deleted (403).
// Triggers: [{"on": "before_create", "collection": "posts"},
//            {"on": "before_update", "collection": "posts"},
//            {"on": "before_delete", "collection": "posts"}].
import { register, quote, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

function refuse(status: i32, why: string): string {
  return '{"ok":false,"status":' + status.toString() + ',"error":' + quote(why) + "}";
}

/** Lower-case letters and digits, the rest as single dashes. */
function slugify(title: string): string {
  let out = "";
  let dash = false;
  for (let i = 0; i < title.length; i++) {
    let c = title.charCodeAt(i);
    if (c >= 65 && c <= 90) c += 32;
    if ((c >= 97 && c <= 122) || (c >= 48 && c <= 57)) {
      if (dash && out.length > 0) out += "-";
      out += String.fromCharCode(c);
      dash = false;
    } else {
      dash = true;
    }
  }
  return out;
}

register((event: JSONValue): string | null => {
  const trigger = event.get("trigger").asString();
  if (trigger == "before_delete") {
    if (event.path("before.data.locked").asBool()) return refuse(403, "this post is locked");
    return null;
  }
  // An update's `data` is its patch; `after` previews the post with the patch applied.
  const data = event.get("data");
  const post = trigger == "before_update" ? event.get("after") : data;
  const title = post.get("title").asString().trim();
  if (title.length == 0) return refuse(400, "a post needs a title");
  if (title.length > 120) return refuse(400, "a title is at most 120 characters");
  data.set("slug", JSONValue.string(slugify(title)));
  return '{"ok":true,"data":' + data.toString() + "}";
});
