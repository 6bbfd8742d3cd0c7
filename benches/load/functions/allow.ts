// Load harness: a before_create hook that lets every write through (it still reads its event).
import { register, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

register((event: JSONValue): string | null => null);
