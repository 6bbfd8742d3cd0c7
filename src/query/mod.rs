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
pub(crate) use eval::{decide, matches, mentions, Scope};
pub(crate) use parse::{parse_expr, parse_path, parse_sort, Dialect, ParseError};
pub(crate) use rule::{allows, Rule};

#[cfg(test)]
mod tests;
