// A small JSON value, parser and serialiser: enough to read events and database replies.

export const enum Kind {
  Null = 0,
  Bool = 1,
  Number = 2,
  String = 3,
  Array = 4,
  Object = 5,
}

// What values that are neither arrays nor objects hold as `items` and `keys`: shared, so that
// parsing a string or a number allocates no arrays (half the parser's work was allocating
// them).
const NO_ITEMS: JSONValue[] = [];
const NO_KEYS: string[] = [];

export class JSONValue {
  kind: Kind = Kind.Null;
  bool: bool = false;
  num: f64 = 0;
  str: string = "";
  /** An array's elements, or an object's member values (in the order of `keys`). Read them;
   *  add members with `set`. */
  items: JSONValue[] = NO_ITEMS;
  /** An object's member names. */
  keys: string[] = NO_KEYS;

  static null(): JSONValue {
    return new JSONValue();
  }

  /** A string value. */
  static string(s: string): JSONValue {
    const v = new JSONValue();
    v.kind = Kind.String;
    v.str = s;
    return v;
  }

  isNull(): bool {
    return this.kind == Kind.Null;
  }

  /** Sets the member `key` of an object (replacing one of that name); an object is made of a
   *  null value first. */
  set(key: string, value: JSONValue): void {
    if (this.kind == Kind.Null) this.kind = Kind.Object;
    if (this.kind != Kind.Object) return;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) {
        this.items[i] = value;
        return;
      }
    }
    if (this.keys === NO_KEYS) {
      this.keys = [];
      this.items = [];
    }
    this.keys.push(key);
    this.items.push(value);
  }

  /** The member `key` of an object; a null value when absent or not an object. */
  get(key: string): JSONValue {
    if (this.kind == Kind.Object) {
      for (let i = 0; i < this.keys.length; i++) {
        if (this.keys[i] == key) return this.items[i];
      }
    }
    return JSONValue.null();
  }

  /** Follows a dotted path, e.g. `after.data.post`. */
  path(dotted: string): JSONValue {
    let v: JSONValue = this;
    const parts = dotted.split(".");
    for (let i = 0; i < parts.length; i++) v = v.get(parts[i]);
    return v;
  }

  /** The element `i` of an array; a null value when absent. */
  at(i: i32): JSONValue {
    if (this.kind == Kind.Array && i >= 0 && i < this.items.length) return this.items[i];
    return JSONValue.null();
  }

  get length(): i32 {
    return this.kind == Kind.Array ? this.items.length : 0;
  }

  asString(fallback: string = ""): string {
    return this.kind == Kind.String ? this.str : fallback;
  }

  asNumber(fallback: f64 = 0): f64 {
    return this.kind == Kind.Number ? this.num : fallback;
  }

  asBool(fallback: bool = false): bool {
    return this.kind == Kind.Bool ? this.bool : fallback;
  }

  /** The value as JSON text. */
  toString(): string {
    switch (this.kind) {
      case Kind.Bool:
        return this.bool ? "true" : "false";
      case Kind.Number:
        return formatNumber(this.num);
      case Kind.String:
        return quote(this.str);
      case Kind.Array: {
        const parts = new Array<string>(this.items.length);
        for (let i = 0; i < this.items.length; i++) parts[i] = this.items[i].toString();
        return "[" + parts.join(",") + "]";
      }
      case Kind.Object: {
        const parts = new Array<string>(this.keys.length);
        for (let i = 0; i < this.keys.length; i++) {
          parts[i] = quote(this.keys[i]) + ":" + this.items[i].toString();
        }
        return "{" + parts.join(",") + "}";
      }
      default:
        return "null";
    }
  }
}

function formatNumber(n: f64): string {
  if (n == Math.floor(n) && Math.abs(n) < 9007199254740992) return (<i64>n).toString();
  return n.toString();
}

/** A string as a JSON string literal. */
export function quote(s: string): string {
  // Runs of characters that need no escape are copied whole.
  let out = '"';
  let run = 0;
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 32 && c != 34 && c != 92) continue;
    if (i > run) out += s.substring(run, i);
    run = i + 1;
    if (c == 34) out += '\\"';
    else if (c == 92) out += "\\\\";
    else if (c == 10) out += "\\n";
    else if (c == 13) out += "\\r";
    else if (c == 9) out += "\\t";
    else out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
  }
  if (run == 0) return out + s + '"';
  if (n > run) out += s.substring(run, n);
  return out + '"';
}

class Parser {
  pos: i32 = 0;
  end: i32;
  base: usize;

  constructor(public src: string) {
    this.end = src.length;
    this.base = changetype<usize>(src);
  }

