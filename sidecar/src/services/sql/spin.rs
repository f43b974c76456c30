//! Spin's sqlite doors, `fermyon:spin/sqlite@2.0.0` and
//! `spin:sqlite/sqlite@3.0.0` (generated from the WIT vendored under
//! `wit/deps/spin-2.0.0` and `wit/deps/spin-sqlite-3.0.0`), onto the same
//! grants, checks and executor as `gatehouse:services/sql`.
//!
//! Components built with the Spin SDK open a connection by label, then send
//! every statement through `execute`, `BEGIN TRANSACTION` and
//! `END TRANSACTION` included, expecting them to act on that connection.
//! So each open connection resource holds one [`SqlConnection`] of the
//! plugin's share for its whole life, and statements are checked for
//! [`Door::Spin`] (plain `BEGIN`/`COMMIT`/`END`/`ROLLBACK` allowed unless
//! the policy sets `transaction_control = false`), by the parser and by the
//! SQLite authorizer alike.
//!
//! - `open(label)`: the plugin's `[sql.<label>]`; `"default"` (the label
//!   Spin components use when they name none) is `[sql.default]` if
//!   granted, else `[sql.app]`, the embedded application database.
//!   Anything else is `access-denied`, whether or not the alias exists.
//! - At most [`MAX_CONNECTIONS`] open per invocation (both versions
//!   together); each also holds one connection of the plugin's share.
//!   Dropping one, or the end of the invocation, drops its connection,
//!   which rolls back a transaction left open (the connection is closed,
//!   never returned with the transaction on it).
//! - A statement cut off or abandoned (timeout, result cap) leaves the
//!   connection unusable; outside a transaction the door quietly takes a
//!   fresh one for the next statement (nothing was lost), inside one the
//!   transaction is gone, so every statement is `invalid-connection`
//!   until the guest says `ROLLBACK` (which then succeeds on a fresh
//!   connection), so no later statement runs outside the transaction the
//!   guest believes open.
//! - Errors: a refusal by the policy or the database's own check is
//!   `access-denied` (the reason is logged, escaped and bounded); every
//!   other failure is `io(<kind>: <message>)`, so the gateway's error
//!   kinds and retry hints still reach the guest (see the README's table).
//! - `last-insert-rowid` and `changes` (3.0.0) are the connection's, as in
//!   SQLite, but counted by the door from each statement's own result:
//!   nothing is read from the pooled connection that an earlier borrower
//!   could have left there. On PostgreSQL `last-insert-rowid` stays 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, Resource};

use super::error::SqlError;
use super::exec::{self, Limits, SqlConnection};
use super::held::Held;
use super::host::SqlHost;
use super::pool::APP_ALIAS;
use super::value::{Rows, Value};
use super::{Door, StatementKind};
use crate::guest_text;

/// Spin connections one invocation may hold open at once (both versions
/// together). Each also holds one connection of the plugin's share, which
/// bounds them first when the share is smaller.
pub const MAX_CONNECTIONS: usize = 16;

/// The label Spin components open when they name no database.
pub const DEFAULT_LABEL: &str = "default";

/// `fermyon:spin/sqlite@2.0.0`.
#[allow(missing_docs)]
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/deps/spin-2.0.0",
        inline: "package gatehouse:spin-doors; world sqlite-v2 { import fermyon:spin/sqlite@2.0.0; }",
        imports: { default: async | trappable },
        with: { "fermyon:spin/sqlite.connection": super::ConnectionV2 },
    });
}

/// `spin:sqlite/sqlite@3.0.0`.
#[allow(missing_docs)]
pub mod v3 {
    wasmtime::component::bindgen!({
        path: "../wit/deps/spin-sqlite-3.0.0",
        inline: "package gatehouse:spin-doors; world sqlite-v3 { import spin:sqlite/sqlite@3.0.0; }",
        imports: { default: async | trappable },
        with: { "spin:sqlite/sqlite.connection": super::ConnectionV3 },
    });
}

use v2::fermyon::spin::sqlite as wit2;
use v3::spin::sqlite::sqlite as wit3;

