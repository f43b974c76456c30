//! PostgreSQL's own check: a role per plugin that holds exactly the
//! table and column privileges its `[sql.<alias>]` grant lists, and a call
//! that runs under it.
//!
//! - [`role_name`]: `gatehouse_p_<plugin>` (NOLOGIN, NOINHERIT), quoted
//!   wherever it is written; names too long for PostgreSQL's 63 bytes end
//!   in a hash of the plugin name instead, so the mapping stays
//!   deterministic and one-to-one.
//! - [`sync`]: creates the role when it is missing, makes the login a
//!   member (so it may `SET ROLE` to it), then revokes every privilege on a
//!   table of [`SCHEMA`] that the policy no longer grants and grants what
//!   it does: `SELECT`, `INSERT`, `UPDATE` per table or per column,
//!   `DELETE` per table. One transaction, under one advisory lock for all
//!   plugin roles, so syncs at once (several plugins, several sidecars)
//!   neither race on `CREATE ROLE` or the schema's privileges nor
//!   interleave their changes. Run it on every load or reload of
//!   a policy. Tables the policy names that do not exist are reported and
//!   skipped (a statement on them fails anyway).
//! - [`remove`]: when a plugin's grant is gone, revokes everything and
//!   drops its role (left empty when it still holds privileges in another
//!   database of the cluster).
//! - [`enter`]: inside a transaction, `SET LOCAL ROLE` to the plugin's
//!   role, `SET LOCAL statement_timeout` to the policy's timeout, `SET
//!   LOCAL search_path` to [`SCHEMA`] (then `pg_temp`, so a temporary table
//!   never shadows a real one): this line on its own, as its tests use it.
//!   The gateway sets the same at session level instead, once per
//!   connection and plugin ([`crate::services::sql::pg_pool::Session`]).
//!
//! The login role needs `CREATEROLE` (to create plugin roles and join
//! them) and must own the granted tables or hold them `WITH GRANT OPTION`.
//! Where an operator manages roles outside the sidecar, the roles must
//! exist with these names and the login must be a member of each; `sync`
//! then only adjusts privileges. With `manage_roles = false` on the alias
//! the sidecar changes nothing at all: [`check_provided`] replaces `sync`
//! (the role must exist and the login be a member), nothing is revoked or
//! dropped, and the role's privileges are the operator's.
//!
//! Functions: PostgreSQL grants `EXECUTE` on functions to `PUBLIC`, and a
//! non-superuser cannot revoke that for the built-ins in `pg_catalog`. So
//! the role confines what a statement *reaches* (tables, columns, and what
//! PostgreSQL itself keeps from non-superusers: server files, programs,
//! other roles' settings), and the function allow-list is the statement
//! checker's alone. Functions that run SQL from a string
//! (`query_to_xml`) run it under the role, so they reach no more than the
//! grant.
//!
//! `SET ROLE` is not a wall against a statement that names the login role
//! or says `RESET ROLE`: PostgreSQL lets a session always go back to its
//! login. Only the statement checker (which refuses `SET`/`RESET` and
//! `set_config`) stops that.
//!
//! Unlike SQLite, PostgreSQL checks privileges when a statement *runs*, as
//! the role current at that moment, so prepared statements cached on a
//! pooled connection are safe to reuse across plugins.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use sha2::{Digest, Sha256};
// Role and table names are quoted identifiers from the policy and the
// catalog, never statement text from a plugin.
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use super::GuardError;
use crate::services::sql::pg_pool::{PgPool, PooledPg, Session};
use crate::services::sql::{Access, Kind, SqlPolicy};

/// The schema every plugin statement is confined to.
pub const SCHEMA: &str = "public";
/// Prefix of every plugin role.
pub const ROLE_PREFIX: &str = "gatehouse_p_";
/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENT: usize = 63;

