//! The functions a statement may call without the policy listing them:
//! pure built-ins of each dialect (string, number, date, JSON, aggregate and
//! window functions) that read nothing but their arguments and rows the
//! statement already reaches.
//!
//! Left out on purpose, and only reachable through a policy's `functions`
//! (some not even then: [`super::policy::NEVER_FUNCTIONS`]):
//! - anything reaching files, programs, the network, the server's settings
//!   or other sessions (`pg_*`, `lo_*`, `dblink*`, `load_extension`,
//!   `readfile`, `current_setting`, `set_config`, ...);
//! - SQL in a string (`query_to_xml` and its family, `ts_stat`), which the
//!   statement check cannot see into;
//! - functions that change state (`nextval`, `setval`) or report the
//!   connection's (`last_insert_rowid`, `changes`, `current_user`,
//!   `version`, `sqlite_version`);
//! - size amplifiers that make the database allocate far more than the
//!   statement's size from one small argument (`repeat`, `lpad`, `rpad`,
//!   `printf`/`format` with a width, `zeroblob`, `randomblob`,
//!   `generate_series`);
//! - `pg_sleep` and other ways to hold a connection without work.
//!
//! `now()`/`CURRENT_TIMESTAMP` are on the lists: not pure in the strict
//! sense, but they read only the clock, which every caller sees anyway.

use super::Dialect;

/// SQLite's default allow-list (lower case, sorted).
pub const SQLITE: &[&str] = &[
    "abs",
    "avg",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_date",
    "current_time",
    "current_timestamp",
    "date",
    "datetime",
    "dense_rank",
    "first_value",
    "group_concat",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "json",
    "json_array",
    "json_array_length",
    "json_extract",
    "json_group_array",
    "json_group_object",
    "json_object",
    "json_type",
    "json_valid",
    "julianday",
    "lag",
    "last_value",
    "lead",
    "length",
    "lower",
    "ltrim",
    "max",
    "min",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "rank",
    "replace",
    "round",
    "row_number",
    "rtrim",
    "sign",
    "strftime",
    "string_agg",
    "substr",
    "substring",
    "sum",
    "time",
    "total",
    "trim",
    "typeof",
    "unicode",
    "unixepoch",
    "upper",
];

/// PostgreSQL's default allow-list (lower case, sorted). `CAST`,
/// `EXTRACT`, `POSITION`, `SUBSTRING … FROM`, `TRIM`, `OVERLAY`, `CEIL`,
/// `FLOOR` and `AT TIME ZONE` are syntax, checked as such.
pub const POSTGRES: &[&str] = &[
    "abs",
    "age",
    "array",
    "array_agg",
    "array_length",
    "array_position",
    "avg",
    "bit_length",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_date",
    "current_time",
    "current_timestamp",
    "date_bin",
    "date_part",
    "date_trunc",
    "dense_rank",
    "div",
    "every",
    "exp",
    "first_value",
    "floor",
    "greatest",
    "initcap",
    "json_agg",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_object_agg",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "power",
    "rank",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "string_agg",
    "strpos",
    "substr",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "translate",
    "trunc",
    "upper",
];

/// PostgreSQL's built-in functions that take a whole row as their one
/// argument (`"any"`, `anyelement`, `anynonarray`, `anycompatible…`,
/// `record`, or `VARIADIC "any"`; plain functions and plain aggregates,
/// since window and ordered-set ones refuse the notation): PostgreSQL reads
/// `t.f` as `f(t)` when `t` has no column `f`, so each of these names is a
/// call wherever it follows a qualifier (an outside review called
/// `pg_column_size`, `pg_typeof`, `row_to_json` and `num_nulls` that way).
/// From PostgreSQL 15's catalog; `sql_guard.rs`
/// `every_function_a_row_reaches_is_listed_on_postgres` compares it with the
/// test server's. Functions an extension or an operator adds that take a
/// row are not on it (EXECUTE is PUBLIC by default: revoke it). Sorted.
pub const POSTGRES_ON_A_ROW: &[&str] = &[
    "any_out",
    "anycompatible_out",
    "anycompatiblenonarray_out",
    "anyelement_out",
    "anynonarray_out",
    "array_agg",
    "concat",
    "count",
    "hash_record",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "num_nonnulls",
    "num_nulls",
    "pg_collation_for",
    "pg_column_compression",
    "pg_column_size",
    "pg_typeof",
    "quote_literal",
    "quote_nullable",
    "record_out",
    "record_send",
    "row_to_json",
    "to_json",
    "to_jsonb",
];

