/**
 * The server's filter language, evaluated on this device: the offline cache answers queries
 * with it, and decides which cached queries a write made offline belongs to.
 *
 * It mirrors the server's parser and evaluator (`src/query/` in the repository) rule for rule,
 * and both are checked against the same test vectors (`tests/vectors/filters.json`). In short:
 * a missing field is `null`; `==` between different JSON types is false; `<` `<=` `>` `>=`
 * compare numbers with numbers and strings with strings (by code point) and are false for any
 * other pair; `in` and `contains` test membership; a condition holds only when it is `true`.
 * Sorting uses one total order: `null < false < true < numbers < strings < arrays, objects`.
 *
 * The one difference: `matches()` runs on the JavaScript `RegExp` engine here (with the `u`
 * flag), the server on Rust's `regex`; patterns that use only the syntax both share (classes,
 * anchors, repetition, groups, alternation) mean the same.
 */

/** A parsed filter: `Filter.parse("data.done == false").matches(doc)`. */
export class Filter {
  private constructor(
    /** The filter as written. */
    readonly source: string,
    private readonly expr: Expr,
  ) {}

  /** Parses a filter over a document envelope; throws `FilterError` with the column. */
  static parse(source: string): Filter {
    return new Filter(source, parse(source));
  }

  /** Whether the document (an envelope: `id`, `owner`, `version`, `data`...) matches. */
  matches(doc: unknown): boolean {
    return truthy(evaluate(this.expr, doc));
  }
}

/** A filter the parser refuses, with the 1-based column (in characters) it stopped at. */
export class FilterError extends Error {
  constructor(
    readonly column: number,
    readonly reason: string,
  ) {
    super(`${reason} at column ${column}`);
    this.name = "FilterError";
  }
}

/** One key of a sort: a path into the envelope, and its direction. */
export interface SortKey {
  path: string[];
  descending: boolean;
}

/**
 * Parses `-data.n,created_at` as the server does, and appends `id` as the final tie-breaker in
 * the direction of the last key (ascending when there is none): the order is total.
 */
export function parseSort(source: string | undefined): SortKey[] {
  const keys: SortKey[] = [];
  for (const part of source ? source.split(",") : []) {
    const trimmed = part.trim();
    const descending = trimmed.startsWith("-");
    const name = trimmed.replace(/^[-+]/, "").trim();
    const expr = parse(name);
    if (expr.t !== "path") throw new FilterError(1, `\`${name}\` is not a field path`);
    keys.push({ path: expr.path, descending });
    if (expr.path.length === 1 && expr.path[0] === "id") return keys;
  }
  keys.push({ path: ["id"], descending: keys[keys.length - 1]?.descending ?? false });
  return keys;
}

/** Compares two envelopes by a sort (from `parseSort`). */
export function compareBy(keys: SortKey[], a: unknown, b: unknown): number {
  for (const key of keys) {
    const order = compareValues(walk(a, key.path) ?? null, walk(b, key.path) ?? null);
    if (order !== 0) return key.descending ? -order : order;
  }
  return 0;
}

/** The total order of JSON values the server sorts by. */
export function compareValues(a: unknown, b: unknown): number {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra < rb ? -1 : 1;
  if (ra === 4) return sign((a as number) - (b as number));
  if (ra === 5) return compareStrings(a as string, b as string);
  if (ra === 6) return compareStrings(canonical(a), canonical(b));
  return 0;
}

// ---------------------------------------------------------------------------------------------
// The syntax tree.

type CmpOp = "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "contains";

type Expr =
  | { t: "lit"; value: unknown }
  | { t: "path"; path: string[] }
  | { t: "not"; inner: Expr }
  | { t: "and" | "or"; operands: Expr[] }
  | { t: "cmp"; a: Expr; op: CmpOp; b: Expr }
  | { t: "arith"; a: Expr; op: "+" | "-"; b: Expr }
  | { t: "call"; func: string; args: Expr[]; pattern?: RegExp; nanos?: bigint };

