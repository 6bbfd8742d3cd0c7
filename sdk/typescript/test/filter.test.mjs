// The SDK's filter evaluator against the vectors the server's evaluator is tested with
// (tests/vectors/filters.json), so that the offline cache answers queries as the server does.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { compareBy, compareValues, Filter, FilterError, parseSort } from "../dist/index.js";

const vectors = JSON.parse(readFileSync(new URL("../../../tests/vectors/filters.json", import.meta.url), "utf8"));

test("filters match as on the server", () => {
  const wrong = [];
  for (const { filter, matches } of vectors.filters) {
    try {
      if (Filter.parse(filter).matches(vectors.document) !== matches) wrong.push(`${filter}: expected ${matches}`);
    } catch (e) {
      wrong.push(`${filter}: ${e.message}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test("bad filters fail at the server's column", () => {
  const wrong = [];
  for (const { filter, column } of vectors.errors) {
    try {
      Filter.parse(filter);
      wrong.push(`${filter}: parsed`);
    } catch (e) {
      if (!(e instanceof FilterError) || e.column !== column) wrong.push(`${filter}: ${e.message}, expected column ${column}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test("values and documents sort as on the server", () => {
  const { values } = vectors;
  for (let i = 0; i < values.length; i++) {
    for (let j = 0; j < values.length; j++) {
      assert.equal(compareValues(values[i], values[j]), Math.sign(i - j), `${JSON.stringify(values[i])} vs ${JSON.stringify(values[j])}`);
    }
  }
  for (const { sort, ids } of vectors.orders) {
    const keys = parseSort(sort || undefined);
    const sorted = [...vectors.documents].sort((a, b) => compareBy(keys, a, b));
    assert.deepEqual(
      sorted.map((d) => d.id),
      ids,
      `sort ${sort}`,
    );
  }
});
