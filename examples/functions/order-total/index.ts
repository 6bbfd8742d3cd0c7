// A before-write hook on `orders`, in TypeScript: an order needs at least one valid line, and
// every create and update gets its `total_cents` computed by the server, whatever the client
// sent. Bundled (with ./money.ts) and uploaded by `npx emberbase functions deploy`.
import type { HookEvent, Verdict } from "emberbase/function";
import { invalidLine, totalCents, type Line } from "./money";

interface Order {
  lines: Line[];
  total_cents?: number;
}

export default async function handle(event: HookEvent<Order>): Promise<Verdict<Order>> {
  if (event.trigger === "before_delete") return { ok: true };
  // An update's `after` previews the order with the client's patch applied.
  const order = (event.trigger === "before_update" ? event.after : event.data) as Order;
  const lines = Array.isArray(order?.lines) ? order.lines : [];
  if (lines.length === 0) return { ok: false, status: 400, error: "an order needs at least one line" };
  for (const [i, line] of lines.entries()) {
    const why = invalidLine(line, i);
    if (why) return { ok: false, status: 400, error: why };
  }
  const total_cents = totalCents(lines);
  console.log(`order ${event.id ?? "(new)"}: ${lines.length} lines, ${total_cents} cents`);
  return { ok: true, data: { ...event.data, total_cents } };
}
