//! Which statements a PostgreSQL connection keeps prepared for the plugin
//! whose session it carries ([`super::pg_pool::Session`]).
//!
//! A statement prepared for each call costs a round trip of its own
//! (`Parse`/`Describe`, then `Bind`/`Execute`); kept prepared, a repeated
//! statement is one round trip, as sqlx's statement cache gives a direct
//! user. Through the relay each round trip costs two more hops, so this
//! halves a typical call's latency. What keeps it safe:
//!
//! - **One plugin's.** Statements are kept only while the connection
//!   carries one plugin's session: entering another session (another
//!   plugin, or the sidecar's own work) closes them on the server first
//!   ([`super::pg_pool::PgConn::unprepare`]). No plugin runs, or can name,
//!   another's.
//! - **Checked on every run, twice.** The gateway's check runs before every
//!   call whether or not the statement is kept; PostgreSQL checks
//!   privileges when a statement runs (at executor start, as the current
//!   role), not when it is prepared, so a grant revoked by a reload holds
//!   for a kept statement at its next run.
//! - **Typed as prepared.** sqlx looks its cache up by the text alone and
//!   sends values in binary as the kept statement's parameter types say:
//!   text bound where an `int8` was prepared would be read as an integer
//!   made of the text's bytes. So each kept statement remembers the kinds
//!   of values it was prepared with ([`Kinds`]); a call with other kinds
//!   (a null fits any) closes the connection's statements first.
//! - **Bounded, by text.** At most [`PER_CONNECTION`] statements of at
//!   most [`MAX_TEXT`] bytes each, and at most [`KEPT_BYTES`] of text on
//!   one connection; a longer statement is sent unprepared, and a
//!   connection whose statements would pass either bound closes them all
//!   before keeping another. The server keeps each statement's analysed
//!   query and plan, which grow with the statement (views expand): an
//!   outside review measured ~1 MB of backend memory per KiB of a
//!   `UNION ALL` chain over a view, ~0.27 MB per KiB over a table, held
//!   while the connection is idle. The text budget bounds that per
//!   connection to what one statement of [`KEPT_BYTES`] would take while
//!   it runs.

use std::collections::HashMap;
use std::mem::Discriminant;

use super::value::Value;

/// Most statements kept on one connection (and the size of sqlx's cache).
pub const PER_CONNECTION: usize = 32;

/// Longest statement text kept prepared.
pub const MAX_TEXT: usize = 2048;

/// Most statement text kept prepared on one connection, all statements
/// together.
pub const KEPT_BYTES: usize = 8192;

/// The kind of each parameter a statement is run with: `None` for a null
/// (bound untyped: the server infers its type from where it stands).
pub type Kinds = Box<[Option<Discriminant<Value>>]>;

/// The kinds of `params`.
pub fn kinds(params: &[Value]) -> Kinds {
    params.iter().map(|p| (!matches!(p, Value::Null)).then(|| std::mem::discriminant(p))).collect()
}

/// What a call does with its statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Run it prepared, kept (or reused if already kept).
    Keep,
    /// Close the connection's statements, then run it kept.
    ClearFirst,
    /// Run it unprepared (too long to keep).
    Once,
}

/// The statements kept on one connection, with the kinds each was
/// prepared with.
#[derive(Debug, Default)]
pub struct Prepared {
    kept: HashMap<Box<str>, Kinds>,
    /// The kept statements' text, in bytes.
    bytes: usize,
}

impl Prepared {
    /// What to do with `statement` run with values of `kinds`.
    pub fn plan(&self, statement: &str, kinds: &[Option<Discriminant<Value>>]) -> Plan {
        if statement.len() > MAX_TEXT {
            return Plan::Once;
        }
        match self.kept.get(statement) {
            Some(kept) if fits(kept, kinds) => Plan::Keep,
            Some(_) => Plan::ClearFirst,
            None if self.kept.len() >= PER_CONNECTION || self.bytes + statement.len() > KEPT_BYTES => Plan::ClearFirst,
            None => Plan::Keep,
        }
    }

    /// Records that sqlx kept `statement`, prepared with `kinds`.
    pub fn kept(&mut self, statement: &str, kinds: Kinds) {
        if self.kept.insert(statement.into(), kinds).is_none() {
            self.bytes += statement.len();
        }
    }

    /// Forgets every statement (they were closed).
    pub fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
    }
}