/// The resource type of a 2.0.0 connection: its representation is the key
/// of the connection in [`SpinConnections`].
pub struct ConnectionV2;

/// The resource type of a 3.0.0 connection, keyed like [`ConnectionV2`].
pub struct ConnectionV3;

/// Links both doors against [`SqlHost`].
pub struct SpinSqlService;

impl HasData for SpinSqlService {
    type Data<'a> = &'a mut SqlHost;
}

/// The Spin connections of one invocation.
#[derive(Default)]
pub struct SpinConnections {
    open: HashMap<u32, Open>,
    next: u32,
}

struct Open {
    alias: String,
    /// Empty after a failure left it unusable and no fresh one could be
    /// had yet, or once taken back while idle ([`super::held`]).
    connection: Held,
    /// A transaction was open when the connection became unusable: the
    /// guest is told until it rolls back.
    lost_transaction: bool,
    last_insert_rowid: i64,
    changes: u64,
}

/// Why a Spin call failed, before it takes one version's error type.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    AccessDenied,
    InvalidConnection,
    Io(String),
}

impl From<SqlError> for Refusal {
    fn from(error: SqlError) -> Refusal {
        match error {
            SqlError::Denied(_) => Refusal::AccessDenied,
            other => {
                let retry = other
                    .retry_after()
                    .map(|d| format!(" (retry after {} ms)", d.as_millis().max(1)))
                    .unwrap_or_default();
                Refusal::Io(format!("{}: {other}{retry}", other.kind()))
            }
        }
    }
}

/// A connection that cannot be used, with why (for the log).
fn invalid_connection(why: &str) -> (Refusal, SqlError) {
    (Refusal::InvalidConnection, SqlError::InvalidInput(why.into()))
}

/// What a refused call logs, and what the guest gets.
type Failed = (Refusal, SqlError);

fn failed(error: SqlError) -> Failed {
    (Refusal::from(error.clone()), error)
}

impl SqlHost {
    /// The alias `label` opens, if the plugin has it.
    fn spin_alias(&self, label: &str) -> Option<String> {
        let grants = &self.plugin.as_deref()?.grants;
        if grants.contains_key(label) {
            return Some(label.to_string());
        }
        (label == DEFAULT_LABEL && grants.contains_key(APP_ALIAS)).then(|| APP_ALIAS.to_string())
    }

    async fn spin_open(&mut self, label: &str) -> Result<u32, Failed> {
        let Some(alias) = self.spin_alias(label) else {
            return Err(failed(SqlError::Denied(format!(
                "database `{}` is not granted: the policy has no [sql.{0}]{}",
                guest_text::escape(label, guest_text::SHORT),
                if label == DEFAULT_LABEL { " nor [sql.app]" } else { "" }
            ))));
        };
        if self.spin.open.len() >= MAX_CONNECTIONS {
            return Err(failed(SqlError::InvalidInput(format!(
                "{MAX_CONNECTIONS} Spin connections are open in this invocation: drop one first"
            ))));
        }
        let connection = self.spin_connect(&alias).await.map_err(failed)?;
        let key = self.spin.next;
        self.spin.next = self.spin.next.wrapping_add(1);
        self.spin
            .open
            .insert(key, Open { alias, connection, lost_transaction: false, last_insert_rowid: 0, changes: 0 });
        Ok(key)
    }

    async fn spin_connect(&self, alias: &str) -> Result<Held, SqlError> {
        let (plugin, grant) = self.grant(alias)?;
        let connection = SqlConnection::open(&grant.alias, &plugin.plugin, grant.guard(Door::Spin), &self.stop).await?;
        Ok(Held::new(grant.alias.holdings(), &plugin.plugin, connection))
    }

