//! The plugin's side of the SQL gateway, and its custom door
//! `gatehouse:services/sql` (Spin's doors, [`super::spin`], share the
//! grants and the invocation's state).
//!
//! [`PluginSql`] is a loaded plugin's grants: for each `[sql.<alias>]`, the
//! policy and the alias's pool, checked against the settings when the
//! plugin loads (an alias the settings do not define, or a grant its
//! dialect cannot serve, refuses the plugin). [`SqlHost`] is one
//! invocation's state: the grants, and the transactions the guest holds
//! open (at most [`MAX_TRANSACTIONS`]); dropped with the invocation, it
//! drops them, which rolls them back.
//!
//! Every call goes through [`SqlHost::grant`] (the alias is granted, or
//! `denied`), [`exec::checked`] (the statement passes the policy), then an
//! [`SqlConnection`]; it is counted in [`SqlMetrics`] by outcome and
//! latency, and a refusal is logged with the statement escaped and
//! bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Resource};

use super::check::StatementKind;
use super::check_cache::CheckCache;
use super::error::SqlError;
use super::exec::{self, Guard, Limits, OpenFor, SqlConnection};
use super::held::{Held, Lent};
use super::metrics::SqlMetrics;
use super::pool::{AliasPool, SqlGateway};
use super::value::{Rows, Value};
use super::{Checked, Dialect, Door, SqlPolicy};
use crate::bindings::gatehouse::services::sql as wit;
use crate::error::GuestError;
use crate::guest_text;
use crate::stop::Stop;

/// Transactions one invocation may hold at once (open or finished but not
/// yet dropped by the guest). Each open one also holds one of the
/// plugin's connections.
pub const MAX_TRANSACTIONS: usize = 16;

/// A loaded plugin's `[sql.<alias>]` grants, shared by its invocations.
pub struct PluginSql {
    pub(super) plugin: String,
    pub(super) grants: BTreeMap<String, Grant>,
    metrics: Arc<SqlMetrics>,
}

impl PluginSql {
    /// `plugin`'s grants on `gateway`'s aliases; why not, naming the alias.
    pub fn new(plugin: &str, grants: &BTreeMap<String, SqlPolicy>, gateway: &SqlGateway) -> Result<PluginSql, String> {
        let mut resolved = BTreeMap::new();
        for (name, policy) in grants {
            let alias = gateway
                .alias(name)
                .ok_or_else(|| format!("it has a [sql.{name}] grant, but the settings define no [databases.{name}]"))?;
            suits(name, alias.dialect, policy)?;
            let guard = Guard::new(alias.dialect, policy, Door::Gatehouse);
            // The SQLite authorizer's grant depends on the door (Spin's
            // allows transaction control by default); a PostgreSQL role
            // does not, and one guard syncs it once.
            let spin_guard = (alias.dialect == Dialect::Sqlite).then(|| Guard::new(alias.dialect, policy, Door::Spin));
            resolved.insert(
                name.clone(),
                Grant {
                    policy: policy.clone(),
                    alias: Arc::clone(alias),
                    guard,
                    spin_guard,
                    checks: CheckCache::default(),
                },
            );
        }
        Ok(PluginSql { plugin: plugin.to_string(), grants: resolved, metrics: Arc::clone(&gateway.metrics) })
    }
}

/// One `[sql.<alias>]` grant of a loaded plugin.
pub(super) struct Grant {
    pub(super) policy: SqlPolicy,
    pub(super) alias: Arc<AliasPool>,
    /// The database's own check of `policy`, built once at load.
    guard: Guard,
    /// The same for Spin's doors, where it differs (SQLite).
    spin_guard: Option<Guard>,
    /// The statements `policy` passed, so a repeated one is not checked
    /// again.
    checks: CheckCache,
}

impl Grant {
    /// [`exec::checked`] for this grant, a statement it passed before
    /// taken from [`CheckCache`].
    pub(super) fn checked(&self, door: Door, statement: &str, params: &[Value]) -> Result<Checked, SqlError> {
        if let Some(checked) = self.checks.get(door, statement) {
            return exec::fits(checked, params);
        }
        let checked = exec::checked(door, self.alias.dialect, &self.policy, statement, params)?;
        self.checks.put(door, statement, &checked);
        Ok(checked)
    }

