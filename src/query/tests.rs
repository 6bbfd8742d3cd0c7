//! Table-driven tests of the parser and evaluator.

use super::ast::Expr;
use super::eval::matches;
use super::parse::{parse_expr, parse_sort, Dialect};
use serde_json::json;

/// A compact s-expression of a tree, so expectations read like the grammar.
fn sexp(e: &Expr) -> String {
    match e {
        Expr::Literal(v) => v.to_string(),
        Expr::Path(p) => p.to_string(),
        Expr::Not(a) => format!("(! {})", sexp(a)),
        Expr::And(all) => format!("(&& {})", list(all)),
        Expr::Or(any) => format!("(|| {})", list(any)),
        Expr::Compare(a, op, b) => format!("({op:?} {} {})", sexp(a), sexp(b)),
        Expr::Arith(a, op, b) => format!("({op:?} {} {})", sexp(a), sexp(b)),
        Expr::Call(func, args) => {
            let name = format!("{func:?}");
            let name = name.split('(').next().unwrap_or_default().to_string();
            format!("({name} {})", list(args)).replace(" )", ")")
        }
    }
}

fn list(operands: &[Expr]) -> String {
    operands.iter().map(sexp).collect::<Vec<_>>().join(" ")
}

fn check(input: &str, expected: &str) {
    match parse_expr(input, Dialect::Document) {
        Ok(e) => assert_eq!(sexp(&e), expected, "parse of {input:?}"),
        Err(err) => assert_eq!(
            format!("error at {}: {}", err.column, err.message),
            expected,
            "parse of {input:?}"
        ),
    }
}

