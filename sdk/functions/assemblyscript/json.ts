// A small JSON value, parser and serialiser: enough to read events and database replies.

export const enum Kind {
  Null = 0,
  Bool = 1,
  Number = 2,
  String = 3,
  Array = 4,
  Object = 5,
}

export class JSONValue {
  kind: Kind = Kind.Null;
  bool: bool = false;
  num: f64 = 0;
  str: string = "";
  items: JSONValue[] = [];
  keys: string[] = [];

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
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 34) out += '\\"';
    else if (c == 92) out += "\\\\";
    else if (c == 10) out += "\\n";
    else if (c == 13) out += "\\r";
    else if (c == 9) out += "\\t";
    else if (c < 32) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
    else out += String.fromCharCode(c);
  }
  return out + '"';
}

class Parser {
  pos: i32 = 0;
  constructor(public src: string) {}

  fail(): JSONValue {
    throw new Error("invalid JSON at " + this.pos.toString());
  }

  ws(): void {
    while (this.pos < this.src.length) {
      const c = this.src.charCodeAt(this.pos);
      if (c != 32 && c != 9 && c != 10 && c != 13) break;
      this.pos++;
    }
  }

  literal(word: string): bool {
    if (this.src.substr(this.pos, word.length) == word) {
      this.pos += word.length;
      return true;
    }
    return false;
  }

  value(): JSONValue {
    this.ws();
    if (this.pos >= this.src.length) return this.fail();
    const c = this.src.charCodeAt(this.pos);
    const v = new JSONValue();
    if (c == 123) {
      v.kind = Kind.Object;
      this.pos++;
      this.ws();
      if (this.src.charCodeAt(this.pos) == 125) {
        this.pos++;
        return v;
      }
      while (true) {
        this.ws();
        if (this.src.charCodeAt(this.pos) != 34) return this.fail();
        v.keys.push(this.string());
        this.ws();
        if (this.src.charCodeAt(this.pos) != 58) return this.fail();
        this.pos++;
        v.items.push(this.value());
        this.ws();
        const d = this.src.charCodeAt(this.pos++);
        if (d == 125) return v;
        if (d != 44) return this.fail();
      }
    }
    if (c == 91) {
      v.kind = Kind.Array;
      this.pos++;
      this.ws();
      if (this.src.charCodeAt(this.pos) == 93) {
        this.pos++;
        return v;
      }
      while (true) {
        v.items.push(this.value());
        this.ws();
        const d = this.src.charCodeAt(this.pos++);
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
    while (this.pos < this.src.length) {
      const d = this.src.charCodeAt(this.pos);
      if ((d >= 48 && d <= 57) || d == 45 || d == 43 || d == 46 || d == 101 || d == 69) this.pos++;
      else break;
    }
    if (start == this.pos) return this.fail();
    v.kind = Kind.Number;
    v.num = parseFloat(this.src.substring(start, this.pos));
    return v;
  }

  string(): string {
    this.pos++; // the opening quote
    let out = "";
    let run = this.pos;
    while (this.pos < this.src.length) {
      const c = this.src.charCodeAt(this.pos);
      if (c == 34) {
        out += this.src.substring(run, this.pos);
        this.pos++;
        return out;
      }
      if (c == 92) {
        out += this.src.substring(run, this.pos);
        const e = this.src.charCodeAt(this.pos + 1);
        this.pos += 2;
        if (e == 110) out += "\n";
        else if (e == 116) out += "\t";
        else if (e == 114) out += "\r";
        else if (e == 98) out += "\b";
        else if (e == 102) out += "\f";
        else if (e == 117) {
          out += String.fromCharCode(<i32>parseInt(this.src.substr(this.pos, 4), 16));
          this.pos += 4;
        } else out += String.fromCharCode(e);
        run = this.pos;
        continue;
      }
      this.pos++;
    }
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