/// The role of `plugin`. Plugin names are `[a-z0-9_-]` (the policy
/// loader's rule); anything else is refused rather than mapped.
pub fn role_name(plugin: &str) -> Result<String, GuardError> {
    let valid = !plugin.is_empty()
        && plugin.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(GuardError::InvalidPlugin(crate::guest_text::escape(plugin, crate::guest_text::SHORT)));
    }
    let whole = format!("{ROLE_PREFIX}{plugin}");
    if whole.len() <= MAX_IDENT {
        return Ok(whole);
    }
    // Cut, then a hash of the whole name: two long names that share a
    // prefix still get two roles.
    let hash = hex::encode(&Sha256::digest(plugin.as_bytes())[..6]);
    let keep = MAX_IDENT - ROLE_PREFIX.len() - 1 - hash.len();
    Ok(format!("{ROLE_PREFIX}{}_{hash}", &plugin[..keep]))
}

/// An identifier quoted for PostgreSQL.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// One privilege: on a table, or on one column of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Privilege {
    /// Table in [`SCHEMA`], as PostgreSQL stores its name.
    pub table: String,
    /// The column, for a column privilege.
    pub column: Option<String>,
    /// `SELECT`, `INSERT`, `UPDATE` or `DELETE`.
    pub kind: Kind,
}

impl Privilege {
    fn sql_kind(&self) -> &'static str {
        match self.kind {
            Kind::Select => "SELECT",
            Kind::Insert => "INSERT",
            Kind::Update => "UPDATE",
            Kind::Delete => "DELETE",
        }
    }

    /// `SELECT ("c") ON "public"."t"`.
    fn clause(&self) -> String {
        let mut out = self.sql_kind().to_string();
        if let Some(column) = &self.column {
            let _ = write!(out, " ({})", quote(column));
        }
        let _ = write!(out, " ON {}.{}", quote(SCHEMA), quote(&self.table));
        out
    }
}

impl std::fmt::Display for Privilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(column) => write!(f, "{} ({column}) on {}", self.sql_kind(), self.table),
            None => write!(f, "{} on {}", self.sql_kind(), self.table),
        }
    }
}

/// What [`sync`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The plugin's role.
    pub role: String,
    /// Whether the role was created now.
    pub created: bool,
    /// Privileges granted now.
    pub granted: Vec<Privilege>,
    /// Privileges revoked now.
    pub revoked: Vec<Privilege>,
    /// Tables the policy names that are not in [`SCHEMA`]: skipped.
    pub missing_tables: Vec<String>,
    /// Functions in [`SCHEMA`] taking a row (or any value) as their one
    /// argument that the role may execute and the policy does not list
    /// ([`row_functions`]); at most [`MAX_LISTED`].
    pub row_functions: Vec<String>,
}

/// Most functions a [`SyncReport`] lists.
pub const MAX_LISTED: i64 = 20;

/// The functions in [`SCHEMA`] that `role` may execute (PostgreSQL lets
/// everyone execute a function unless its owner revokes that from
/// `PUBLIC`) whose one required argument is a row or any value, apart from
/// those `policy` lists. The checker refuses them called by name, but
/// PostgreSQL reads `t.f` as `f(t)` where `t` has no column `f`, and the
/// checker cannot know an operator's functions: an outside review read an
/// ungranted table through a `SECURITY DEFINER` `item_cost(items)` as
/// `i.item_cost`. The sidecar warns of them; revoking `EXECUTE` from
/// `PUBLIC` on them closes that.
async fn row_functions(conn: &mut PgConnection, role: &str, policy: &SqlPolicy) -> Result<Vec<String>, sqlx::Error> {
    let listed: Vec<String> = policy.functions.iter().cloned().collect();
    sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_type t ON t.oid = p.proargtypes[0] \
         WHERE n.nspname = $1 AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 \
           AND t.typtype IN ('c', 'p') AND has_function_privilege($2, p.oid, 'EXECUTE') \
           AND NOT p.proname = ANY($3) \
         ORDER BY 1 LIMIT $4",
    )
    .bind(SCHEMA)
    .bind(role)
    .bind(&listed)
    .bind(MAX_LISTED)
    .fetch_all(conn)
    .await
}

