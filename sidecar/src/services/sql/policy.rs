//! The `[sql.<alias>]` grant: what one plugin may do on one database alias.
//! Pure: no I/O, no dialect. [`SqlSection`] is the TOML as written (spans
//! kept, unknown keys refused by serde); [`SqlSection::validate`] turns it
//! into a [`SqlPolicy`] or reports every problem with the span of the value
//! at fault, which `policy::load` turns into a line.
//!
//! Tables are granted per statement kind, as PostgreSQL grants privileges
//! (`SELECT`, `INSERT`, `UPDATE` with optional column lists, `DELETE` on
//! whole rows), so that the database's own check (roles, the SQLite
//! authorizer) can later be derived from the same grant without
//! translation. Names are kept as written; how they compare depends on the
//! dialect (see `names`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::policy::units::{ByteSize, HumanDuration, serialize_duration};

/// Default `max_rows`: rows one query may return before it is refused.
pub const DEFAULT_MAX_ROWS: u64 = 1000;
/// Largest `max_rows` a policy may set.
pub const MAX_ROWS_CEILING: u64 = 10_000_000;
/// Default `max_result_bytes`.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 4 << 20;
/// Largest `max_result_bytes` a policy may set.
pub const MAX_RESULT_BYTES_CEILING: u64 = 1 << 30;
/// Default `timeout` of one statement.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest table, column or function name a policy may list: PostgreSQL
/// truncates identifiers past 63 bytes, so a longer name could never match.
pub const MAX_NAME: usize = 63;
/// Most tables one alias may grant.
pub const MAX_TABLES: usize = 256;
/// Most names in one list (columns of a kind, functions).
pub const MAX_LIST: usize = 256;

/// A statement kind a policy grants, and the privilege it needs on a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `SELECT`, and every read inside another statement.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; 4] = [Kind::Select, Kind::Insert, Kind::Update, Kind::Delete];

    /// The name used in policies (`select`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which columns of a table one kind of access may touch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Access {
    /// Not granted.
    #[default]
    None,
    /// Every column (and `*`).
    All,
    /// Only these columns, as written in the policy; `*` is refused.
    Columns(BTreeSet<String>),
}

/// `false`, `true` (every column) or the list of columns, as a policy
/// writes them: the grant diff names a column added or removed.
impl Serialize for Access {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Access::None => serializer.serialize_bool(false),
            Access::All => serializer.serialize_bool(true),
            Access::Columns(columns) => columns.serialize(serializer),
        }
    }
}

impl Access {
    /// Whether any access of this kind is granted.
    pub fn is_granted(&self) -> bool {
        !matches!(self, Access::None)
    }
}

/// What a policy grants on one table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TableGrant {
    /// Reading: `SELECT` and every column a statement reads (in `WHERE`,
    /// `SET` values, `RETURNING`, ...), as PostgreSQL requires.
    pub select: Access,
    /// Columns an `INSERT` may name.
    pub insert: Access,
    /// Columns an `UPDATE` (or `ON CONFLICT DO UPDATE`) may set.
    pub update: Access,
    /// `DELETE` (whole rows: [`Access::All`] or [`Access::None`]).
    pub delete: Access,
}

impl TableGrant {
    /// The access of one kind.
    pub fn access(&self, kind: Kind) -> &Access {
        match kind {
            Kind::Select => &self.select,
            Kind::Insert => &self.insert,
            Kind::Update => &self.update,
            Kind::Delete => &self.delete,
        }
    }

    fn access_mut(&mut self, kind: Kind) -> &mut Access {
        match kind {
            Kind::Select => &mut self.select,
            Kind::Insert => &mut self.insert,
            Kind::Update => &mut self.update,
            Kind::Delete => &mut self.delete,
        }
    }
}