  /** The UTF-16 unit at `at`, or -1 past the end (as `charCodeAt`, without its call). */
  @inline code(at: i32): i32 {
    return at < this.end ? <i32>load<u16>(this.base + (<usize>at << 1)) : -1;
  }

  fail(): JSONValue {
    throw new Error("invalid JSON at " + this.pos.toString());
  }

  ws(): void {
    let pos = this.pos;
    while (pos < this.end) {
      const c = <i32>load<u16>(this.base + (<usize>pos << 1));
      if (c != 32 && c != 9 && c != 10 && c != 13) break;
      pos++;
    }
    this.pos = pos;
  }

  literal(word: string): bool {
    const n = word.length;
    if (this.pos + n > this.end) return false;
    for (let i = 0; i < n; i++) {
      if (this.code(this.pos + i) != word.charCodeAt(i)) return false;
    }
    this.pos += n;
    return true;
  }

  value(): JSONValue {
    this.ws();
    if (this.pos >= this.end) return this.fail();
    const c = this.code(this.pos);
    const v = new JSONValue();
    if (c == 123) {
      v.kind = Kind.Object;
      v.items = [];
      v.keys = [];
      this.pos++;
      this.ws();
      if (this.code(this.pos) == 125) {
        this.pos++;
        return v;
      }
      while (true) {
        this.ws();
        if (this.code(this.pos) != 34) return this.fail();
        v.keys.push(this.string());
        this.ws();
        if (this.code(this.pos) != 58) return this.fail();
        this.pos++;
        v.items.push(this.value());
        this.ws();
        const d = this.code(this.pos++);
        if (d == 125) return v;
        if (d != 44) return this.fail();
      }
    }
    if (c == 91) {
      v.kind = Kind.Array;
      v.items = [];
      this.pos++;
      this.ws();
      if (this.code(this.pos) == 93) {
        this.pos++;
        return v;
      }
      while (true) {
        v.items.push(this.value());
        this.ws();
        const d = this.code(this.pos++);
        if (d == 93) return v;
        if (d != 44) return this.fail();
      }
    }
    if (c == 34) {
      v.kind = Kind.String;
      v.str = this.string();
      return v;
    }
    if (this.literal("true")) {
      v.kind = Kind.Bool;
      v.bool = true;
      return v;
    }
    if (this.literal("false")) {
      v.kind = Kind.Bool;
      return v;
    }
    if (this.literal("null")) return v;
    const start = this.pos;
    let pos = start;
    // Integers of up to 15 digits (ids, counts, versions) are exact in an f64 and summed
    // here; anything else goes through parseFloat, which costs far more.
    let whole: f64 = 0;
    let digits = 0;
    let plain = true;
    while (pos < this.end) {
      const d = this.code(pos);
      if (d >= 48 && d <= 57) {
        whole = whole * 10 + <f64>(d - 48);
        digits++;
      } else if (d == 45 || d == 43 || d == 46 || d == 101 || d == 69) {
        plain = plain && d == 45 && pos == start;
      } else break;
      pos++;
    }
    this.pos = pos;
    if (start == pos) return this.fail();
    v.kind = Kind.Number;
    if (plain && digits > 0 && digits <= 15) {
      v.num = this.code(start) == 45 ? -whole : whole;
    } else {
      v.num = parseFloat(this.src.substring(start, pos));
    }
    return v;
  }

  string(): string {
    const start = this.pos + 1; // after the opening quote
    let pos = start;
    // Most strings have no escapes: one copy, no concatenation.
    while (pos < this.end) {
      const c = <i32>load<u16>(this.base + (<usize>pos << 1));
      if (c == 34) {
        this.pos = pos + 1;
        return this.src.substring(start, pos);
      }
      if (c == 92) break;
      pos++;
    }
    let out = this.src.substring(start, pos);
    let run = pos;
    while (pos < this.end) {
      const c = this.code(pos);
      if (c == 34) {
        out += this.src.substring(run, pos);
        this.pos = pos + 1;
        return out;
      }
      if (c == 92) {
        out += this.src.substring(run, pos);
        const e = this.code(pos + 1);
        pos += 2;
        if (e == 110) out += "\n";
        else if (e == 116) out += "\t";
        else if (e == 114) out += "\r";
        else if (e == 98) out += "\b";
        else if (e == 102) out += "\f";
        else if (e == 117) {
          out += String.fromCharCode(<i32>parseInt(this.src.substr(pos, 4), 16));
          pos += 4;
        } else out += String.fromCharCode(e);
        run = pos;
        continue;
      }
      pos++;
    }
    this.pos = pos;
    this.fail();
    return out;
  }
}

/** Parses JSON text. Traps on invalid input. */
export function parse(text: string): JSONValue {
  const p = new Parser(text);
  const v = p.value();
  return v;
}
