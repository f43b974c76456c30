//! The SQL gateway: plugins query the databases the settings name
//! (`[databases.<alias>]`, PostgreSQL or SQLite) within their
//! `[sql.<alias>]` grants. A statement is parsed by a real SQL parser in
//! its database's dialect and walked node by node against the grant (what
//! the walk does not know is refused), then run on a pooled connection
//! that keeps no session state between calls, where the database checks
//! the same grant again ([`guard`]).
//!
//! # Layout
//! - [`policy`]: the `[sql.<alias>]` grant ([`SqlPolicy`]) and its TOML
//!   section, validated with every problem's place. Pure.
//! - [`check`]: [`check()`] parses one statement and walks it: statement
//!   kinds, tables and columns per kind of access, CTE scoping, functions,
//!   literals and placeholders, always-refused statements. Pure.
//! - [`names`]: identifiers and schemas as each database reads them.
//! - [`functions`]: the default function allow-list of each dialect.
//! - [`denial`]: [`Denial`] and its [`Rule`], what a refusal says.
//! - [`guard`]: the second line, the database's own check of the same
//!   grant (SQLite authorizer, PostgreSQL roles).
//! - [`pool`]: [`SqlGateway`], one lazily opened pool per alias and each
//!   plugin's share of it (`per_plugin_connections`); the embedded
//!   application database and its migrations.
//! - [`conn_pool`]: the gateway's connection pool, for both databases;
//!   [`super::fair_places`]: its places, a freed one given to the waiting plugin
//!   holding the fewest.
//! - [`held`]: connections plugins hold between calls (Spin connections,
//!   transactions), taken back when they sit idle while another waits.
//! - [`running`]: long statements ended for a plugin waiting for a
//!   connection (which to end; PostgreSQL's statements running).
//! - [`sqlite_pool`]: SQLite connections pooled with their authorizer's
//!   raw handle.
//! - [`write_share`]: how the plugins writing to one SQLite alias share
//!   it: bytes written to its WAL, and time holding its turn to write.
//! - [`sqlite_step`]: a plugin's SQLite statement stepped on that handle
//!   on one blocking thread, rows decoded under the caps as they come.
//! - [`pg_prepared`]: which of a plugin's statements a PostgreSQL
//!   connection keeps prepared while it carries the plugin's session.
//! - [`exec`]: [`SqlConnection`], one held connection: the check,
//!   parameters, both deadlines, rows streamed under the caps,
//!   transactions, and closing a connection left in an unknown state.
//! - [`value`]: [`Value`] and [`Rows`], and how database types map onto
//!   them.
//! - [`error`]: [`SqlError`], one variant per guest-visible kind, database
//!   text escaped and bounded.
//! - [`host`]: [`PluginSql`] (a loaded plugin's grants, checked against the
//!   settings), [`SqlHost`] (one invocation: its open transactions and Spin
//!   connections) and the door `gatehouse:services/sql`.
//! - [`spin`]: Spin's sqlite doors (`fermyon:spin/sqlite@2.0.0`,
//!   `spin:sqlite/sqlite@3.0.0`): one [`SqlConnection`] per open connection
//!   resource, statements checked for [`Door::Spin`], errors as Spin's
//!   variants.
//! - [`metrics`]: calls by plugin, alias and outcome, with latencies.
//!
//! `gatehouse policy explain-sql` (`cli/explain_sql.rs`) runs [`check_for`]
//! on a policy file's section, validated as the loader validates it.

pub mod check;
pub mod check_cache;
pub mod conn_pool;
pub mod denial;
pub mod error;
pub mod exec;
pub mod functions;
pub mod guard;
pub mod held;
pub mod host;
pub mod metrics;
pub mod names;
pub mod pg_pool;
pub mod pg_prepared;
pub mod policy;
pub mod pool;
pub mod relay;
pub mod running;
pub mod spin;
pub mod sqlite_pool;
pub mod sqlite_step;
pub mod value;
pub mod write_share;

use std::fmt;

pub use check::{Checked, StatementKind, check, check_for};
pub use denial::{Denial, Rule};
pub use error::SqlError;
pub use exec::{Limits, Outcome, SqlConnection};
pub use host::{PluginSql, SqlHost, SqlService};
pub use policy::{Access, Door, Kind, SqlPolicy, SqlSection, TableGrant};
pub use pool::SqlGateway;
pub use spin::SpinSqlService;
pub use value::{Column, Rows, Value};

/// Longest statement checked, in bytes; longer is refused before parsing
/// (`invalid-input`). Real statements are a few hundred bytes; 64 KiB
/// bounds what one check can cost (parse and walk are linear in it).
pub const MAX_STATEMENT: usize = 64 << 10;
/// The parser's recursion limit (parenthesised expressions, sub-queries):
/// past it the statement is refused as unparsable. sqlparser's own default
/// (50) let 50 nested `FROM (SELECT …)` overflow a 1 MiB stack; at 32 the
/// deepest statements still fit in half of a tokio worker's 2 MiB (tested).
pub const PARSER_DEPTH: usize = 32;
/// How deep the checker walks nested expressions, sub-queries and `FROM`
/// items; deeper is refused ([`Rule::TooDeep`]). Chains of one binary
/// operator (`a AND b AND …`) are walked in a loop and cost no depth.
pub const MAX_DEPTH: usize = 200;
/// Most function calls one statement may write; more is refused
/// ([`Rule::TooManyCalls`]). SQLite checks a statement's deadline only at
/// jumps, and the calls of one row have none between them: each allowed
/// built-in is linear in its arguments (`length`, `hex`, `json_extract` of
/// a 16 MiB value take ~10 ms), so this bounds a row's unchecked work.
/// Real statements write a handful.
pub const MAX_FUNCTION_CALLS: usize = 64;
/// Most operators one statement may write (comparisons, arithmetic,
/// concatenation, casts, `LIKE`, `BETWEEN`, `IN` and `CASE` tests, each
/// element of a row-value comparison, each argument of a call past its
/// first, …); more is refused ([`Rule::TooManyCalls`]). Like a function call, an operator
/// is one virtual-machine step linear in its operands (a `COLLATE NOCASE`
/// comparison of two 8 MiB strings takes ~6 ms), and the operators of one
/// row have no deadline check between them: an outside review held a
/// connection 13 s past a 1 s deadline with 2,000 of them in one row.
/// Real statements write a few dozen.
pub const MAX_OPERATORS: usize = 128;

/// The SQL dialect of a database alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
        })
    }
}