/// Words PostgreSQL evaluates as functions of the connection where a
/// column could stand, unquoted and without parentheses: the session's
/// role, user and schema, which the default lists leave out (an outside
/// review read the plugin's role name with `current_role`).
pub const POSTGRES_SESSION_WORDS: &[&str] =
    &["current_catalog", "current_role", "current_schema", "current_user", "session_user", "system_user", "user"];

/// PostgreSQL's system columns, present in every table under these names
/// (no user column may take one).
pub const POSTGRES_SYSTEM_COLUMNS: &[&str] = &["cmax", "cmin", "ctid", "tableoid", "xmax", "xmin"];

/// What a PostgreSQL table function's columns are called when `FROM`
/// gives none (`AS x(a, b)`).
pub enum TableColumns {
    /// One column, named as the relation (the alias, else the function):
    /// functions returning one plain value with no `OUT` name.
    OneNamedAsTheAlias,
    /// Columns of these names, whatever the alias (`OUT` parameters).
    Named(&'static [&'static str]),
}

/// The columns of the table functions a policy may grant whose names are
/// known; `None` for any other (its columns then need `AS x(a, b)` to be
/// qualified). PostgreSQL reads `x.f` as the call `f(x)` where `x` has no
/// column `f`, so guessing a column name would call a function instead:
/// `jsonb_array_elements_text(…) AS ts_stat` has one column, `value`, and
/// `ts_stat.ts_stat` ran `ts_stat` (an outside review). `arguments`: how
/// many it is given (`unnest` of several arrays names each column
/// `unnest`).
pub fn postgres_table_columns(function: &str, arguments: usize) -> Option<TableColumns> {
    use TableColumns::{Named, OneNamedAsTheAlias};
    Some(match function {
        "unnest" if arguments != 1 => return None,
        "unnest"
        | "generate_series"
        | "generate_subscripts"
        | "regexp_split_to_table"
        | "regexp_matches"
        | "string_to_table"
        | "json_object_keys"
        | "jsonb_object_keys"
        | "jsonb_path_query" => OneNamedAsTheAlias,
        "json_array_elements" | "json_array_elements_text" | "jsonb_array_elements" | "jsonb_array_elements_text" => {
            Named(&["value"])
        }
        "json_each" | "json_each_text" | "jsonb_each" | "jsonb_each_text" => Named(&["key", "value"]),
        _ => return None,
    })
}

/// The default allow-list of `dialect`.
pub fn defaults(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    }
}

/// Whether `name` (normalised) is on `dialect`'s default list.
pub fn is_default(dialect: Dialect, name: &str) -> bool {
    defaults(dialect).binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::sql::policy::never_grantable;

    #[test]
    fn lists_are_sorted_lower_case_and_hold_nothing_never_grantable() {
        assert!(POSTGRES_ON_A_ROW.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
            for name in list {
                assert_eq!(name.to_ascii_lowercase(), *name);
                assert!(!never_grantable(name), "{name}");
            }
        }
        for amplifier in ["repeat", "lpad", "rpad", "printf", "format", "zeroblob", "randomblob", "generate_series"] {
            assert!(!is_default(Dialect::Sqlite, amplifier) && !is_default(Dialect::Postgres, amplifier));
        }
    }
}
