// Keeps an audit trail of `posts`: every create, update and delete adds a document to `audit`
// saying who changed which post, and which fields. Plain JavaScript: upload it as it is.

function changedFields(before, after) {
  const keys = new Set([...Object.keys(before ?? {}), ...Object.keys(after ?? {})]);
  return [...keys].filter((k) => JSON.stringify(before?.[k]) !== JSON.stringify(after?.[k])).sort();
}

export default async function handle(event) {
  const fields = changedFields(event.before?.data, event.after?.data);
  const who = event.auth?.email ?? event.auth?.role ?? "anonymous";
  await emberbase.db.create("audit", {
    post: event.id,
    action: event.trigger,
    who,
    fields,
    version: event.after?.version ?? null,
  });
  console.log(`${who} ${event.trigger}d post ${event.id}: ${fields.join(", ") || "no field"}`);
}
