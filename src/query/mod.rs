//! The filter language of `API.md`: parser, evaluator, value order and query planner.
//!
//! Written once and shared by document queries, access rules and (later) realtime and bucket
//! rules. Nothing here touches storage: the planner only *chooses* an access path; `store`
//! executes it.

pub mod ast;
pub mod eval;
pub mod order;
pub mod parse;
pub mod plan;
pub mod rule;

pub use ast::{CmpOp, Expr, Path, SortKey};
pub use eval::{decide, matches, mentions, Scope};
pub use parse::{parse_expr, parse_path, parse_sort, Dialect, ParseError};
pub use rule::{allows, Rule, MAX_RULE_LENGTH};

#[cfg(test)]
mod tests;