const MAX_DEPTH = 64;
const MAX_TERMS = 1000;
const MAX_PATTERN = 512;
const ENVELOPE_FIELDS = ["id", "owner", "version", "created_at", "updated_at"];
const ARITY: Record<string, number> = {
  size: 1,
  startsWith: 2,
  endsWith: 2,
  lower: 1,
  upper: 1,
  has: 2,
  keys: 1,
  type: 1,
  now: 0,
  time: 1,
  matches: 2,
  duration: 1,
};

// ---------------------------------------------------------------------------------------------
// The lexer, over code points so that columns count characters as the server does.

type Tok =
  | { k: "ident" | "str" | "num" | "op"; v: string }
  | { k: "(" | ")" | "[" | "]" | "," | "." | "eof" };

function lex(src: string): [Tok, number][] {
  const chars = Array.from(src);
  const out: [Tok, number][] = [];
  let i = 0;
  let afterDot = false;
  let afterValue = false;
  const err = (at: number, message: string) => new FilterError(at + 1, message);
  for (;;) {
    while (i < chars.length && /\s/u.test(chars[i])) i++;
    const at = i;
    let tok: Tok;
    if (i >= chars.length) {
      out.push([{ k: "eof" }, chars.length + 1]);
      return out;
    }
    const c = chars[i++];
    const two = (second: string, both: string, one: string | null): Tok => {
      if (chars[i] === second) {
        i++;
        return { k: "op", v: both };
      }
      if (one === null) throw err(at, `expected \`${both}\``);
      return { k: "op", v: one };
    };
    if ("()[],.".includes(c)) tok = { k: c as "(" };
    else if (c === "=") tok = two("=", "==", null);
    else if (c === "!") tok = two("=", "!=", "!");
    else if (c === "<") tok = two("=", "<=", "<");
    else if (c === ">") tok = two("=", ">=", ">");
    else if (c === "&") tok = two("&", "&&", null);
    else if (c === "|") tok = two("|", "||", null);
    else if (c === '"') {
      let escaped = false;
      let end = -1;
      for (let j = i; j < chars.length; j++) {
        if (escaped) escaped = false;
        else if (chars[j] === "\\") escaped = true;
        else if (chars[j] === '"') {
          end = j;
          break;
        }
      }
      if (end < 0) throw err(at, "unterminated string literal");
      const raw = chars.slice(at, end + 1).join("");
      i = end + 1;
      let value: unknown;
      try {
        value = JSON.parse(raw);
      } catch (e) {
        throw err(at, `invalid string literal: ${(e as Error).message}`);
      }
      tok = { k: "str", v: value as string };
    } else if (c === "+") tok = { k: "op", v: "+" };
    else if (c === "-" && afterValue) tok = { k: "op", v: "-" };
    else if ((c === "-" || /[0-9]/.test(c)) && !afterDot) {
      while (i < chars.length && /[0-9.eE+-]/.test(chars[i])) i++;
      const raw = chars.slice(at, i).join("");
      if (!/^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/.test(raw)) throw err(at, `invalid number \`${raw}\``);
      if (!Number.isFinite(Number(raw))) throw err(at, `number out of range \`${raw}\``);
      tok = { k: "num", v: raw };
    } else if (/[A-Za-z0-9_]/.test(c)) {
      while (i < chars.length && /[A-Za-z0-9_]/.test(chars[i])) i++;
      tok = { k: "ident", v: chars.slice(at, i).join("") };
    } else throw err(at, `unexpected character \`${c}\``);
    afterDot = tok.k === ".";
    afterValue = ["ident", "str", "num", ")", "]"].includes(tok.k);
    out.push([tok, at + 1]);
  }
}

// ---------------------------------------------------------------------------------------------
// The parser: recursive descent, the same precedence and limits as the server's.

function describe(tok: Tok): string {
  switch (tok.k) {
    case "ident":
    case "op":
      return `\`${tok.v}\``;
    case "str":
      return `string ${JSON.stringify(tok.v)}`;
    case "num":
      return `number \`${tok.v}\``;
    case "eof":
      return "end of input";
    default:
      return `\`${tok.k}\``;
  }
}

