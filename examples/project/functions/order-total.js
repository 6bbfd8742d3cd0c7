// Stores each new order's total on it. STRIPE_KEY is a secret of this function: set in the
// project from the environment, sealed on the server, read here.
export default async function handle(event) {
  const order = await emberbase.db.get("orders", event.id);
  if (!order) return;
  const total = order.data.items.reduce((sum, item) => sum + item.price * item.quantity, 0);
  const live = (emberbase.env.get("STRIPE_KEY") ?? "").startsWith("sk_live_");
  await emberbase.db.update("orders", event.id, { total, live });
}