/// The privileges `policy` grants, on the tables that exist.
fn wanted(policy: &SqlPolicy, existing: &BTreeSet<String>) -> (BTreeSet<Privilege>, Vec<String>) {
    let mut wanted = BTreeSet::new();
    let mut missing = Vec::new();
    for (table, grant) in &policy.tables {
        if !existing.contains(table) {
            missing.push(table.clone());
            continue;
        }
        for kind in Kind::ALL {
            match grant.access(kind) {
                Access::None => {}
                Access::All => {
                    wanted.insert(Privilege { table: table.clone(), column: None, kind });
                }
                Access::Columns(columns) => wanted.extend(columns.iter().map(|c| Privilege {
                    table: table.clone(),
                    column: Some(c.clone()),
                    kind,
                })),
            }
        }
    }
    (wanted, missing)
}

fn kind_of(privilege: &str) -> Option<Kind> {
    match privilege {
        "SELECT" => Some(Kind::Select),
        "INSERT" => Some(Kind::Insert),
        "UPDATE" => Some(Kind::Update),
        "DELETE" => Some(Kind::Delete),
        _ => None,
    }
}

/// Every privilege `role` holds on tables of [`SCHEMA`], table and column
/// level, and the kinds it holds that [`Privilege`] cannot name
/// (`TRUNCATE`, `REFERENCES`, `TRIGGER`, ...), as `(table, kind)`.
async fn held(conn: &mut PgConnection, role: &str) -> Result<(BTreeSet<Privilege>, Vec<(String, String)>), GuardError> {
    let rows = sqlx::query(
        "SELECT c.relname::text, NULL::text AS column, a.privilege_type::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a \
         WHERE n.nspname = $1 AND c.relkind <> 'S' \
         AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2) \
         UNION ALL \
         SELECT c.relname::text, att.attname::text, a.privilege_type::text \
         FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a \
         WHERE n.nspname = $1 AND NOT att.attisdropped \
         AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2)",
    )
    .bind(SCHEMA)
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    let mut privileges = BTreeSet::new();
    let mut others = Vec::new();
    for row in rows {
        let (table, column, kind): (String, Option<String>, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        match kind_of(&kind) {
            Some(kind) => {
                privileges.insert(Privilege { table, column, kind });
            }
            None => others.push((table, kind)),
        }
    }
    Ok((privileges, others))
}

/// `USAGE` on exactly the sequences behind `serial` columns of the tables
/// the policy grants `INSERT` on: an insert that leaves the column to its
/// default calls `nextval`, which needs it. (Identity columns need
/// nothing.) Sequences of tables no longer granted lose it.
async fn sync_sequences(conn: &mut PgConnection, role: &str, policy: &SqlPolicy) -> Result<(), GuardError> {
    let inserting: Vec<String> =
        policy.tables.iter().filter(|(_, grant)| grant.insert.is_granted()).map(|(t, _)| t.clone()).collect();
    let wanted: BTreeSet<String> = sqlx::query_scalar(
        "SELECT s.relname::text FROM pg_class s \
         JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype = 'a' \
         JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE s.relkind = 'S' AND n.nspname = $1 AND t.relname = ANY($2)",
    )
    .bind(SCHEMA)
    .bind(&inserting)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let held: BTreeSet<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a \
         WHERE n.nspname = $1 AND c.relkind = 'S' AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2)",
    )
    .bind(SCHEMA)
    .bind(role)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let quoted = quote(role);
    let mut statements = String::new();
    for sequence in held.difference(&wanted) {
        let _ = writeln!(statements, "REVOKE ALL ON SEQUENCE {}.{} FROM {quoted};", quote(SCHEMA), quote(sequence));
    }
    for sequence in wanted.difference(&held) {
        let _ = writeln!(statements, "GRANT USAGE ON SEQUENCE {}.{} TO {quoted};", quote(SCHEMA), quote(sequence));
    }
    if !statements.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(statements)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The advisory lock every sync and removal of a plugin role takes: one
/// for all of them, not one per role, since they also grant on the shared
/// schema, whose privileges are one catalog row that concurrent `GRANT`s
/// collide on ("tuple concurrently updated", found by an outside review
/// when four plugins made their first call at once after a reload).
fn roles_lock() -> i64 {
    let digest = Sha256::digest(b"gatehouse plugin roles");
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Maps "permission denied" on role statements to [`GuardError::RoleManagement`].
fn role_error(error: sqlx::Error) -> GuardError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            GuardError::RoleManagement(crate::guest_text::escape(db.message(), crate::guest_text::LINE))
        }
        _ => GuardError::Database(error),
    }
}