/// The door a statement comes through: it sets the default of
/// `transaction_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `gatehouse:services/sql`: transactions are a resource of the
    /// interface, so `BEGIN`/`COMMIT` as statements are refused by default.
    Gatehouse,
    /// Spin's sqlite interfaces: components built with the Spin SDK send
    /// `BEGIN TRANSACTION` / `END TRANSACTION` as statements, so they are
    /// allowed by default (on the connection the door holds).
    Spin,
}

/// Everything `[sql.<alias>]` grants a plugin on one database alias.
/// Serialized, it is what the grant diff compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SqlPolicy {
    /// Statement kinds allowed at all.
    pub statements: BTreeSet<Kind>,
    /// Tables by name as written in the policy.
    pub tables: BTreeMap<String, TableGrant>,
    /// Scalar and aggregate functions allowed besides the dialect's default
    /// list (lower case).
    pub functions: BTreeSet<String>,
    /// Functions allowed in `FROM` (table functions); none by default.
    pub table_functions: BTreeSet<String>,
    /// Literals refused: values only as bound parameters (`NULL`, `TRUE`
    /// and `FALSE` stay allowed).
    pub params_only: bool,
    /// `UPDATE` without `WHERE` allowed.
    pub update_without_where: bool,
    /// `DELETE` without `WHERE` allowed.
    pub delete_without_where: bool,
    /// `FOR UPDATE` / `FOR SHARE` allowed.
    pub row_locking: bool,
    /// `BEGIN`/`COMMIT`/`END`/`ROLLBACK` as whole statements; `None` takes
    /// the door's default (see [`Door`]).
    pub transaction_control: Option<bool>,
    /// Rows one query may return (enforced by the gateway while rows
    /// stream in: past it the query is refused, never truncated).
    pub max_rows: u64,
    /// Bytes of values one query may return (enforced like `max_rows`).
    pub max_result_bytes: u64,
    /// Deadline of one statement (enforced by the gateway and the database).
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

