//! Names as each database reads them. PostgreSQL folds unquoted
//! identifiers to lower case (ASCII only, as it does for UTF-8 databases)
//! and keeps quoted ones exact; it truncates names past 63 bytes, so longer
//! ones are refused rather than guessed at. SQLite compares names ignoring
//! ASCII case, quoted or not, whatever the quotes (`"x"`, `[x]`, `` `x` ``).
//!
//! Schemas: the gateway fixes PostgreSQL's `search_path` to `public` and
//! opens one SQLite file as `main`, so those are the only qualifications
//! accepted. PostgreSQL searches `pg_catalog` before the path and SQLite
//! keeps its own tables as `sqlite_*`, so names with those prefixes are
//! refused even when unqualified. So are the sidecar's own tables
//! ([`sidecar_table`]), which the key-value store and the audit log keep in
//! `public` when they share a database with plugins' grants.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use super::Dialect;
use super::denial::{Denial, Rule, shown};

/// Longest identifier PostgreSQL keeps whole.
pub const PG_MAX_IDENT: usize = 63;

/// One identifier, normalised for `dialect`.
pub fn ident(dialect: Dialect, id: &Ident) -> Result<String, Denial> {
    if id.value.is_empty() {
        return Err(Denial::new(Rule::Ambiguous, "an empty quoted name is refused".into()));
    }
    match dialect {
        Dialect::Postgres => {
            if id.value.len() > PG_MAX_IDENT {
                return Err(Denial::new(
                    Rule::Ambiguous,
                    format!(
                        "name `{}` is longer than {PG_MAX_IDENT} bytes: PostgreSQL would truncate it",
                        shown(&id.value)
                    ),
                ));
            }
            match id.quote_style {
                None => Ok(id.value.to_ascii_lowercase()),
                Some('"') => Ok(id.value.clone()),
                Some(_) => Err(Denial::new(
                    Rule::Unsupported,
                    format!("quoting of name `{}` is not PostgreSQL's", shown(&id.value)),
                )),
            }
        }
        Dialect::Sqlite => Ok(id.value.to_ascii_lowercase()),
    }
}

/// Whether two normalised names are the same name in `dialect`.
pub fn same(dialect: Dialect, a: &str, b: &str) -> bool {
    match dialect {
        Dialect::Postgres => a == b,
        Dialect::Sqlite => a.eq_ignore_ascii_case(b),
    }
}

/// The plain identifiers of an object name, or a denial for the other
/// forms (function-style parts).
pub fn parts(name: &ObjectName) -> Result<Vec<&Ident>, Denial> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) => Ok(id),
            ObjectNamePart::Function(_) => {
                Err(Denial::new(Rule::Unsupported, "a function call as part of a name is refused".into()))
            }
        })
        .collect()
}

/// A table name, normalised and without its schema, after checking the
/// schema and the system prefixes, and whether it was qualified (an
/// unqualified name may be a CTE's).
pub fn table(dialect: Dialect, name: &ObjectName) -> Result<(bool, String), Denial> {
    let parts = parts(name)?;
    let (schema, table) = match parts.as_slice() {
        [table] => (None, *table),
        [schema, table] => (Some(ident(dialect, schema)?), *table),
        _ => {
            return Err(Denial::new(
                Rule::Schema,
                format!("name with {} parts: use `table` or `schema.table`", parts.len()),
            ));
        }
    };
    let fixed = match dialect {
        Dialect::Postgres => "public",
        Dialect::Sqlite => "main",
    };
    if let Some(schema) = &schema
        && !same(dialect, schema, fixed)
    {
        return Err(Denial::new(
            Rule::Schema,
            format!("schema `{}` is refused: only `{fixed}` is reachable", shown(schema)),
        ));
    }
    let table = ident(dialect, table)?;
    let system = match dialect {
        Dialect::Postgres => "pg_",
        Dialect::Sqlite => "sqlite_",
    };
    if starts_with_folded(&table, system) {
        return Err(Denial::new(Rule::Schema, format!("system table `{}` is refused", shown(&table))));
    }
    if sidecar_table(&table) {
        return Err(Denial::new(Rule::Schema, format!("the sidecar's own table `{}` is refused", shown(&table))));
    }
    Ok((schema.is_some(), table))
}

/// Whether `table` is (or may be) one of the sidecar's own: the key-value
/// store's and the audit log's (`gatehouse_*`) and sqlx's migration record
/// (`_sqlx_migrations`), in any case. No grant reaches them.
pub fn sidecar_table(table: &str) -> bool {
    starts_with_folded(table, "gatehouse_") || table.eq_ignore_ascii_case("_sqlx_migrations")
}

fn starts_with_folded(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}