/// Whether values of `now` may be bound to a statement prepared with
/// `kept`: each the same kind, or null.
fn fits(kept: &[Option<Discriminant<Value>>], now: &[Option<Discriminant<Value>>]) -> bool {
    kept.len() == now.len() && kept.iter().zip(now).all(|(kept, now)| now.is_none() || kept == now)
}

/// Whether `error` may be PostgreSQL's refusal to run a kept statement
/// whose result's shape changed since it was prepared (a column added to a
/// table it selects `*` from: `cached plan must not change result type`).
/// By its code alone, `feature_not_supported`: the message is in the
/// server's language. Another error of that code costs one more try.
pub fn replanned(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("0A000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[Value]) -> Kinds {
        kinds(values)
    }

    /// Mixing kinds is the danger (sqlx would bind text where an integer
    /// was prepared): only the same kinds, or nulls, reuse a kept
    /// statement; anything else closes the connection's statements first.
    #[test]
    fn a_kept_statement_is_reused_only_with_values_of_its_kinds() {
        let mut prepared = Prepared::default();
        let sql = "SELECT name FROM products WHERE id = $1";
        assert_eq!(prepared.plan(sql, &of(&[Value::Int(1)])), Plan::Keep);
        prepared.kept(sql, of(&[Value::Int(1)]));
        assert_eq!(prepared.plan(sql, &of(&[Value::Int(7)])), Plan::Keep);
        assert_eq!(prepared.plan(sql, &of(&[Value::Null])), Plan::Keep, "a null fits any type");
        for other in [Value::Text("12345678".into()), Value::Float(1.0), Value::Bool(true), Value::Blob(vec![1])] {
            assert_eq!(prepared.plan(sql, &of(std::slice::from_ref(&other))), Plan::ClearFirst, "{other:?}");
        }
        assert_eq!(prepared.plan(sql, &of(&[Value::Int(1), Value::Int(2)])), Plan::ClearFirst, "another count");
        assert_eq!(prepared.plan(sql, &of(&[])), Plan::ClearFirst, "another count");

        // Prepared with a null, the parameter's type is the server's guess:
        // only nulls fit it.
        prepared.kept(sql, of(&[Value::Null]));
        assert_eq!(prepared.plan(sql, &of(&[Value::Null])), Plan::Keep);
        assert_eq!(prepared.plan(sql, &of(&[Value::Int(1)])), Plan::ClearFirst);
    }

    /// At most [`PER_CONNECTION`] statements of at most [`MAX_TEXT`]
    /// bytes, and at most [`KEPT_BYTES`] of them together.
    #[test]
    fn a_connection_keeps_a_bounded_number_of_bounded_statements() {
        let mut prepared = Prepared::default();
        let long = format!("SELECT 1 /*{}*/", "x".repeat(MAX_TEXT));
        assert_eq!(prepared.plan(&long, &of(&[])), Plan::Once);
        let edge = format!("SELECT 1 /*{}*/", "x".repeat(MAX_TEXT - 13));
        assert_eq!(edge.len(), MAX_TEXT);
        assert_eq!(prepared.plan(&edge, &of(&[])), Plan::Keep);

        // The text budget: statements of MAX_TEXT fill it exactly.
        let big = |n: usize| format!("SELECT {n} /*{}*/", "x".repeat(MAX_TEXT - 12 - n.to_string().len()));
        for n in 0..KEPT_BYTES / MAX_TEXT {
            assert_eq!(big(n).len(), MAX_TEXT);
            assert_eq!(prepared.plan(&big(n), &of(&[])), Plan::Keep, "{n}");
            prepared.kept(&big(n), of(&[]));
            prepared.kept(&big(n), of(&[]));
        }
        assert_eq!(prepared.plan(&big(0), &of(&[])), Plan::Keep, "kept already");
        assert_eq!(prepared.plan("SELECT 1", &of(&[])), Plan::ClearFirst, "one byte more than the budget");
        prepared.clear();
        assert_eq!(prepared.plan("SELECT 1", &of(&[])), Plan::Keep);

        for n in 0..PER_CONNECTION {
            let sql = format!("SELECT {n}");
            assert_eq!(prepared.plan(&sql, &of(&[])), Plan::Keep, "{n}");
            prepared.kept(&sql, of(&[]));
        }
        assert_eq!(prepared.kept.len(), PER_CONNECTION);
        assert_eq!(prepared.plan("SELECT 0", &of(&[])), Plan::Keep, "kept already");
        assert_eq!(prepared.plan("SELECT 'one more'", &of(&[])), Plan::ClearFirst);
        prepared.clear();
        assert!(prepared.kept.is_empty() && prepared.bytes == 0);
    }
}
