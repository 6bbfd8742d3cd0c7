// Load harness: on every create in `mirror_src`, writes `mirror_dst/<same id>`. The harness
// measures from the acknowledged create to the mirror being readable.
import { register, db, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

register((event: JSONValue): string | null => {
  db.set("mirror_dst", event.get("id").asString(), '{"seen":true}');
  return null;
});
