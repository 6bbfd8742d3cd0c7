// Prices are kept in cents, so that totals are exact.

export interface Line {
  sku: string;
  quantity: number;
  unit_cents: number;
}

/** The reason a line is not valid, or null. */
export function invalidLine(line: Line, index: number): string | null {
  if (typeof line.sku !== "string" || line.sku.length === 0) return `line ${index + 1} has no sku`;
  if (!Number.isInteger(line.quantity) || line.quantity < 1) return `line ${index + 1}: quantity must be a whole number of at least 1`;
  if (!Number.isInteger(line.unit_cents) || line.unit_cents < 0) return `line ${index + 1}: unit_cents must be a whole number of cents`;
  return null;
}

export function totalCents(lines: Line[]): number {
  return lines.reduce((sum, line) => sum + line.quantity * line.unit_cents, 0);
}