#[test]
fn parses() {
    let cases = [
        ("data.title == \"hi\"", "(Eq data.title \"hi\")"),
        (
            "data.title == \"hi\" && (data.n > 5 || owner == null)",
            "(&& (Eq data.title \"hi\") (|| (Gt data.n 5) (Eq owner null)))",
        ),
        ("a_missing_root == 1", "error at 1: unknown field `a_missing_root`; use id, owner, version, created_at, updated_at or data.<field>"),
        ("data.a || data.b && data.c", "(|| data.a (&& data.b data.c))"),
        ("!data.a == true", "(Eq (! data.a) true)"),
        ("!(data.a == true)", "(! (Eq data.a true))"),
        ("data.n in [1, \"a\", null, [2]]", "(In data.n [1,\"a\",null,[2]])"),
        ("data.tags contains \"x\"", "(Contains data.tags \"x\")"),
        ("data.n >= -1.5e3", "(Ge data.n -1500.0)"),
        ("data.items.0.name != \"x\"", "(Ne data.items.0.name \"x\")"),
        ("5 < data.n", "(Lt 5 data.n)"),
        ("data.s == \"a\\\"b\\u00e9\"", "(Eq data.s \"a\\\"bé\")"),
        ("id == \"x\" && version <= 3", "(&& (Eq id \"x\") (Le version 3))"),
        ("", "error at 1: empty expression"),
        ("data.n ==", "error at 10: expected a value or a name, found end of input"),
        ("data.n = 1", "error at 8: expected `==`"),
        ("data.n == 1 == 2", "error at 13: comparisons do not chain; use parentheses and `&&`"),
        ("(data.n == 1", "error at 13: expected `)`"),
        ("data.n == 1)", "error at 12: unexpected `)`"),
        ("data.n == \"abc", "error at 11: unterminated string literal"),
        ("data.n == 01", "error at 11: invalid number `01`"),
        ("data.n == 1e999", "error at 11: number out of range `1e999`"),
        ("data.n == #", "error at 11: unexpected character `#`"),
        ("data. == 1", "error at 7: expected a field name, found `==`"),
        ("data == 1", "error at 1: unknown field `data`; use id, owner, version, created_at, updated_at or data.<field>"),
        ("collection == \"x\"", "error at 1: unknown field `collection`; use id, owner, version, created_at, updated_at or data.<field>"),
        ("data.n in [data.m]", "error at 12: array literals hold only literals, found `data`"),
        ("data.é == 1", "error at 6: unexpected character `é`"),
        ("é", "error at 1: unexpected character `é`"),
    ];
    for (input, expected) in cases {
        check(input, expected);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}data.n == 1{}", "(".repeat(10_000), ")".repeat(10_000));
    let err = parse_expr(&deep, Dialect::Document).unwrap_err();
    assert!(err.message.contains("nested deeper"), "{err}");
    let nots = format!("{}data.n", "!".repeat(10_000));
    assert!(parse_expr(&nots, Dialect::Document).is_err());
    let arrays = format!("data.n in {}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_expr(&arrays, Dialect::Document).is_err());
}

#[test]
fn long_chains_are_one_node_and_capped() {
    check(
        "data.a == 1 && data.b == 2 && data.c == 3 || data.d",
        "(|| (&& (Eq data.a 1) (Eq data.b 2) (Eq data.c 3)) data.d)",
    );
    // 499 comparisons of two terms each, under the cap: flat, and evaluated without recursion
    // as deep as the chain.
    let chain = vec!["data.n == 1"; 499].join(" || ") + " || data.n == 7";
    let expr = parse_expr(&chain, Dialect::Document).unwrap();
    match &expr {
        Expr::Or(any) => assert_eq!(any.len(), 500),
        other => panic!("not one node: {other:?}"),
    }
    assert!(matches(&expr, &json!({"data": {"n": 7}})));
    assert!(!matches(&expr, &json!({"data": {"n": 8}})));
    let over = vec!["data.n == 1"; 20_000].join(" || ");
    let err = parse_expr(&over, Dialect::Document).unwrap_err();
    assert!(err.message.contains("more than 1000 terms"), "{err}");
}

#[test]
fn decides_without_the_unknown_root() {
    use super::eval::decide;
    let rule = |src: &str| parse_expr(src, Dialect::Rule).unwrap();
    let anon = json!({"auth": null});
    let user = json!({"auth": {"id": "u1"}});
    let owner_rule = rule("auth != null && doc.owner == auth.id");
    assert_eq!(decide(&owner_rule, &anon, "doc"), Some(false));
    assert_eq!(decide(&owner_rule, &user, "doc"), None);
    assert_eq!(
        decide(
            &rule("auth == null || doc.data.public == true"),
            &anon,
            "doc"
        ),
        Some(true)
    );
    assert_eq!(
        decide(&rule("!(auth != null && doc.data.x == 1)"), &anon, "doc"),
        Some(true)
    );
    assert_eq!(
        decide(&rule("doc.data.x == 1 || doc.data.y == 2"), &user, "doc"),
        None
    );
    assert_eq!(decide(&rule("auth.id == \"u1\""), &user, "doc"), Some(true));
}

#[test]
fn rule_dialect_names() {
    let ok = [
        "auth != null",
        "doc.owner == auth.id",
        "request.data.title != null && doc.data.n > 1",
        "doc == null || doc.owner == auth.id",
        "\"\" == \"\"",
    ];
    for rule in ok {
        assert!(parse_expr(rule, Dialect::Rule).is_ok(), "{rule}");
    }
    let bad = [
        "data.n == 1",
        "request.body == 1",
        "doc.nope == 1",
        "owner == null",
    ];
    for rule in bad {
        assert!(parse_expr(rule, Dialect::Rule).is_err(), "{rule}");
    }
}

#[test]
fn file_rule_dialect_names() {
    let ok = [
        "auth != null && (file == null || file.owner == auth.id)",
        "request.size < 1048576 && request.content_type == \"image/png\"",
        "file.sha256 != null && request.path != null",
    ];
    for rule in ok {
        assert!(parse_expr(rule, Dialect::FileRule).is_ok(), "{rule}");
    }
    let bad = [
        "doc.owner == auth.id",
        "request.data.x == 1",
        "file.data.x == 1",
        "file.nope == 1",
        "request == null",
    ];
    for rule in bad {
        assert!(parse_expr(rule, Dialect::FileRule).is_err(), "{rule}");
    }
}

#[test]
fn sorts() {
    let keys = parse_sort("-data.n, created_at,+id").unwrap();
    let shown: Vec<String> = keys
        .iter()
        .map(|k| format!("{}{}", if k.descending { "-" } else { "+" }, k.path))
        .collect();
    assert_eq!(shown, ["-data.n", "+created_at", "+id"]);
    let err = parse_sort("data.n,-nope").unwrap_err();
    assert_eq!(err.column, 9, "{err}");
    assert!(parse_sort("").is_err());
    assert!(parse_sort("data.n,").is_err());
}

#[test]
fn evaluates() {
    let doc = json!({
        "id": "01A", "owner": null, "version": 3,
        "data": {"title": "hi", "n": 7, "f": 7.0, "tags": ["a", "b"], "nested": {"x": [1, {"y": true}]}, "nil": null}
    });
    let cases = [
        ("data.title == \"hi\"", true),
        ("data.n == 7.0", true),
        ("data.n == data.f", true),
        ("data.n == \"7\"", false),
        ("data.n != \"7\"", true),
        ("data.missing == null", true),
        ("data.nil == null", true),
        ("data.missing != null", false),
        ("data.n > 5 && data.n < 8", true),
        ("data.n > \"5\"", false),
        ("data.n <= \"5\"", false),
        ("data.title < \"hj\"", true),
        ("data.title >= \"hi\"", true),
        ("null < 1", false),
        ("true > false", false),
        ("data.n in [1, 7]", true),
        ("data.n in [\"7\"]", false),
        ("data.n in 7", false),
        ("data.tags contains \"a\"", true),
        ("data.tags contains \"c\"", false),
        ("data.title contains \"i\"", true),
        ("data.title contains 1", false),
        ("data.n contains 7", false),
        ("data.nested.x.1.y == true", true),
        ("data.nested.x.9 == null", true),
        ("data.tags == [\"a\", \"b\"]", true),
        ("!data.nested.x.1.y", false),
        ("!data.title", true),
        ("data.title", false),
        ("owner == null || data.n == 0", true),
        ("version == 3", true),
        ("id == \"01A\"", true),
        ("!(data.n == 7) || data.title == \"no\"", false),
    ];
    for (input, expected) in cases {
        let expr = parse_expr(input, Dialect::Document).unwrap();
        assert_eq!(matches(&expr, &doc), expected, "{input}");
    }
}

#[test]
fn parses_functions_and_arithmetic() {
    let cases = [
        ("size(data.tags) > 2", "(Gt (Size data.tags) 2)"),
        ("startsWith(data.s, \"a\")", "(StartsWith data.s \"a\")"),
        ("matches(data.s, \"^a+$\")", "(Matches data.s)"),
        (
            "now() - duration(\"P1D\") < data.t",
            "(Lt (Sub (Now) (Duration)) data.t)",
        ),
        (
            "data.t > time(data.u) + duration(\"PT1H\") - duration(\"PT1M\")",
            "(Gt data.t (Sub (Add (Time data.u) (Duration)) (Duration)))",
        ),
        (
            "data.n > -1 && data.n-1 == 2",
            "error at 21: expected `==`, `!=`... ",
        ),
        ("size()", "error at 1: size takes 1 argument, not 0"),
        (
            "size(data.a, data.b)",
            "error at 1: size takes 1 argument, not 2",
        ),
        ("nope(data.a)", "error at 1: unknown function `nope`"),
        (
            "matches(data.s, data.p)",
            "error at 1: matches(x, \"pattern\") takes its pattern as a string literal",
        ),
        (
            "matches(data.s, \"(\")",
            "error at 1: invalid pattern: regex parse error:\n    (\n    ^\nerror: unclosed group",
        ),
        (
            "duration(\"P1Y\") == 1",
            "error at 1: invalid duration \"P1Y\": years and months have no fixed length; use days",
        ),
        (
            "changed(\"data.a\")",
            "error at 1: changed() is only for collection rules",
        ),
        (
            "size(data.a",
            "error at 12: expected `,` or `)` in the arguments of size, found end of input",
        ),
    ];
    for (input, expected) in cases {
        if expected.ends_with("... ") {
            // `data.n-1`: a name then `-` is subtraction, which is fine to parse; it is `null`.
            assert!(parse_expr(input, Dialect::Document).is_ok(), "{input}");
            continue;
        }
        check(input, expected);
    }
}

/// What rule and filter functions give, including type mismatches, unicode, pathological
/// patterns (linear: this would not finish with a backtracking engine) and `changed`.
#[test]
fn functions_evaluate() {
    let long_a = "a".repeat(50_000);
    let doc = json!({
        "data": {
            "s": "Héllo wörld", "e": "", "tags": ["a", "b", "c"], "o": {"k": 1, "j": null},
            "n": 5, "t": "2026-11-29T12:00:00Z", "t2": "2026-11-29T13:00:00+01:00",
            "bad_t": "yesterday", "long": format!("{long_a}!"),
        }
    });
    let cases = [
        ("size(data.s) == 11", true),
        ("size(data.e) == 0", true),
        ("size(data.tags) == 3", true),
        ("size(data.o) == 2", true),
        ("size(data.n) == null", true),
        ("size(data.missing) == null", true),
        ("startsWith(data.s, \"Hé\")", true),
        ("endsWith(data.s, \"wörld\")", true),
        ("startsWith(data.n, \"5\")", false),
        ("startsWith(data.s, 5)", false),
        ("lower(data.s) == \"héllo wörld\"", true),
        ("upper(data.s) == \"HÉLLO WÖRLD\"", true),
        ("lower(data.n) == null", true),
        ("matches(data.s, \"^H.llo\")", true),
        ("matches(data.s, \"^h\")", false),
        ("matches(data.n, \".*\")", false),
        ("matches(data.long, \"^(a+)+$\")", false),
        ("matches(data.long, \"^(a|aa)*!$\")", true),
        ("has(data.o, \"j\")", true),
        ("has(data.o, \"x\")", false),
        ("has(data.tags, \"a\")", false),
        ("keys(data.o) == [\"j\", \"k\"]", true),
        ("keys(data.tags) == null", true),
        (
            "type(data.s) == \"string\" && type(data.n) == \"number\"",
            true,
        ),
        (
            "type(data.o) == \"object\" && type(data.tags) == \"array\"",
            true,
        ),
        (
            "type(data.missing) == \"null\" && type(now()) == \"time\"",
            true,
        ),
        ("type(duration(\"P1D\")) == \"duration\"", true),
        // Times compare by instant, whatever their offset or precision.
        ("time(data.t) == time(data.t2)", true),
        ("time(data.t) == data.t2", true),
        ("data.t < now()", true),
        ("time(data.t) + duration(\"PT1H\") > data.t2", true),
        (
            "time(data.t) + duration(\"PT1H\") - duration(\"PT1H\") == data.t2",
            true,
        ),
        ("time(data.t2) - time(data.t) == duration(\"PT0S\")", true),
        ("now() + duration(\"P7D\") > now()", true),
        ("time(data.bad_t) == null", true),
        ("data.bad_t < now()", false),
        ("data.n + duration(\"P1D\") == null", true),
        ("data.t + 1 == null", true),
    ];
    for (src, expected) in cases {
        let expr = parse_expr(src, Dialect::Document).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(matches(&expr, &doc), expected, "{src}");
    }

    // `changed`, in a rule: the stored document against what the write leaves.
    let scope = json!({
        "doc": {"data": {"title": "a", "n": 1, "nested": {"x": 1}}},
        "request": {"data": {"title": "a", "n": 2, "nested": {"x": 1}, "new": true}},
    });
    for (src, expected) in [
        ("changed(\"data.title\")", false),
        ("changed(\"data.n\")", true),
        ("changed(\"data.nested.x\")", false),
        ("changed(\"data.new\")", true),
        (
            "!changed(\"data.title\") && request.data.n > doc.data.n",
            true,
        ),
    ] {
        let expr = parse_expr(src, Dialect::Rule).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(matches(&expr, &scope), expected, "{src}");
    }
    assert!(parse_expr("changed(\"title\")", Dialect::Rule).is_err());
    assert!(parse_expr("changed(data.title)", Dialect::Rule).is_err());
}

/// The vectors the TypeScript SDK's evaluator is tested against too (`tests/vectors/`), so
/// that the offline cache answers a query as the server would.
#[test]
fn shared_vectors() {
    use super::eval::walk;
    use super::order::total_cmp;
    use super::plan::effective_sort;
    use serde_json::Value;

    let vectors: Value =
        serde_json::from_str(include_str!("../../tests/vectors/filters.json")).expect("vectors");
    let doc = &vectors["document"];
    let mut wrong = Vec::new();
    for case in vectors["filters"].as_array().expect("filters") {
        let filter = case["filter"].as_str().expect("filter");
        match parse_expr(filter, Dialect::Document) {
            Ok(e) if Value::Bool(matches(&e, doc)) == case["matches"] => {}
            Ok(_) => wrong.push(format!("{filter}: expected {}", case["matches"])),
            Err(e) => wrong.push(format!("{filter}: {e}")),
        }
    }
    for case in vectors["errors"].as_array().expect("errors") {
        let filter = case["filter"].as_str().expect("filter");
        match parse_expr(filter, Dialect::Document) {
            Err(e) if case["column"] == e.column => {}
            Err(e) => wrong.push(format!("{filter}: {e}, expected column {}", case["column"])),
            Ok(_) => wrong.push(format!("{filter}: parsed")),
        }
    }
    let values = vectors["values"].as_array().expect("values");
    for (i, a) in values.iter().enumerate() {
        for (j, b) in values.iter().enumerate() {
            if total_cmp(a, b) != i.cmp(&j) {
                wrong.push(format!("order of {a} and {b}"));
            }
        }
    }
    let docs = vectors["documents"].as_array().expect("documents");
    for case in vectors["orders"].as_array().expect("orders") {
        let sort = case["sort"].as_str().expect("sort");
        let requested = if sort.is_empty() {
            Vec::new()
        } else {
            parse_sort(sort).expect("sort")
        };
        let keys = effective_sort(&requested);
        let mut sorted: Vec<&Value> = docs.iter().collect();
        sorted.sort_by(|a, b| {
            keys.iter()
                .map(|k| {
                    let at = |d: &Value| walk(d, &k.path.segments).cloned().unwrap_or(Value::Null);
                    let o = total_cmp(&at(a), &at(b));
                    if k.descending {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let ids: Vec<&Value> = sorted.iter().map(|d| &d["id"]).collect();
        if ids
            != case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .collect::<Vec<_>>()
        {
            wrong.push(format!("sort {sort}: {ids:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