    async fn spin_execute(&mut self, key: u32, statement: &str, params: &[Value]) -> Result<Rows, Failed> {
        let alias = self.spin_alias_of(key)?;
        let plugin = Arc::clone(self.plugin.as_ref().ok_or_else(|| invalid_connection("no [sql] grant"))?);
        let (_, grant) = self.grant(&alias).map_err(failed)?;
        let checked = grant.checked(Door::Spin, statement, params).map_err(failed)?;
        let limits = Limits::from(&grant.policy);

        let open = self.spin.open.get_mut(&key).ok_or_else(|| invalid_connection("unknown connection handle"))?;
        let mut lent = open.connection.lend();
        if lent.taken_back.is_some_and(|taken| taken.in_transaction) {
            open.lost_transaction = true;
            if checked.kind != StatementKind::Rollback {
                return Err(invalid_connection(
                    "the connection's transaction was rolled back: the connection was taken back for another \
                     plugin that waited while this plugin held the most (ROLLBACK to go on)",
                ));
            }
        }
        let unusable = lent.connection.as_ref().is_none_or(SqlConnection::is_broken);
        if unusable {
            if open.lost_transaction && checked.kind != StatementKind::Rollback {
                return Err(invalid_connection(
                    "the connection's transaction was lost to an earlier error: ROLLBACK to go on",
                ));
            }
            // The old connection is closed (rolling back whatever it held)
            // before a fresh one is taken from the share.
            lent.connection = None;
            if open.lost_transaction {
                // The guest's ROLLBACK: what it rolls back is gone already,
                // and it needs no connection (review 18: under pressure a
                // fresh one was refused, and the connection stayed
                // unusable). The next statement takes one.
                open.lost_transaction = false;
                return Ok(Rows::default());
            }
            let grant = plugin.grants.get(&alias).ok_or_else(|| invalid_connection("no grant"))?;
            let fresh = SqlConnection::open(&grant.alias, &plugin.plugin, grant.guard(Door::Spin), &self.stop)
                .await
                .map_err(failed)?;
            lent.connection = Some(fresh);
        }
        let connection = lent.connection.as_mut().ok_or_else(|| invalid_connection("no connection"))?;
        let was_in_transaction = connection.in_transaction();
        let ran = connection.run(&checked, statement, params, limits).await;
        let lost = was_in_transaction && connection.is_broken();
        drop(lent);
        let open = self.spin.open.get_mut(&key).ok_or_else(|| invalid_connection("unknown connection handle"))?;
        match ran {
            Ok(done) => {
                if exec::writes(checked.kind) {
                    open.changes = done.changes;
                    if let Some(rowid) = done.last_insert_rowid {
                        open.last_insert_rowid = rowid;
                    }
                }
                Ok(done.rows)
            }
            Err(error) => {
                if lost {
                    open.lost_transaction = true;
                }
                Err(failed(error))
            }
        }
    }

    fn spin_alias_of(&self, key: u32) -> Result<String, Failed> {
        self.spin.open.get(&key).map(|open| open.alias.clone()).ok_or_else(|| invalid_connection("unknown handle"))
    }

    fn spin_counts(&self, key: u32) -> (i64, u64) {
        self.spin.open.get(&key).map_or((0, 0), |open| (open.last_insert_rowid, open.changes))
    }

    /// Counts and logs one call; what the guest gets.
    fn spin_call<T>(
        &mut self,
        db: &str,
        statement: Option<&str>,
        started: Instant,
        result: Result<T, Failed>,
    ) -> Result<T, Refusal> {
        let logged = result.as_ref().map(drop).map_err(|(_, error)| error.clone());
        self.record(db, statement, &logged, started.elapsed());
        result.map_err(|(refusal, _)| refusal)
    }
}

type Answer<T, E> = wasmtime::Result<Result<T, E>>;