/// A connection in the sidecar's own session for work on `plugin`'s
/// behalf: in a place guaranteed to the plugin if it has one, so that its
/// first call never waits for a shared place; else as the sidecar's own
/// (charged to every plugin, the role's wait and the call's added up:
/// review 22 measured first calls waiting 3.8 s of a 2 s
/// `acquire_timeout`, and honest plugins beside eighteen one-place
/// plugins at 2 calls and 3 refusals where the sidecar's own got 60).
async fn own_connection_for(pool: &PgPool, plugin: &str) -> Result<PooledPg, sqlx::Error> {
    let holder = if pool.guaranteed_to(plugin) > 0 { plugin } else { "" };
    Session::own().acquire_for(pool, holder).await
}

/// Brings `plugin`'s role in step with `policy`: creates it if needed,
/// then revokes what is no longer granted and grants what is. Idempotent:
/// a second run with the same policy changes nothing.
pub async fn sync(pool: &PgPool, plugin: &str, policy: &SqlPolicy) -> Result<SyncReport, GuardError> {
    let role = role_name(plugin)?;
    let quoted = quote(&role);
    let mut conn = own_connection_for(pool, plugin).await?;
    // It will hold the statements prepared here: closed rather than handed
    // back, so no plugin call inherits them.
    conn.close_on_drop();
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(roles_lock()).execute(&mut *tx).await?;
    let mut report = SyncReport { role: role.clone(), ..SyncReport::default() };

    let exists = sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(&role).fetch_optional(&mut *tx).await?;
    if exists.is_none() {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE {quoted} NOLOGIN NOINHERIT")))
            .execute(&mut *tx)
            .await
            .map_err(role_error)?;
        report.created = true;
    }
    let member: bool =
        sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')").bind(&role).fetch_one(&mut *tx).await?;
    if !member {
        sqlx::raw_sql(AssertSqlSafe(format!("GRANT {quoted} TO CURRENT_USER")))
            .execute(&mut *tx)
            .await
            .map_err(role_error)?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!("GRANT USAGE ON SCHEMA {} TO {quoted}", quote(SCHEMA))))
        .execute(&mut *tx)
        .await?;

    let existing: BTreeSet<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    )
    .bind(SCHEMA)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let (wanted, missing) = wanted(policy, &existing);
    report.missing_tables = missing;

    let (held_before, others) = held(&mut tx, &role).await?;
    let mut statements = String::new();
    // Kinds a policy never grants (TRUNCATE, REFERENCES, TRIGGER, ...).
    for (table, kind) in &others {
        let _ = writeln!(statements, "REVOKE {kind} ON {}.{} FROM {quoted};", quote(SCHEMA), quote(table));
    }
    for privilege in held_before.difference(&wanted) {
        let _ = writeln!(statements, "REVOKE {} FROM {quoted};", privilege.clause());
        report.revoked.push(privilege.clone());
    }
    if !statements.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(statements)).execute(&mut *tx).await?;
    }
    // Revoking a table privilege also revokes that kind on every column:
    // read what is held again rather than predict it.
    let (held_now, _) = held(&mut tx, &role).await?;
    let mut statements = String::new();
    for privilege in wanted.difference(&held_now) {
        let _ = writeln!(statements, "GRANT {} TO {quoted};", privilege.clause());
        if !held_before.contains(privilege) {
            report.granted.push(privilege.clone());
        }
    }
    if !statements.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(statements)).execute(&mut *tx).await?;
    }
    sync_sequences(&mut tx, &role, policy).await?;
    report.row_functions = row_functions(&mut tx, &role, policy).await?;
    tx.commit().await?;
    Ok(report)
}

