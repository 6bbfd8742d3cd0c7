//! The filter language: parser, evaluator, value order and query planner.
//!
//! Written once and shared by document queries, access rules and (later) realtime and bucket
//! rules. Nothing here touches storage: the planner only *chooses* an access path; `store`
//! executes it.

pub(crate) mod ast;
pub(crate) mod eval;
mod functions;
pub(crate) mod order;
pub(crate) mod parse;
pub(crate) mod plan;
pub(crate) mod rule;

pub(crate) use ast::{Expr, SortKey};
pub(crate) use eval::{decide, matches, mentions, reads_clock, Scope};
pub(crate) use functions::parse_time;
pub(crate) use parse::{parse_expr, parse_path, parse_sort, Dialect, ParseError};
pub(crate) use rule::{allows, Rule};

/// A rule compiled and evaluated as collections do, for `benches/rules.rs` (see
/// `crate::internals`).
#[cfg(feature = "internals")]
pub mod bench {
    /// A compiled collection rule.
    pub struct CompiledRule(super::Rule);

    impl CompiledRule {
        pub fn compile(src: &str) -> Result<CompiledRule, String> {
            super::Rule::compile(Some(src))
                .map(CompiledRule)
                .map_err(|e| e.to_string())
        }

        /// Whether the rule allows the bindings in `scope` (`auth`, `doc`, `request`).
        pub fn allows(&self, scope: &serde_json::Value) -> bool {
            super::allows(&self.0, scope)
        }
    }
}

#[cfg(test)]
mod tests;
