//! The SQL gateway's second line of defence: the database's own check of
//! every statement a plugin sends, derived from the same `[sql.<alias>]`
//! grant ([`SqlPolicy`]) as the statement checker (the first line,
//! [`super::check()`]). Each line is meant to hold on its own where it can:
//! a statement the parser wrongly passes still meets the database's refusal,
//! and a statement the parser refuses never reaches the database.
//!
//! - [`sqlite`]: an authorizer (`sqlite3_set_authorizer`) registered once
//!   per connection; [`sqlite::enter`] gives it a plugin's grant before the
//!   plugin's statement is prepared, [`sqlite::leave`] takes it back. It
//!   sees every table and column read, every table written (columns for
//!   `UPDATE`), every function called and every statement kind.
//! - [`sqlite_functions`]: SQLite built-ins whose time grows with the
//!   product of their arguments' lengths, refused past a bound on every
//!   pooled connection (one call is one step: no deadline reaches inside).
//! - [`sqlite_temp_files`]: temporary files in memory under SQLite's heap
//!   limit, so that a sort runs in bounded steps.
//! - [`postgres`]: a role per plugin whose `GRANT`s [`postgres::sync`] keeps
//!   in step with the policy; [`postgres::enter`] switches to it inside the
//!   call's transaction (`SET LOCAL ROLE`, `statement_timeout`,
//!   `search_path`).
//!
//! What neither database can enforce from a grant alone (literals under
//! `params_only`, `UPDATE`/`DELETE` without `WHERE` on a granted table,
//! row caps, PostgreSQL functions, a statement that switches the role back)
//! is the first line's job; the README's "SQL: the database's own check"
//! lists each case, and `tests/all/sql_guard.rs` pins them.
//!
//! The SQLite guard wraps the connection it is installed on
//! ([`sqlite::Guarded`], which the gateway's SQLite pool keeps); the
//! PostgreSQL guard works on plain sqlx connections.

pub mod postgres;
pub mod sqlite;
mod sqlite_functions;
pub mod sqlite_temp_files;

/// Why the database's check could not be set up or switched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The connection's driver failed (closed connection, server error).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// [`sqlite::install`] on a connection that is not serialized
    /// (`SQLITE_OPEN_FULLMUTEX`), whose raw handle the guard may not use
    /// from the caller's thread.
    #[error("the SQLite connection is not serialized (open it with serialized(true))")]
    NotSerialized,
    /// SQLite refused to register the authorizer's data (out of memory).
    #[error("SQLite could not register the authorizer (code {0})")]
    Sqlite(i32),
    /// A plugin name outside `[a-z0-9_-]` (escaped here).
    #[error("invalid plugin name `{0}` for a database role")]
    InvalidPlugin(String),
    /// [`postgres::enter`] outside a transaction, where `SET LOCAL` would
    /// change nothing.
    #[error("the plugin's role can only be entered inside a transaction")]
    NotInTransaction,
    /// The login role may not create or switch to plugin roles.
    #[error(
        "the database login cannot manage plugin roles ({0}): it needs CREATEROLE (see the README, SQL: the database's own check)"
    )]
    RoleManagement(String),
    /// `manage_roles = false`, and the plugin's role is missing or the
    /// login is not a member of it.
    #[error(
        "role `{0}` does not exist or the database login is not a member of it: with manage_roles = false the \
         operator creates it (NOLOGIN) and grants it to the login"
    )]
    RoleNotProvided(String),
}