    /// The database's own check of the grant for statements through `door`.
    pub(super) fn guard(&self, door: Door) -> &Guard {
        match (door, &self.spin_guard) {
            (Door::Spin, Some(guard)) => guard,
            _ => &self.guard,
        }
    }
}

/// Whether `policy` can be served on a database of `dialect`.
fn suits(alias: &str, dialect: Dialect, policy: &SqlPolicy) -> Result<(), String> {
    if dialect == Dialect::Sqlite && policy.row_locking {
        return Err(format!(
            "[sql.{alias}] grants row_locking, but [databases.{alias}] is a SQLite database, which has no row locks"
        ));
    }
    Ok(())
}

/// The resource type of a transaction handle: its representation is the
/// key of the transaction in [`SqlHost`].
pub struct Transaction;

struct Open {
    alias: String,
    /// Empty once committed or rolled back (the connection went back), or
    /// taken back while idle ([`super::held`]).
    connection: Held,
}

/// One invocation's side of the door.
#[derive(Default)]
pub struct SqlHost {
    pub(super) plugin: Option<Arc<PluginSql>>,
    transactions: HashMap<u32, Open>,
    next: u32,
    /// The connections Spin's doors hold open.
    pub(super) spin: super::spin::SpinConnections,
    /// The invocation's stop, which its statements obey.
    pub(super) stop: Stop,
}

impl SqlHost {
    /// The door for a plugin with (or without) `[sql.*]` grants, in an
    /// invocation that stops when `stop` is due.
    pub fn new(plugin: Option<Arc<PluginSql>>, stop: Stop) -> SqlHost {
        SqlHost { plugin, transactions: HashMap::new(), next: 0, spin: Default::default(), stop }
    }

    /// Transactions held now (open or finished, not dropped).
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    pub(super) fn grant(&self, db: &str) -> Result<(&PluginSql, &Grant), SqlError> {
        let plugin = self.plugin.as_deref().ok_or_else(|| SqlError::Denied("the policy has no [sql] grant".into()))?;
        let grant = plugin.grants.get(db).ok_or_else(|| {
            SqlError::Denied(format!(
                "database `{}` is not granted: the policy has no [sql.{0}]",
                guest_text::escape(db, guest_text::SHORT)
            ))
        })?;
        Ok((plugin, grant))
    }

    pub(super) fn record(&self, db: &str, statement: Option<&str>, outcome: &Result<(), SqlError>, took: Duration) {
        let Some(plugin) = &self.plugin else { return };
        let alias = if plugin.grants.contains_key(db) { db } else { "(not granted)" };
        plugin.metrics.record(&plugin.plugin, alias, outcome.as_ref().err().map(SqlError::kind), took);
        if let Err(error) = outcome {
            tracing::info!(
                plugin = %plugin.plugin,
                database = %guest_text::escaped(db, guest_text::SHORT),
                statement = %guest_text::escaped(statement.unwrap_or(""), guest_text::LINE),
                kind = %error.kind(),
                error = %error,
                "SQL call refused"
            );
        }
    }

    /// A one-shot call: its own connection, for one statement.
    async fn one_shot(
        &self,
        db: &str,
        statement: &str,
        params: &[Value],
        query: bool,
    ) -> Result<(Rows, u64), SqlError> {
        let (plugin, grant) = self.grant(db)?;
        let checked = grant.checked(Door::Gatehouse, statement, params)?;
        if checked.kind == StatementKind::Begin {
            // Its connection goes back at the end of this call, which would
            // end the transaction unseen (an outside review got `changed: 0`).
            return Err(SqlError::InvalidInput(
                "BEGIN outside a transaction: a call's connection is its own, so the transaction would end with \
                 the call; begin one with the `begin` function (its resource holds the connection)"
                    .into(),
            ));
        }
        let limits = Limits::from(&grant.policy);
        let guard = grant.guard(Door::Gatehouse);
        let (mut connection, limits) = SqlConnection::open_for(
            &grant.alias,
            &plugin.plugin,
            guard,
            &self.stop,
            OpenFor::statement(checked.kind),
            limits,
        )
        .await?;
        if query {
            Ok((connection.query(&checked, statement, params, limits).await?, 0))
        } else {
            Ok((Rows::default(), connection.execute(&checked, statement, params, limits).await?))
        }
    }