function parse(src: string): Expr {
  const toks = lex(src);
  let pos = 0;
  let depth = 0;
  let terms = 0;
  const peek = (): Tok => toks[pos]?.[0] ?? { k: "eof" };
  const column = () => (toks[pos] ?? toks[toks.length - 1])[1];
  const bump = (): Tok => {
    const t = peek();
    if (pos < toks.length) pos++;
    return t;
  };
  const fail = (message: string): never => {
    throw new FilterError(column(), message);
  };
  const isOp = (t: Tok, v: string) => t.k === "op" && t.v === v;
  const enter = () => {
    if (++depth > MAX_DEPTH) fail(`expression nested deeper than ${MAX_DEPTH}`);
  };

  const chain = (op: "&&" | "||", next: () => Expr): Expr => {
    const first = next();
    if (!isOp(peek(), op)) return first;
    const operands = [first];
    while (isOp(peek(), op)) {
      bump();
      operands.push(next());
    }
    return { t: op === "&&" ? "and" : "or", operands };
  };
  const or = (): Expr => chain("||", and);
  const and = (): Expr => chain("&&", comparison);

  const comparisonOp = (): CmpOp | null => {
    const t = peek();
    if (t.k === "op" && ["==", "!=", "<", "<=", ">", ">="].includes(t.v)) return t.v as CmpOp;
    if (t.k === "ident" && (t.v === "in" || t.v === "contains")) return t.v;
    return null;
  };
  const comparison = (): Expr => {
    const a = additive();
    const op = comparisonOp();
    if (!op) return a;
    bump();
    const b = additive();
    if (comparisonOp()) fail("comparisons do not chain; use parentheses and `&&`");
    return { t: "cmp", a, op, b };
  };
  const additive = (): Expr => {
    let a = unary();
    for (;;) {
      const t = peek();
      if (!(isOp(t, "+") || isOp(t, "-"))) return a;
      bump();
      enter();
      const b = unary();
      depth--;
      a = { t: "arith", a, op: (t as { v: "+" | "-" }).v, b };
    }
  };
  const unary = (): Expr => {
    if (isOp(peek(), "!")) {
      bump();
      enter();
      const inner = unary();
      depth--;
      return { t: "not", inner };
    }
    return primary();
  };
  const primary = (): Expr => {
    const at = column();
    if (++terms > MAX_TERMS) fail(`expression has more than ${MAX_TERMS} terms`);
    const t = bump();
    switch (t.k) {
      case "(": {
        enter();
        const inner = or();
        depth--;
        if (bump().k !== ")") {
          pos--;
          fail("expected `)`");
        }
        return inner;
      }
      case "[":
        pos--;
        return { t: "lit", value: array() };
      case "str":
        return { t: "lit", value: t.v };
      case "num":
        return { t: "lit", value: Number(t.v) };
      case "ident":
        if (t.v === "true" || t.v === "false") return { t: "lit", value: t.v === "true" };
        if (t.v === "null") return { t: "lit", value: null };
        if (peek().k === "(") return call(t.v, at);
        pos--;
        return { t: "path", path: checkPath(path(), at) };
      default:
        pos--;
        return fail(`expected a value or a name, found ${describe(t)}`);
    }
  };
  const call = (name: string, at: number): Expr => {
    const failAt = (message: string): never => {
      throw new FilterError(at, message);
    };
    bump();
    enter();
    const args: Expr[] = [];
    if (peek().k === ")") bump();
    else {
      for (;;) {
        args.push(or());
        const t = bump();
        if (t.k === ",") continue;
        if (t.k === ")") break;
        pos--;
        fail(`expected \`,\` or \`)\` in the arguments of ${name}, found ${describe(t)}`);
      }
    }
    depth--;
    const literal = (arg: Expr | undefined) => (arg?.t === "lit" && typeof arg.value === "string" ? arg.value : null);
    const expr: Expr = { t: "call", func: name, args };
    if (name === "matches") {
      const pattern = literal(args[1]) ?? failAt('matches(x, "pattern") takes its pattern as a string literal');
      expr.pattern = regex(pattern, failAt);
    } else if (name === "duration") {
      const text = literal(args[0]) ?? failAt('duration("P7D") takes a string literal');
      expr.nanos = duration(text, failAt);
    } else if (name === "changed") failAt("changed() is only for collection rules");
    else if (!(name in ARITY)) failAt(`unknown function \`${name}\``);
    const arity = ARITY[name];
    if (args.length !== arity) {
      failAt(`${name} takes ${arity} argument${arity === 1 ? "" : "s"}, not ${args.length}`);
    }
    if (name === "duration") args.length = 0;
    if (name === "matches") args.length = 1;
    return expr;
  };
  const path = (): string[] => {
    const segments: string[] = [];
    for (;;) {
      const t = bump();
      if (t.k !== "ident") {
        pos--;
        fail(`expected a field name, found ${describe(t)}`);
      }
      segments.push((t as { v: string }).v);
      if (peek().k !== ".") return segments;
      bump();
    }
  };
  const array = (): unknown[] => {
    bump();
    enter();
    const items: unknown[] = [];
    if (peek().k === "]") {
      bump();
      depth--;
      return items;
    }
    for (;;) {
      const t = bump();
      if (t.k === "str") items.push(t.v);
      else if (t.k === "num") items.push(Number(t.v));
      else if (t.k === "ident" && (t.v === "true" || t.v === "false")) items.push(t.v === "true");
      else if (t.k === "ident" && t.v === "null") items.push(null);
      else if (t.k === "[") {
        pos--;
        items.push(array());
      } else {
        pos--;
        fail(`array literals hold only literals, found ${describe(t)}`);
      }
      const sep = bump();
      if (sep.k === ",") continue;
      if (sep.k === "]") break;
      pos--;
      fail(`expected \`,\` or \`]\`, found ${describe(sep)}`);
    }
    depth--;
    return items;
  };

  if (peek().k === "eof") fail("empty expression");
  const expr = or();
  if (peek().k !== "eof") fail(`unexpected ${describe(peek())}`);
  return expr;
}