impl Default for SqlPolicy {
    fn default() -> Self {
        SqlPolicy {
            statements: BTreeSet::new(),
            tables: BTreeMap::new(),
            functions: BTreeSet::new(),
            table_functions: BTreeSet::new(),
            params_only: false,
            update_without_where: false,
            delete_without_where: false,
            row_locking: false,
            transaction_control: None,
            max_rows: DEFAULT_MAX_ROWS,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl SqlPolicy {
    /// Whether `BEGIN`/`COMMIT`/`END`/`ROLLBACK` are allowed through `door`.
    pub fn transaction_control(&self, door: Door) -> bool {
        self.transaction_control.unwrap_or(door == Door::Spin)
    }

    /// Parses one `[sql.<alias>]` body (the keys of the section, as TOML).
    /// For tests, tools and benchmarks; policy files go through
    /// `policy::load`, which reports lines.
    pub fn from_toml(text: &str) -> Result<SqlPolicy, String> {
        let section: SqlSection = toml::from_str(text).map_err(|e| e.message().trim_end().to_string())?;
        section
            .validate()
            .map_err(|problems| problems.into_iter().map(|(_, reason)| reason).collect::<Vec<_>>().join("; "))
    }
}

/// `[sql.<alias>]` as written. Unknown keys are refused, so a misspelt
/// restriction never silently grants more.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSection {
    statements: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    tables: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    functions: Vec<Spanned<String>>,
    #[serde(default)]
    table_functions: Vec<Spanned<String>>,
    #[serde(default)]
    params_only: bool,
    #[serde(default)]
    update_without_where: bool,
    #[serde(default)]
    delete_without_where: bool,
    #[serde(default)]
    row_locking: bool,
    transaction_control: Option<bool>,
    max_rows: Option<Spanned<i64>>,
    max_result_bytes: Option<Spanned<ByteSize>>,
    timeout: Option<Spanned<HumanDuration>>,
}

/// A problem with a section: the byte range of the value at fault in the
/// policy file, and why.
pub type Problem = (Range<usize>, String);

/// Functions a policy may never grant, whatever it lists: they reach
/// outside the data a grant describes (files, programs, the network,
/// other sessions, server settings, a pooled connection's counters of
/// earlier borrowers) or run SQL given as a string, which the statement
/// check cannot see. Compared in lower case; every name
/// starting with one of [`NEVER_PREFIXES`] is refused too.
pub const NEVER_FUNCTIONS: &[&str] = &[
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
    "set_config",
    "current_setting",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "nextval",
    "setval",
    // PostgreSQL session state a pooled connection carries from one
    // plugin's calls to the next (an outside review: `lastval()` read the
    // ids of another plugin's inserts into a table it cannot read, and
    // `setseed()` chose another plugin's `random()`); `txid_*` below.
    "lastval",
    "currval",
    "setseed",
    // SQLite: rows changed by the connection's last statement and since it
    // opened, whoever ran them (another plugin, on a pooled connection);
    // the door reports a statement's own count instead.
    "changes",
    "total_changes",
];
/// Prefixes of function names a policy may never grant: PostgreSQL's
/// administration, file and sleep functions (`pg_`), other sessions'
/// transactions (`txid_`), large objects (`lo_`), `dblink`, and SQLite's
/// internals (`sqlite_`).
pub const NEVER_PREFIXES: &[&str] = &["pg_", "txid_", "lo_", "dblink", "sqlite_"];

/// Whether a policy may list function `name` (lower case).
pub fn never_grantable(name: &str) -> bool {
    NEVER_FUNCTIONS.contains(&name) || NEVER_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

impl SqlSection {
    /// The validated policy, or every problem found.
    pub fn validate(&self) -> Result<SqlPolicy, Vec<Problem>> {
        let mut problems: Vec<Problem> = Vec::new();
        let mut fail = |span: Range<usize>, reason: String| problems.push((span, reason));
        let mut policy = SqlPolicy {
            params_only: self.params_only,
            update_without_where: self.update_without_where,
            delete_without_where: self.delete_without_where,
            row_locking: self.row_locking,
            transaction_control: self.transaction_control,
            ..SqlPolicy::default()
        };

        for kind in self.statements.get_ref() {
            match Kind::parse(&kind.get_ref().to_ascii_lowercase()) {
                Some(parsed) if policy.statements.insert(parsed) => {}
                Some(parsed) => fail(kind.span(), format!("statement kind `{parsed}` is listed twice")),
                None => fail(
                    kind.span(),
                    format!("unknown statement kind `{}`: use select, insert, update or delete", shown(kind.get_ref())),
                ),
            }
        }
        if self.statements.get_ref().is_empty() {
            fail(
                self.statements.span(),
                "`statements` is empty: grant at least one kind, or remove the section".into(),
            );
        }

        if self.tables.len() > MAX_TABLES {
            fail(self.statements.span(), format!("at most {MAX_TABLES} tables may be granted"));
        }
        let mut folded: BTreeMap<String, &str> = BTreeMap::new();
        for (name, value) in &self.tables {
            let text = name.get_ref();
            if let Err(reason) = check_name("table", text) {
                fail(name.span(), reason);
                continue;
            }
            if super::names::sidecar_table(text) {
                fail(
                    name.span(),
                    format!(
                        "table `{}` is reserved for the sidecar's own tables (`gatehouse_*`, `_sqlx_migrations`)",
                        shown(text)
                    ),
                );
                continue;
            }
            if let Some(other) = folded.insert(text.to_ascii_lowercase(), text) {
                fail(
                    name.span(),
                    format!(
                        "tables `{}` and `{}` differ only in case: SQLite cannot tell them apart",
                        shown(other),
                        shown(text)
                    ),
                );
            }
            match table_grant(value.get_ref()) {
                Ok(grant) => {
                    for kind in Kind::ALL {
                        if grant.access(kind).is_granted() && !policy.statements.contains(&kind) {
                            fail(
                                value.span(),
                                format!("table `{}` grants {kind}, which `statements` does not list", shown(text)),
                            );
                        }
                    }
                    policy.tables.insert(text.clone(), grant);
                }
                Err(reason) => fail(value.span(), format!("table `{}`: {reason}", shown(text))),
            }
        }

        for (list, target, what) in [
            (&self.functions, &mut policy.functions, "function"),
            (&self.table_functions, &mut policy.table_functions, "table function"),
        ] {
            if list.len() > MAX_LIST {
                fail(list[MAX_LIST].span(), format!("at most {MAX_LIST} {what}s may be listed"));
            }
            for name in list {
                let text = name.get_ref().to_ascii_lowercase();
                let valid = !text.is_empty()
                    && text.len() <= MAX_NAME
                    && text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    fail(
                        name.span(),
                        format!(
                            "invalid {what} name `{}`: use 1 to {MAX_NAME} of `a-z`, `0-9`, `_`, not starting with a digit",
                            shown(name.get_ref())
                        ),
                    );
                } else if never_grantable(&text) {
                    fail(
                        name.span(),
                        format!(
                            "{what} `{text}` can never be granted: it reaches outside the granted data (files, programs, network, settings, other sessions) or runs SQL from a string"
                        ),
                    );
                } else if !target.insert(text.clone()) {
                    fail(name.span(), format!("{what} `{text}` is listed twice"));
                }
            }
        }

        if let Some(rows) = &self.max_rows {
            match u64::try_from(*rows.get_ref()) {
                Ok(n) if (1..=MAX_ROWS_CEILING).contains(&n) => policy.max_rows = n,
                _ => fail(
                    rows.span(),
                    format!("max_rows {} is out of range: it must be between 1 and {MAX_ROWS_CEILING}", rows.get_ref()),
                ),
            }
        }
        if let Some(bytes) = &self.max_result_bytes {
            let n = bytes.get_ref().0;
            if (1..=MAX_RESULT_BYTES_CEILING).contains(&n) {
                policy.max_result_bytes = n;
            } else {
                fail(
                    bytes.span(),
                    format!("max_result_bytes {} is out of range: it must be between 1 B and 1 GiB", bytes.get_ref()),
                );
            }
        }
        if let Some(timeout) = &self.timeout {
            let duration = timeout.get_ref().0;
            if (Duration::from_millis(1)..=Duration::from_secs(600)).contains(&duration) {
                policy.timeout = duration;
            } else {
                fail(
                    timeout.span(),
                    format!("timeout {} is out of range: it must be between 1ms and 10m", timeout.get_ref()),
                );
            }
        }
        if problems.is_empty() { Ok(policy) } else { Err(problems) }
    }
}

/// One entry of `tables`: `"select"`, `["select", "insert"]`, or a table of
/// kinds whose values are `true` (every column) or a list of columns.
fn table_grant(value: &toml::Value) -> Result<TableGrant, String> {
    let mut grant = TableGrant::default();
    let all = |grant: &mut TableGrant, kind: &toml::Value| -> Result<(), String> {
        let Some(text) = kind.as_str() else {
            return Err("list statement kinds as strings (select, insert, update, delete)".into());
        };
        let kind = Kind::parse(&text.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown statement kind `{}`", shown(text)))?;
        if grant.access(kind).is_granted() {
            return Err(format!("`{kind}` is listed twice"));
        }
        *grant.access_mut(kind) = Access::All;
        Ok(())
    };
    match value {
        toml::Value::String(_) => all(&mut grant, value)?,
        toml::Value::Array(kinds) if !kinds.is_empty() => {
            for kind in kinds {
                all(&mut grant, kind)?;
            }
        }
        toml::Value::Table(kinds) if !kinds.is_empty() => {
            for (key, columns) in kinds {
                let kind = Kind::parse(key)
                    .ok_or_else(|| format!("unknown key `{}`: use select, insert, update or delete", shown(key)))?;
                *grant.access_mut(kind) = match columns {
                    toml::Value::Boolean(true) => Access::All,
                    toml::Value::Array(names) if kind == Kind::Delete => {
                        let _ = names;
                        return Err("delete removes whole rows: write `delete = true`".into());
                    }
                    toml::Value::Array(names) if !names.is_empty() && names.len() <= MAX_LIST => {
                        let mut set = BTreeSet::new();
                        for name in names {
                            let Some(name) = name.as_str() else {
                                return Err(format!("`{kind}` lists a column that is not a string"));
                            };
                            check_name("column", name)?;
                            if set.iter().any(|seen: &String| seen.eq_ignore_ascii_case(name)) {
                                return Err(format!("`{kind}` lists column `{}` twice", shown(name)));
                            }
                            set.insert(name.to_string());
                        }
                        Access::Columns(set)
                    }
                    _ => {
                        return Err(format!(
                            "`{kind}` must be `true` (every column) or a list of 1 to {MAX_LIST} columns"
                        ));
                    }
                };
            }
        }
        _ => {
            return Err(
                "write a kind (\"select\"), a list of kinds, or a table such as { select = [\"id\", \"name\"], update = true }"
                    .into(),
            );
        }
    }
    Ok(grant)
}

/// Table and column names: 1–63 bytes, no control characters, no `.` (the
/// schema is the gateway's, never the policy's).
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("invalid {what} name `{}`: use 1 to {MAX_NAME} bytes", shown(name)));
    }
    if name.contains('.') {
        return Err(format!(
            "invalid {what} name `{}`: write it without a schema (the gateway fixes the schema)",
            shown(name)
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("invalid {what} name `{}`: control characters", shown(name)));
    }
    Ok(())
}

fn shown(text: &str) -> String {
    crate::guest_text::escape(text, crate::guest_text::SHORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let section: SqlSection = toml::from_str(text).expect("parses");
        section.validate().expect_err("refused").into_iter().map(|(_, reason)| reason).collect()
    }

    #[test]
    fn a_full_section_is_read() {
        let policy = SqlPolicy::from_toml(
            r#"
            statements = ["select", "insert", "UPDATE"]
            functions = ["Similarity"]
            table_functions = ["generate_series"]
            params_only = true
            row_locking = true
            transaction_control = false
            max_rows = 50
            max_result_bytes = "1 MiB"
            timeout = "2s"
            [tables]
            products = "select"
            orders = ["select", "insert"]
            customers = { select = ["id", "name"], update = ["name"] }
            "#,
        )
        .unwrap();
        assert_eq!(policy.statements, BTreeSet::from([Kind::Select, Kind::Insert, Kind::Update]));
        assert_eq!(policy.tables["products"], TableGrant { select: Access::All, ..TableGrant::default() });
        assert_eq!(
            policy.tables["orders"],
            TableGrant { select: Access::All, insert: Access::All, ..TableGrant::default() }
        );
        let customers = &policy.tables["customers"];
        assert_eq!(customers.select, Access::Columns(BTreeSet::from(["id".into(), "name".into()])));
        assert_eq!(customers.update, Access::Columns(BTreeSet::from(["name".into()])));
        assert_eq!(customers.delete, Access::None);
        assert_eq!(policy.functions, BTreeSet::from(["similarity".to_string()]));
        assert!(policy.params_only && policy.row_locking);
        assert_eq!((policy.max_rows, policy.max_result_bytes), (50, 1 << 20));
        assert_eq!(policy.timeout, Duration::from_secs(2));
        assert!(!policy.transaction_control(Door::Spin));
    }

    #[test]
    fn defaults() {
        let policy = SqlPolicy::from_toml(r#"statements = ["select"]"#).unwrap();
        assert_eq!((policy.max_rows, policy.max_result_bytes), (1000, 4 << 20));
        assert!(!policy.params_only && !policy.row_locking);
        assert!(!policy.update_without_where && !policy.delete_without_where);
        assert!(policy.transaction_control(Door::Spin));
        assert!(!policy.transaction_control(Door::Gatehouse));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let err = toml::from_str::<SqlSection>("statements = [\"select\"]\nparams_onyl = true\n").unwrap_err();
        assert!(err.message().contains("unknown field `params_onyl`"), "{}", err.message());
        assert_eq!(err.span().map(|s| s.start), Some(24));
    }

    #[test]
    fn problems_table() {
        let cases: &[(&str, &str)] = &[
            (r#"statements = []"#, "is empty"),
            (r#"statements = ["drop"]"#, "unknown statement kind `drop`"),
            (r#"statements = ["select", "select"]"#, "listed twice"),
            ("statements = [\"select\"]\n[tables]\norders = \"insert\"", "which `statements` does not list"),
            ("statements = [\"select\"]\n[tables]\norders = \"read\"", "unknown statement kind `read`"),
            ("statements = [\"select\"]\n[tables]\norders = []", "write a kind"),
            ("statements = [\"select\"]\n[tables]\norders = 1", "write a kind"),
            ("statements = [\"select\"]\n[tables]\norders = { select = [] }", "list of 1 to"),
            ("statements = [\"select\"]\n[tables]\norders = { select = false }", "must be `true`"),
            ("statements = [\"select\"]\n[tables]\norders = { read = true }", "unknown key `read`"),
            ("statements = [\"delete\"]\n[tables]\norders = { delete = [\"id\"] }", "whole rows"),
            ("statements = [\"select\"]\n[tables]\n\"public.orders\" = \"select\"", "without a schema"),
            ("statements = [\"select\"]\n[tables]\nOrders = \"select\"\norders = \"select\"", "differ only in case"),
            ("statements = [\"select\"]\n[tables]\norders = { select = [\"id\", \"ID\"] }", "twice"),
            ("statements = [\"select\"]\n[tables]\ngatehouse_kv_data = \"select\"", "reserved for the sidecar"),
            ("statements = [\"select\"]\n[tables]\nGatehouse_Audit_Entries = \"select\"", "reserved for the sidecar"),
            ("statements = [\"select\"]\n[tables]\n_sqlx_migrations = \"select\"", "reserved for the sidecar"),
            ("statements = [\"select\"]\nfunctions = [\"pg_sleep\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"load_extension\"]", "can never be granted"),
            // Another borrower's counts on a pooled SQLite connection.
            ("statements = [\"select\"]\nfunctions = [\"changes\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"TOTAL_CHANGES\"]", "can never be granted"),
            // PostgreSQL session state another plugin's calls left on a
            // pooled connection (an outside review read insert ids with
            // `lastval` and chose `random()` with `setseed`).
            ("statements = [\"select\"]\nfunctions = [\"lastval\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"currval\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"setseed\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"txid_current_snapshot\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"txid_status\"]", "can never be granted"),
            ("statements = [\"select\"]\ntable_functions = [\"dblink\"]", "can never be granted"),
            ("statements = [\"select\"]\nfunctions = [\"a-b\"]", "invalid function name"),
            ("statements = [\"select\"]\nfunctions = [\"lower\", \"LOWER\"]", "listed twice"),
            ("statements = [\"select\"]\nmax_rows = 0", "max_rows 0 is out of range"),
            ("statements = [\"select\"]\nmax_result_bytes = \"2 GiB\"", "max_result_bytes"),
            ("statements = [\"select\"]\ntimeout = \"11m\"", "timeout"),
        ];
        for (text, expected) in cases {
            let found = problems(text);
            assert!(found.iter().any(|p| p.contains(expected)), "{text:?}: {found:?}");
        }
        let long = "x".repeat(64);
        let found = problems(&format!("statements = [\"select\"]\n[tables]\n{long} = \"select\""));
        assert!(found[0].contains("1 to 63 bytes"), "{found:?}");
    }
}