    async fn begin(&mut self, db: &str) -> Result<u32, SqlError> {
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return Err(SqlError::InvalidInput(format!(
                "{MAX_TRANSACTIONS} transactions are held by this invocation: drop one first"
            )));
        }
        let (plugin, grant) = self.grant(db)?;
        let limits = Limits::from(&grant.policy);
        let guard = grant.guard(Door::Gatehouse);
        let (mut connection, limits) =
            SqlConnection::open_for(&grant.alias, &plugin.plugin, guard, &self.stop, OpenFor::Transaction, limits)
                .await?;
        connection.begin(limits).await?;
        let connection = Held::new(grant.alias.holdings(), &plugin.plugin, connection);
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        self.transactions.insert(key, Open { alias: db.to_string(), connection });
        Ok(key)
    }

    async fn in_transaction(
        &mut self,
        key: u32,
        statement: &str,
        params: &[Value],
        query: bool,
    ) -> Result<(Rows, u64), SqlError> {
        let alias = self.alias_of(key)?;
        let (_, grant) = self.grant(&alias)?;
        let checked = grant.checked(Door::Gatehouse, statement, params)?;
        let limits = Limits::from(&grant.policy);
        let mut lent = self.lend(key)?;
        let connection = open_transaction(&mut lent, &alias)?;
        if query {
            Ok((connection.query(&checked, statement, params, limits).await?, 0))
        } else {
            Ok((Rows::default(), connection.execute(&checked, statement, params, limits).await?))
        }
    }

    async fn finish(&mut self, key: u32, commit: bool) -> Result<(), SqlError> {
        let alias = self.alias_of(key)?;
        let mut lent = self.lend(key)?;
        let connection = open_transaction(&mut lent, &alias)?;
        let done = if commit { connection.commit().await } else { connection.rollback().await };
        // Over either way: the connection goes back (or, broken, is closed).
        lent.connection = None;
        done
    }

    fn alias_of(&self, key: u32) -> Result<String, SqlError> {
        self.transactions
            .get(&key)
            .map(|open| open.alias.clone())
            .ok_or_else(|| SqlError::Internal("unknown transaction handle".into()))
    }

    fn lend(&self, key: u32) -> Result<Lent, SqlError> {
        let open =
            self.transactions.get(&key).ok_or_else(|| SqlError::Internal("unknown transaction handle".into()))?;
        Ok(open.connection.lend())
    }
}

/// The connection of a transaction still open on `alias`; why not.
fn open_transaction<'a>(lent: &'a mut Lent, alias: &str) -> Result<&'a mut SqlConnection, SqlError> {
    if let Some(taken) = lent.taken_back {
        return Err(SqlError::Unavailable {
            message: format!(
                "the transaction was rolled back: its connection was taken back, {}, for another plugin that \
                 waited for one of `{alias}` while this plugin held the most (begin again)",
                if taken.idle_for.is_zero() {
                    "as its statement ended".to_string()
                } else {
                    format!("idle {} ms", taken.idle_for.as_millis())
                }
            ),
            retry_after: Some(super::error::RETRY_BUSY),
        });
    }
    match lent.connection.as_mut() {
        Some(connection) if connection.in_transaction() => Ok(connection),
        _ => Err(SqlError::InvalidInput(
            "the transaction is over (committed, rolled back, or aborted by an error)".into(),
        )),
    }
}

/// Links `gatehouse:services/sql` against [`SqlHost`].
pub struct SqlService;

impl HasData for SqlService {
    type Data<'a> = &'a mut SqlHost;
}

type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

fn to_guest(error: SqlError) -> GuestError {
    let retry_after_ms = error.retry_after().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    GuestError { kind: error.kind(), message: error.to_string(), retry_after_ms }
}

fn from_wit(values: Vec<wit::Value>) -> Vec<Value> {
    values
        .into_iter()
        .map(|v| match v {
            wit::Value::Null => Value::Null,
            wit::Value::Boolean(b) => Value::Bool(b),
            wit::Value::Integer(i) => Value::Int(i),
            wit::Value::Real(f) => Value::Float(f),
            wit::Value::Text(t) => Value::Text(t),
            wit::Value::Blob(b) => Value::Blob(b),
        })
        .collect()
}