/// With `manage_roles = false`: that `plugin`'s role exists and the login
/// may `SET ROLE` to it, so a call fails here with what to do rather than
/// at its `SET LOCAL ROLE`. Changes nothing.
pub async fn check_provided(pool: &PgPool, plugin: &str) -> Result<(), GuardError> {
    let role = role_name(plugin)?;
    let mut conn = own_connection_for(pool, plugin).await?;
    let provided =
        sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1 AND pg_has_role(current_user, oid, 'MEMBER')")
            .persistent(false)
            .bind(&role)
            .fetch_optional(&mut **conn)
            .await?;
    provided.map(drop).ok_or(GuardError::RoleNotProvided(role))
}

/// Takes every privilege from `plugin`'s role in this database and drops
/// the role. Returns whether the role is gone: it stays (empty here) when
/// it still holds privileges in another database of the cluster.
pub async fn remove(pool: &PgPool, plugin: &str) -> Result<bool, GuardError> {
    let role = role_name(plugin)?;
    let quoted = quote(&role);
    let mut conn = Session::own().acquire(pool).await?;
    // Closed afterwards, as in `sync`.
    conn.close_on_drop();
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(roles_lock()).execute(&mut *tx).await?;
    let exists = sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(&role).fetch_optional(&mut *tx).await?;
    if exists.is_none() {
        tx.commit().await?;
        return Ok(true);
    }
    // Revokes its privileges (and drops what it owns: nothing, as it may
    // create nothing) in this database.
    sqlx::raw_sql(AssertSqlSafe(format!("DROP OWNED BY {quoted}"))).execute(&mut *tx).await.map_err(role_error)?;
    tx.commit().await?;
    let mut tx = conn.begin().await?;
    match sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE {quoted}"))).execute(&mut *tx).await {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        // 2BP01: dependent objects (privileges in another database).
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("2BP01") => Ok(false),
        Err(error) => Err(role_error(error)),
    }
}

/// Runs the rest of the current transaction as `plugin`'s role, with
/// `timeout` as the statement timeout and [`SCHEMA`] as the search path.
/// One round trip. Refused outside a transaction: `SET LOCAL` there would
/// do nothing, and the statement would run as the login.
pub async fn enter(tx: &mut PgConnection, plugin: &str, timeout: Duration) -> Result<(), GuardError> {
    if !tx.is_in_transaction() {
        return Err(GuardError::NotInTransaction);
    }
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
    let statement = format!(
        "SET LOCAL ROLE {}; SET LOCAL statement_timeout = {millis}; SET LOCAL search_path = {}, pg_temp",
        quote(&role_name(plugin)?),
        quote(SCHEMA)
    );
    sqlx::raw_sql(AssertSqlSafe(statement)).execute(&mut *tx).await.map_err(role_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_deterministic_bounded_and_one_to_one() {
        assert_eq!(role_name("kv-counter").unwrap(), "gatehouse_p_kv-counter");
        let long_a = format!("{}a", "x".repeat(63));
        let long_b = format!("{}b", "x".repeat(63));
        let (a, b) = (role_name(&long_a).unwrap(), role_name(&long_b).unwrap());
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, role_name(&long_a).unwrap());
        assert_eq!(role_name(&"y".repeat(51)).unwrap().len(), 63);
        for bad in ["", "A", "a\"b", "a b", "a;b", "é"] {
            assert!(matches!(role_name(bad), Err(GuardError::InvalidPlugin(_))), "{bad:?}");
        }
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn wanted_privileges_follow_the_grant() {
        let policy = SqlPolicy::from_toml(
            "statements = [\"select\", \"update\", \"delete\"]\n[tables]\n\
             orders = [\"select\", \"delete\"]\ncustomers = { select = [\"id\"], update = [\"name\"] }\nghost = \"select\"",
        )
        .unwrap();
        let existing = BTreeSet::from(["orders".to_string(), "customers".to_string()]);
        let (wanted, missing) = wanted(&policy, &existing);
        let shown: Vec<String> = wanted.iter().map(Privilege::to_string).collect();
        assert_eq!(
            shown,
            ["SELECT (id) on customers", "UPDATE (name) on customers", "SELECT on orders", "DELETE on orders"]
        );
        assert_eq!(missing, ["ghost"]);
        let column = Privilege { table: "t\"x".into(), column: Some("c".into()), kind: Kind::Update };
        assert_eq!(column.clause(), "UPDATE (\"c\") ON \"public\".\"t\"\"x\"");
    }
}
