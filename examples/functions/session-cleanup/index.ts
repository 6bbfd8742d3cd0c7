// A scheduled cleanup: deletes the documents of `sessions` whose `data.expires_at` (an RFC 3339
// time) is before the tick. Trigger: {"on": "schedule", "cron": "*/5 * * * *"}.
import { register, db, log, quote, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

register((event: JSONValue): string | null => {
  const cutoff = event.get("scheduled_for").asString();
  const expired = db.query("sessions", "data.expires_at < " + quote(cutoff), "", 500).get("items");
  for (let i = 0; i < expired.length; i++) {
    db.remove("sessions", expired.at(i).get("id").asString());
  }
  log("removed " + expired.length.toString() + " expired sessions");
  return null;
});