fn to_wit(rows: Rows) -> wit::Rows {
    wit::Rows {
        columns: rows.columns.into_iter().map(|c| wit::Column { name: c.name, type_name: c.type_name }).collect(),
        rows: rows
            .rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| match v {
                        Value::Null => wit::Value::Null,
                        Value::Bool(b) => wit::Value::Boolean(b),
                        Value::Int(i) => wit::Value::Integer(i),
                        Value::Float(f) => wit::Value::Real(f),
                        Value::Text(t) => wit::Value::Text(t),
                        Value::Blob(b) => wit::Value::Blob(b),
                    })
                    .collect()
            })
            .collect(),
    }
}

impl wit::Host for SqlHost {
    async fn query(&mut self, db: String, statement: String, params: Vec<wit::Value>) -> Answer<wit::Rows> {
        let started = Instant::now();
        let result = self.one_shot(&db, &statement, &from_wit(params), true).await;
        self.record(&db, Some(&statement), &result.as_ref().map(drop).map_err(Clone::clone), started.elapsed());
        Ok(result.map(|(rows, _)| to_wit(rows)).map_err(to_guest))
    }

    async fn execute(&mut self, db: String, statement: String, params: Vec<wit::Value>) -> Answer<u64> {
        let started = Instant::now();
        let result = self.one_shot(&db, &statement, &from_wit(params), false).await;
        self.record(&db, Some(&statement), &result.as_ref().map(drop).map_err(Clone::clone), started.elapsed());
        Ok(result.map(|(_, n)| n).map_err(to_guest))
    }
}

impl wit::HostTransaction for SqlHost {
    async fn begin(&mut self, db: String) -> Answer<Resource<Transaction>> {
        let started = Instant::now();
        let result = self.begin(&db).await;
        self.record(&db, Some("BEGIN"), &result.as_ref().map(drop).map_err(Clone::clone), started.elapsed());
        Ok(result.map(Resource::new_own).map_err(to_guest))
    }

    async fn query(
        &mut self,
        this: Resource<Transaction>,
        statement: String,
        params: Vec<wit::Value>,
    ) -> Answer<wit::Rows> {
        let started = Instant::now();
        let db = self.alias_of(this.rep()).unwrap_or_default();
        let result = self.in_transaction(this.rep(), &statement, &from_wit(params), true).await;
        self.record(&db, Some(&statement), &result.as_ref().map(drop).map_err(Clone::clone), started.elapsed());
        Ok(result.map(|(rows, _)| to_wit(rows)).map_err(to_guest))
    }

    async fn execute(
        &mut self,
        this: Resource<Transaction>,
        statement: String,
        params: Vec<wit::Value>,
    ) -> Answer<u64> {
        let started = Instant::now();
        let db = self.alias_of(this.rep()).unwrap_or_default();
        let result = self.in_transaction(this.rep(), &statement, &from_wit(params), false).await;
        self.record(&db, Some(&statement), &result.as_ref().map(drop).map_err(Clone::clone), started.elapsed());
        Ok(result.map(|(_, n)| n).map_err(to_guest))
    }

    async fn commit(&mut self, this: Resource<Transaction>) -> Answer<()> {
        let started = Instant::now();
        let db = self.alias_of(this.rep()).unwrap_or_default();
        let result = self.finish(this.rep(), true).await;
        self.record(&db, Some("COMMIT"), &result.clone(), started.elapsed());
        Ok(result.map_err(to_guest))
    }

    async fn rollback(&mut self, this: Resource<Transaction>) -> Answer<()> {
        let started = Instant::now();
        let db = self.alias_of(this.rep()).unwrap_or_default();
        let result = self.finish(this.rep(), false).await;
        self.record(&db, Some("ROLLBACK"), &result.clone(), started.elapsed());
        Ok(result.map_err(to_guest))
    }

    async fn drop(&mut self, this: Resource<Transaction>) -> wasmtime::Result<()> {
        // Dropping the connection of a transaction still open closes it,
        // which rolls it back.
        self.transactions.remove(&this.rep());
        Ok(())
    }
}
