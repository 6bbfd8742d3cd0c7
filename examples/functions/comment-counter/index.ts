// Keeps `post_stats/<post id>.comments` equal to the number of comments on each post.
// Trigger: {"on": "write", "collection": "comments"}; a comment has `data.post`.
// Events of one function run one at a time (its `concurrency` is 1, the default), so
// read-then-write is safe here; with more, two comments could bump one post at once.
import { register, db, log, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

function bump(post: string, by: i32): void {
  if (post.length == 0) return;
  const stats = db.get("post_stats", post);
  const count = <i32>stats.path("data.comments").asNumber() + by;
  db.set("post_stats", post, '{"comments":' + (count < 0 ? 0 : count).toString() + "}");
  log("post " + post + " has " + count.toString() + " comments");
}

register((event: JSONValue): string | null => {
  const before = event.path("before.data.post").asString();
  const after = event.path("after.data.post").asString();
  if (before != after) {
    bump(before, -1);
    bump(after, 1);
  }
  return null;
});