/// One version's door: 3.0.0 is 2.0.0 plus the two counters (`$extra`).
macro_rules! door {
    ($wit:ident, $resource:ty, $($extra:tt)*) => {
        impl From<Refusal> for $wit::Error {
            fn from(refusal: Refusal) -> $wit::Error {
                match refusal {
                    Refusal::AccessDenied => $wit::Error::AccessDenied,
                    Refusal::InvalidConnection => $wit::Error::InvalidConnection,
                    Refusal::Io(text) => $wit::Error::Io(text),
                }
            }
        }

        impl $wit::Host for SqlHost {}

        impl $wit::HostConnection for SqlHost {
            async fn open(&mut self, database: String) -> Answer<Resource<$resource>, $wit::Error> {
                let started = Instant::now();
                let result = self.spin_open(&database).await;
                let shown = self.spin_alias(&database).unwrap_or(database);
                let result = self.spin_call(&shown, None, started, result);
                Ok(result.map(Resource::new_own).map_err(Into::into))
            }

            async fn execute(
                &mut self,
                this: Resource<$resource>,
                statement: String,
                parameters: Vec<$wit::Value>,
            ) -> Answer<$wit::QueryResult, $wit::Error> {
                let started = Instant::now();
                let params: Vec<Value> = parameters
                    .into_iter()
                    .map(|v| match v {
                        $wit::Value::Integer(i) => Value::Int(i),
                        $wit::Value::Real(f) => Value::Float(f),
                        $wit::Value::Text(t) => Value::Text(t),
                        $wit::Value::Blob(b) => Value::Blob(b),
                        $wit::Value::Null => Value::Null,
                    })
                    .collect();
                let db = self.spin_alias_of(this.rep()).unwrap_or_default();
                let result = self.spin_execute(this.rep(), &statement, &params).await;
                let result = self.spin_call(&db, Some(&statement), started, result);
                Ok(result
                    .map(|rows| $wit::QueryResult {
                        columns: rows.columns.into_iter().map(|c| c.name).collect(),
                        rows: rows
                            .rows
                            .into_iter()
                            .map(|row| $wit::RowResult {
                                values: row
                                    .into_iter()
                                    .map(|v| match v {
                                        Value::Null => $wit::Value::Null,
                                        // Spin's values have no boolean:
                                        // SQLite's own 0 and 1.
                                        Value::Bool(b) => $wit::Value::Integer(i64::from(b)),
                                        Value::Int(i) => $wit::Value::Integer(i),
                                        Value::Float(f) => $wit::Value::Real(f),
                                        Value::Text(t) => $wit::Value::Text(t),
                                        Value::Blob(b) => $wit::Value::Blob(b),
                                    })
                                    .collect(),
                            })
                            .collect(),
                    })
                    .map_err(Into::into))
            }

            async fn drop(&mut self, this: Resource<$resource>) -> wasmtime::Result<()> {
                // Dropping the connection rolls back a transaction left open.
                self.spin.open.remove(&this.rep());
                Ok(())
            }

            $($extra)*
        }
    };
}

door! { wit2, ConnectionV2, }

door! {
    wit3,
    ConnectionV3,
    async fn last_insert_rowid(&mut self, this: Resource<ConnectionV3>) -> wasmtime::Result<i64> {
        Ok(self.spin_counts(this.rep()).0)
    }

    async fn changes(&mut self, this: Resource<ConnectionV3>) -> wasmtime::Result<u64> {
        Ok(self.spin_counts(this.rep()).1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn refusals_map_onto_spins_variants() {
        assert_eq!(Refusal::from(SqlError::Denied("table `secrets` is not granted".into())), Refusal::AccessDenied);
        assert_eq!(
            Refusal::from(SqlError::RateLimited {
                message: "share full".into(),
                retry_after: Duration::from_millis(100)
            }),
            Refusal::Io("rate-limited: share full (retry after 100 ms)".into())
        );
        assert_eq!(
            Refusal::from(SqlError::Unavailable { message: "down".into(), retry_after: None }),
            Refusal::Io("unavailable: down".into())
        );
        assert_eq!(Refusal::from(SqlError::Conflict("dup".into())), Refusal::Io("conflict: dup".into()));
        assert_eq!(Refusal::from(SqlError::TooLarge("rows".into())), Refusal::Io("quota-exceeded: rows".into()));
        assert_eq!(Refusal::from(SqlError::InvalidInput("SELEC".into())), Refusal::Io("invalid-input: SELEC".into()));
        assert!(matches!(wit3::Error::from(Refusal::InvalidConnection), wit3::Error::InvalidConnection));
        assert!(matches!(wit2::Error::from(Refusal::Io("x".into())), wit2::Error::Io(t) if t == "x"));
    }
}