function checkPath(segments: string[], column: number): string[] {
  const ok =
    segments.length === 1 ? ENVELOPE_FIELDS.includes(segments[0]) : segments.length > 1 && segments[0] === "data";
  if (!ok) {
    throw new FilterError(
      column,
      `unknown field \`${segments.join(".")}\`; use id, owner, version, created_at, updated_at or data.<field>`,
    );
  }
  return segments;
}

/** A pattern as the server limits it; Rust's leading inline flags (`(?i)`) become RegExp flags. */
function regex(pattern: string, fail: (message: string) => never): RegExp {
  if (new TextEncoder().encode(pattern).length > MAX_PATTERN) fail(`a pattern is at most ${MAX_PATTERN} bytes`);
  const inline = /^\(\?([ims]+)\)/.exec(pattern);
  const flags = "u" + (inline?.[1] ?? "").replace(/[^ims]/g, "");
  try {
    return new RegExp(inline ? pattern.slice(inline[0].length) : pattern, [...new Set(flags)].join(""));
  } catch (e) {
    return fail(`invalid pattern: ${(e as Error).message}`);
  }
}

const SECOND = 1_000_000_000n;

/** `P7D`, `PT1H30M`, `PT0.5S`, `P1W` in nanoseconds; years and months are refused. */
function duration(text: string, fail: (message: string) => never): bigint {
  const bad = () => fail(`invalid duration ${JSON.stringify(text)}: use for example P7D, PT1H30M or PT0.5S`);
  if (!text.startsWith("P")) bad();
  const rest = text.slice(1);
  const t = rest.indexOf("T");
  const date = t < 0 ? rest : rest.slice(0, t);
  const time = t < 0 ? null : rest.slice(t + 1);
  if (time === "" || (date === "" && time === null)) bad();
  let total = 0n;
  const add = (part: string, units: [string, bigint][]) => {
    let number = "";
    for (const c of part) {
      if (/[0-9.]/.test(c)) {
        number += c;
        continue;
      }
      if (c === "Y" || (c === "M" && units.some((u) => u[0] === "D"))) {
        fail(`invalid duration ${JSON.stringify(text)}: years and months have no fixed length; use days`);
      }
      const scale = units.find((u) => u[0] === c)?.[1] ?? bad();
      if (!/^[0-9]*\.?[0-9]*$/.test(number) || number === "" || number === ".") bad();
      const value = Number(number);
      if (!Number.isFinite(value) || value > 1e12) bad();
      total += BigInt(Math.trunc(value * Number(scale)));
      number = "";
    }
    if (number !== "") bad();
  };
  add(date, [
    ["W", 7n * 86_400n * SECOND],
    ["D", 86_400n * SECOND],
  ]);
  if (time !== null) {
    add(time, [
      ["H", 3_600n * SECOND],
      ["M", 60n * SECOND],
      ["S", SECOND],
    ]);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

type Val = { json: unknown } | { time: bigint } | { duration: bigint };

const json = (value: unknown): Val => ({ json: value });
const NULL = json(null);

function walk(value: unknown, segments: string[]): unknown {
  for (const seg of segments) {
    if (Array.isArray(value)) {
      if (!/^[0-9]+$/.test(seg)) return undefined;
      value = value[Number(seg)];
    } else if (value !== null && typeof value === "object") {
      if (!Object.prototype.hasOwnProperty.call(value, seg)) return undefined;
      value = (value as Record<string, unknown>)[seg];
    } else return undefined;
    if (value === undefined) return undefined;
  }
  return value;
}

function evaluate(expr: Expr, scope: unknown): Val {
  switch (expr.t) {
    case "lit":
      return json(expr.value);
    case "path":
      return json(walk(scope, expr.path) ?? null);
    case "not":
      return json(!truthy(evaluate(expr.inner, scope)));
    case "and":
      return json(expr.operands.every((e) => truthy(evaluate(e, scope))));
    case "or":
      return json(expr.operands.some((e) => truthy(evaluate(e, scope))));
    case "cmp":
      return json(compareVals(evaluate(expr.a, scope), expr.op, evaluate(expr.b, scope)));
    case "arith":
      return arith(evaluate(expr.a, scope), expr.op, evaluate(expr.b, scope));
    case "call":
      return call(
        expr,
        expr.args.map((a) => evaluate(a, scope)),
      );
  }
}

function truthy(v: Val): boolean {
  return "json" in v && v.json === true;
}

function instant(v: Val): bigint | null {
  if ("time" in v) return v.time;
  if ("json" in v && typeof v.json === "string") return parseTime(v.json);
  return null;
}

function arith(a: Val, op: "+" | "-", b: Val): Val {
  const s = op === "+" ? 1n : -1n;
  if ("duration" in a && "duration" in b) return { duration: a.duration + s * b.duration };
  if ("duration" in b) {
    const t = "duration" in a ? null : instant(a);
    return t === null ? NULL : { time: t + s * b.duration };
  }
  if ("duration" in a) {
    const t = instant(b);
    return op === "+" && t !== null ? { time: t + a.duration } : NULL;
  }
  const x = instant(a);
  const y = instant(b);
  if (x !== null && y !== null && op === "-" && ("time" in a || "time" in b)) return { duration: x - y };
  return NULL;
}

function compareVals(a: Val, op: CmpOp, b: Val): boolean {
  if ("json" in a && "json" in b) return compare(a.json, op, b.json);
  let ordering: number | null = null;
  if ("duration" in a && "duration" in b) ordering = a.duration === b.duration ? 0 : a.duration < b.duration ? -1 : 1;
  else if ("time" in a || "time" in b) {
    const x = instant(a);
    const y = instant(b);
    if (x !== null && y !== null) ordering = x === y ? 0 : x < y ? -1 : 1;
  }
  return applyOrdering(op, ordering);
}

function applyOrdering(op: CmpOp, ordering: number | null): boolean {
  switch (op) {
    case "==":
      return ordering === 0;
    case "!=":
      return ordering !== 0;
    case "<":
      return ordering === -1;
    case "<=":
      return ordering === -1 || ordering === 0;
    case ">":
      return ordering === 1;
    case ">=":
      return ordering === 1 || ordering === 0;
    default:
      return false;
  }
}

function compare(a: unknown, op: CmpOp, b: unknown): boolean {
  switch (op) {
    case "==":
      return equal(a, b);
    case "!=":
      return !equal(a, b);
    case "in":
      return Array.isArray(b) && b.some((item) => equal(a, item));
    case "contains":
      if (Array.isArray(a)) return a.some((item) => equal(item, b));
      return typeof a === "string" && typeof b === "string" && a.includes(b);
    default: {
      const ordered =
        (typeof a === "number" && typeof b === "number") || (typeof a === "string" && typeof b === "string");
      return applyOrdering(op, ordered ? compareValues(a, b) : null);
    }
  }
}

/** Equality of the filter language: numbers by value, different types never equal. */
export function equal(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => equal(x, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length &&
      keys.every((k) => Object.prototype.hasOwnProperty.call(b, k) && equal(a[k], b[k]))
    );
  }
  return a === b;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function call(expr: Extract<Expr, { t: "call" }>, args: Val[]): Val {
  const text = (v: Val | undefined) => (v && "json" in v && typeof v.json === "string" ? v.json : null);
  const value = (v: Val | undefined) => (v && "json" in v ? v.json : undefined);
  const a = args[0];
  switch (expr.func) {
    case "size": {
      const v = value(a);
      if (typeof v === "string") return json(Array.from(v).length);
      if (Array.isArray(v)) return json(v.length);
      if (isObject(v)) return json(Object.keys(v).length);
      return NULL;
    }
    case "startsWith":
    case "endsWith": {
      const s = text(a);
      const affix = text(args[1]);
      if (s === null || affix === null) return json(false);
      return json(expr.func === "startsWith" ? s.startsWith(affix) : s.endsWith(affix));
    }
    case "lower":
      return text(a) === null ? NULL : json(text(a)!.toLowerCase());
    case "upper":
      return text(a) === null ? NULL : json(text(a)!.toUpperCase());
    case "matches": {
      const s = text(a);
      return json(s !== null && expr.pattern!.test(s));
    }
    case "has": {
      const o = value(a);
      const key = text(args[1]);
      return json(isObject(o) && key !== null && Object.prototype.hasOwnProperty.call(o, key));
    }
    case "keys": {
      const o = value(a);
      return isObject(o) ? json(Object.keys(o).sort(compareStrings)) : NULL;
    }
    case "type": {
      if (!a) return json("null");
      if ("time" in a) return json("time");
      if ("duration" in a) return json("duration");
      const v = a.json;
      if (v === null || v === undefined) return json("null");
      if (Array.isArray(v)) return json("array");
      return json(typeof v === "boolean" ? "boolean" : typeof v);
    }
    case "now":
      return { time: BigInt(Date.now()) * 1_000_000n };
    case "time": {
      if (a && "time" in a) return a;
      const t = text(a) === null ? null : parseTime(text(a)!);
      return t === null ? NULL : { time: t };
    }
    case "duration":
      return { duration: expr.nanos! };
    default:
      return NULL;
  }
}

/** An RFC 3339 time as nanoseconds since the epoch, or null. */
export function parseTime(text: string): bigint | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/.exec(text);
  if (!m) return null;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  if (month < 1 || month > 12 || day < 1 || day > days[month - 1] || hour > 23 || minute > 59 || second > 59) {
    return null;
  }
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, 0);
  let nanos = BigInt(date.getTime()) * 1_000_000n + BigInt((m[7] ?? "").slice(0, 9).padEnd(9, "0"));
  if (m[9]) {
    const [oh, om] = [Number(m[10]), Number(m[11])];
    if (oh > 23 || om > 59) return null;
    const offset = BigInt((oh * 60 + om) * 60) * SECOND;
    nanos += m[9] === "+" ? -offset : offset;
  }
  return nanos;
}

// ---------------------------------------------------------------------------------------------
// The sort order.

function rank(v: unknown): number {
  if (v === null || v === undefined) return 1;
  if (v === false) return 2;
  if (v === true) return 3;
  if (typeof v === "number") return 4;
  if (typeof v === "string") return 5;
  return 6;
}

function sign(n: number): number {
  return n < 0 ? -1 : n > 0 ? 1 : 0;
}

/** Strings by code point, which is the order of their UTF-8 bytes (the server's order). */
function compareStrings(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i)!;
    const y = b.codePointAt(i)!;
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i++;
  }
  return sign(a.length - b.length);
}

/** JSON text with object keys in order, as the server prints arrays and objects to sort them. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (isObject(v)) {
    const keys = Object.keys(v).sort(compareStrings);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v ?? null);
}
