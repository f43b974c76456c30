//! The SQL statement checker (`services::sql`), pure: no database. The
//! fixtures in `tests/fixtures/sql/` (schema, policy, allowed statements)
//! are shared with the gateway's tests, which run the allowed statements on
//! real SQLite and PostgreSQL databases; `sql_guard` runs this file's
//! bypass table against the database's own check alone.

use std::path::Path;

use gatehouse::services::sql::{Checked, Denial, Dialect, Door, Rule, SqlPolicy, StatementKind, check, check_for};
use proptest::prelude::*;

pub(crate) fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sql").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn policy() -> SqlPolicy {
    SqlPolicy::from_toml(&fixture("policy.toml")).expect("the fixture policy is valid")
}

pub(crate) fn with(extra: &str) -> SqlPolicy {
    SqlPolicy::from_toml(&format!("{extra}\n{}", fixture("policy.toml"))).expect("valid policy")
}

const BOTH: &[Dialect] = &[Dialect::Sqlite, Dialect::Postgres];
const PG: &[Dialect] = &[Dialect::Postgres];
const LITE: &[Dialect] = &[Dialect::Sqlite];

/// The allowed fixture: every line for `dialect`.
pub(crate) fn allowed(dialect: Dialect) -> Vec<String> {
    fixture("allowed.sql")
        .lines()
        .filter_map(|line| {
            let (tag, sql) = line.split_once(": ")?;
            let wanted = match tag {
                "both" => true,
                "sqlite" => dialect == Dialect::Sqlite,
                "postgres" => dialect == Dialect::Postgres,
                _ => return None,
            };
            wanted.then(|| sql.to_string())
        })
        .collect()
}

#[test]
fn the_allowed_statements_pass_on_their_dialects() {
    let policy = policy();
    let mut failures = Vec::new();
    let mut count = 0;
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        for sql in allowed(dialect) {
            count += 1;
            if let Err(denial) = check(dialect, &policy, &sql) {
                failures.push(format!("{dialect}: {sql}\n    -> {denial} ({:?})", denial.rule));
            }
        }
    }
    assert!(count >= 60, "{count}");
    assert!(failures.is_empty(), "{} wrongly denied:\n{}", failures.len(), failures.join("\n"));
}

/// Statements that must be denied, each with the rule and a part of the
/// reason. The attacks: stacked statements hidden by strings and comments;
/// CTEs that read or write what is not granted, shadow tables outside their
/// scope or could be read as tables; sub-queries reaching `secrets` from
/// every clause; writes through INSERT … SELECT, UPDATE … FROM, DELETE …
/// USING, MERGE and REPLACE; column grants bypassed with `*`, whole-row
/// references, correlated and unqualified columns, column aliases and
/// NATURAL JOIN; names spelt with quotes, case, schemas, system tables and
/// Unicode escapes; denied functions (sleep, files, large objects, SQL in
/// strings, settings, extensions, table functions); every statement kind
/// that is never allowed; literals under params_only and foreign, mixed or
/// out-of-range placeholders (numbers past each database's highest, leading
/// zeros).
pub(crate) const BYPASSES: &[(&[Dialect], &str, &str, Rule, &str)] = &[
    // Stacked statements, strings and comments.
    (BOTH, "", "SELECT id FROM products; DELETE FROM orders", Rule::Stacked, "2 statements"),
    (BOTH, "", "SELECT 'a\\'; DELETE FROM orders; --'", Rule::Stacked, "2 statements"),
    (LITE, "", "SELECT 1 /* /* */ ; DELETE FROM orders; -- */", Rule::Stacked, "2 statements"),
    (BOTH, "", "SELECT 1; SELECT 2", Rule::Stacked, "2 statements"),
    (BOTH, "", "", Rule::Empty, "no statement"),
    (BOTH, "", "-- nothing but a comment", Rule::Empty, "no statement"),
    (BOTH, "", "SELEC id FROM products", Rule::Unparsable, "not valid"),
    // CTEs.
    (BOTH, "", "WITH x AS (SELECT * FROM secrets) SELECT * FROM x", Rule::Table, "`secrets`"),
    (
        BOTH,
        "",
        "SELECT * FROM (WITH secrets AS (SELECT 1 AS v) SELECT v FROM secrets) s, secrets",
        Rule::Table,
        "`secrets` is not granted for reading (in FROM)",
    ),
    (BOTH, "", "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets", Rule::Ambiguous, "itself"),
    (BOTH, "", "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM products) SELECT * FROM a", Rule::Ambiguous, "`b`"),
    (BOTH, "", "WITH a AS (SELECT 1), a AS (SELECT 2) SELECT * FROM a", Rule::Ambiguous, "twice"),
    (
        BOTH,
        "",
        "WITH RECURSIVE r AS (SELECT id FROM secrets UNION ALL SELECT id FROM r) SELECT * FROM r",
        Rule::Table,
        "`secrets`",
    ),
    (
        BOTH,
        "",
        "SELECT * FROM products WHERE id IN (WITH s AS (SELECT id FROM secrets) SELECT id FROM s)",
        Rule::Table,
        "in WHERE › IN sub-query › CTE › FROM",
    ),
    (PG, "", "WITH d AS (DELETE FROM products WHERE id = 1 RETURNING id) SELECT * FROM d", Rule::Table, "for delete"),
    (PG, "", "WITH d AS (INSERT INTO secrets (id) VALUES (1) RETURNING id) SELECT * FROM d", Rule::Table, "`secrets`"),
    (
        PG,
        "",
        "WITH d AS (UPDATE customers SET email = 'x' WHERE id = 1 RETURNING id) SELECT * FROM d",
        Rule::Column,
        "`email`",
    ),
    (
        PG,
        "",
        "SELECT * FROM (WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT * FROM d) x",
        Rule::Unsupported,
        "top level",
    ),
    // Sub-queries in every clause.
    (BOTH, "", "SELECT (SELECT value FROM secrets LIMIT 1) FROM products", Rule::Table, "in select list › sub-query"),
    (BOTH, "", "SELECT id FROM products WHERE EXISTS (SELECT 1 FROM secrets)", Rule::Table, "in WHERE › EXISTS"),
    (BOTH, "", "SELECT count(*) FROM products GROUP BY (SELECT id FROM secrets LIMIT 1)", Rule::Table, "in GROUP BY"),
    (
        BOTH,
        "",
        "SELECT count(*) FROM products HAVING count(*) > (SELECT count(*) FROM secrets)",
        Rule::Table,
        "in HAVING",
    ),
    (BOTH, "", "SELECT id FROM products ORDER BY (SELECT value FROM secrets LIMIT 1)", Rule::Table, "in ORDER BY"),
    (BOTH, "", "SELECT id FROM products LIMIT (SELECT count(*) FROM secrets)", Rule::Table, "in LIMIT"),
    (BOTH, "", "SELECT id FROM products LIMIT 1 OFFSET (SELECT count(*) FROM secrets)", Rule::Table, "in OFFSET"),
    (PG, "", "SELECT ceil((SELECT count(*) FROM secrets)) FROM products", Rule::Table, "`secrets`"),
    (
        PG,
        "",
        "SELECT overlay(name placing (SELECT value FROM secrets LIMIT 1) from 1) FROM products",
        Rule::Table,
        "`secrets`",
    ),
    (
        PG,
        "",
        "SELECT count(*) FILTER (WHERE id IN (SELECT id FROM secrets)) FROM products",
        Rule::Table,
        "in select list › FILTER",
    ),
    (
        BOTH,
        "",
        "SELECT row_number() OVER (ORDER BY (SELECT id FROM secrets LIMIT 1)) FROM products",
        Rule::Table,
        "OVER",
    ),
    (
        BOTH,
        "",
        "INSERT INTO products (id, name, price, stock) VALUES ((SELECT id FROM secrets LIMIT 1), 'a', 1, 1)",
        Rule::Table,
        "VALUES",
    ),
    (
        BOTH,
        "",
        "INSERT INTO products (id, name, price, stock) VALUES (1, 'a', 1, 1) ON CONFLICT (id) DO UPDATE SET name = (SELECT value FROM secrets LIMIT 1)",
        Rule::Table,
        "in ON CONFLICT › SET",
    ),
    (
        BOTH,
        "",
        "INSERT INTO products (id, name, price, stock) VALUES (1, 'a', 1, 1) RETURNING (SELECT value FROM secrets LIMIT 1)",
        Rule::Table,
        "in RETURNING",
    ),
    (
        BOTH,
        "",
        "SELECT coalesce(name, (SELECT value FROM secrets LIMIT 1)) FROM products",
        Rule::Table,
        "function arguments",
    ),
    (
        BOTH,
        "",
        "SELECT CASE WHEN id > 0 THEN (SELECT value FROM secrets LIMIT 1) END FROM products",
        Rule::Table,
        "CASE",
    ),
    (BOTH, "", "SELECT id FROM products WHERE id IN (1, (SELECT id FROM secrets LIMIT 1))", Rule::Table, "IN list"),
    (BOTH, "", "SELECT p.id FROM products p JOIN secrets s ON s.id = p.id", Rule::Table, "in FROM › JOIN"),
    (
        BOTH,
        "",
        "SELECT p.id FROM products p JOIN orders o ON o.id = (SELECT id FROM secrets LIMIT 1)",
        Rule::Table,
        "JOIN … ON",
    ),
    (BOTH, "", "SELECT * FROM (SELECT * FROM secrets) AS s", Rule::Table, "in FROM › sub-query"),
    (BOTH, "", "SELECT name FROM products UNION SELECT value FROM secrets", Rule::Table, "set operation"),
    (
        BOTH,
        "",
        "SELECT name FROM products UNION ALL SELECT name FROM products EXCEPT SELECT value FROM secrets",
        Rule::Table,
        "set operation",
    ),
    (
        BOTH,
        "",
        "INSERT INTO products (id, name, price, stock) SELECT id, value, 1, 1 FROM secrets",
        Rule::Table,
        "INSERT source",
    ),
    (BOTH, "", "UPDATE products SET name = (SELECT value FROM secrets LIMIT 1) WHERE id = 1", Rule::Table, "in SET"),
    (BOTH, "", "UPDATE products SET stock = 0 WHERE id IN (SELECT id FROM secrets)", Rule::Table, "in WHERE"),
    (BOTH, "", "UPDATE products SET name = s.value FROM secrets s WHERE s.id = products.id", Rule::Table, "in FROM"),
    (PG, "", "DELETE FROM orders USING secrets WHERE orders.id = secrets.id", Rule::Table, "in USING"),
    (BOTH, "", "DELETE FROM orders WHERE id IN (SELECT id FROM secrets)", Rule::Table, "in WHERE"),
    (
        PG,
        "",
        "MERGE INTO products p USING secrets s ON p.id = s.id WHEN MATCHED THEN UPDATE SET name = s.value",
        Rule::Table,
        "MERGE source",
    ),
    (
        PG,
        "",
        "MERGE INTO products p USING orders o ON p.id = o.product_id WHEN MATCHED THEN DELETE",
        Rule::Table,
        "for delete",
    ),
    (PG, "", "SELECT * FROM products p, LATERAL (SELECT value FROM secrets) s", Rule::Table, "`secrets`"),
    (PG, "", "SELECT DISTINCT ON ((SELECT id FROM secrets LIMIT 1)) id FROM products", Rule::Table, "DISTINCT ON"),
    // Writes and statement kinds.
    (BOTH, "", "INSERT INTO secrets (id, value) VALUES (1, 'x')", Rule::Table, "for insert"),
    (BOTH, "", "DELETE FROM products WHERE id = 1", Rule::Table, "`products` is not granted for delete"),
    (BOTH, "", "UPDATE orders SET status = 'x'", Rule::WithoutWhere, "without WHERE"),
    (BOTH, "", "DELETE FROM orders", Rule::WithoutWhere, "without WHERE"),
    (BOTH, "", "INSERT INTO customers (id, name) VALUES (1, 'a')", Rule::Table, "for insert"),
    (
        LITE,
        "",
        "INSERT OR REPLACE INTO products (id, name, price, stock) VALUES (1, 'a', 1, 1)",
        Rule::Table,
        "for delete",
    ),
    (LITE, "", "REPLACE INTO products (id, name, price, stock) VALUES (1, 'a', 1, 1)", Rule::Table, "for delete"),
    (LITE, "", "UPDATE OR REPLACE products SET id = 2 WHERE id = 1", Rule::Table, "for delete"),
    (LITE, "", "MERGE INTO products USING orders ON 1 = 1 WHEN MATCHED THEN DELETE", Rule::Unsupported, ""),
    // Column grants.
    (BOTH, "", "SELECT * FROM customers", Rule::Column, "`*` on `customers`"),
    (BOTH, "", "SELECT secret_note FROM customers", Rule::Column, "`secret_note`"),
    (BOTH, "", "SELECT c.secret_note FROM customers c", Rule::Column, "`secret_note` of `customers`"),
    (BOTH, "", "SELECT c.* FROM customers c", Rule::Column, "`c.*`"),
    (PG, "", "SELECT c FROM customers c", Rule::Column, "column `c`"),
    (PG, "", "SELECT to_json(c) FROM customers c", Rule::Column, "column `c`"),
    (PG, "", "SELECT count(customers.*) FROM customers", Rule::Column, "`customers.*`"),
    (BOTH, "", "SELECT id FROM products WHERE id IN (SELECT secret_note FROM customers)", Rule::Column, ""),
    (
        BOTH,
        "",
        "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM products WHERE products.name = secret_note)",
        Rule::Column,
        "could be read from `customers`",
    ),
    (PG, "", "SELECT a FROM customers AS c(a, b)", Rule::Column, "column aliases"),
    (BOTH, "", "UPDATE customers SET email = 'x' WHERE id = 1", Rule::Column, "for update"),
    (BOTH, "", "UPDATE customers SET name = secret_note WHERE id = 1", Rule::Column, "`secret_note`"),
    (BOTH, "", "UPDATE customers SET name = 'x' WHERE secret_note = 'y'", Rule::Column, "`secret_note`"),
    (BOTH, "", "INSERT INTO audit_log VALUES (1, '2026', 'a', 'b')", Rule::Column, "must name its columns"),
    (BOTH, "", "INSERT INTO audit_log (id, at, actor, action) VALUES (1, 'x', 'a', 'b')", Rule::Column, "`id`"),
    (
        BOTH,
        "",
        "INSERT INTO audit_log (at, actor, action) VALUES ('x', 'a', 'b') RETURNING id",
        Rule::Column,
        "in RETURNING",
    ),
    (BOTH, "", "SELECT p.id FROM products p NATURAL JOIN customers", Rule::Column, "NATURAL JOIN"),
    (BOTH, "", "SELECT id FROM customers ORDER BY secret_note", Rule::Column, "in ORDER BY"),
    (BOTH, "", "SELECT id FROM audit_log", Rule::Table, "`audit_log` is not granted for reading"),
    (BOTH, "", "SELECT name FROM customers JOIN orders USING (secret_note)", Rule::Column, "USING"),
    // Names.
    (PG, "", "SELECT * FROM \"Products\"", Rule::Table, "`Products`"),
    (PG, "", "SELECT * FROM SECRETS", Rule::Table, "`secrets`"),
    (PG, "", "SELECT * FROM \"public\".\"secrets\"", Rule::Table, "`secrets`"),
    (LITE, "", "SELECT * FROM [secrets]", Rule::Table, "`secrets`"),
    (LITE, "", "SELECT * FROM \"SeCrEtS\"", Rule::Table, "`secrets`"),
    (LITE, "", "SELECT * FROM `secrets`", Rule::Table, "`secrets`"),
    (PG, "", "SELECT * FROM pg_catalog.pg_authid", Rule::Schema, "`pg_catalog`"),
    (PG, "", "SELECT * FROM pg_shadow", Rule::Schema, "system table"),
    (PG, "", "SELECT * FROM information_schema.tables", Rule::Schema, "`information_schema`"),
    (PG, "", "SELECT * FROM other.products", Rule::Schema, "`other`"),
    (PG, "", "SELECT * FROM mydb.public.products", Rule::Schema, "3 parts"),
    (LITE, "", "SELECT * FROM temp.products", Rule::Schema, "`temp`"),
    (LITE, "", "SELECT * FROM sqlite_master", Rule::Schema, "system table"),
    (LITE, "", "SELECT * FROM main.sqlite_schema", Rule::Schema, "system table"),
    // The sidecar's own tables (the KV store's and the audit log's, in a
    // shared database), in any spelling: an outside review granted them.
    (PG, "", "SELECT * FROM gatehouse_kv_data", Rule::Schema, "sidecar's own table"),
    (PG, "", "SELECT * FROM public.\"gatehouse_audit_entries\"", Rule::Schema, "sidecar's own table"),
    (PG, "", "SELECT * FROM \"GATEHOUSE_AUDIT_GRANTS\"", Rule::Schema, "sidecar's own table"),
    (PG, "", "SELECT version FROM _sqlx_migrations", Rule::Schema, "sidecar's own table"),
    (LITE, "", "SELECT * FROM [_SQLX_MIGRATIONS]", Rule::Schema, "sidecar's own table"),
    (LITE, "", "SELECT * FROM other.products", Rule::Schema, "`other`"),
    // A NUL ends the text for both databases but not for the parser (an
    // outside review: the WHERE after it was checked, then never run).
    (BOTH, "", "DELETE FROM orders -- \0\n WHERE id = 2", Rule::Ambiguous, "NUL"),
    (BOTH, "", "UPDATE customers SET name = ? -- \0\n WHERE id = 1", Rule::Ambiguous, "NUL"),
    (BOTH, "", "SELECT id FROM orders WHERE id = ? -- \0\n + ?", Rule::Ambiguous, "NUL"),
    (PG, "", "SELECT U&\"\\0073ecret_note\" FROM customers", Rule::Ambiguous, "Unicode"),
    (PG, "", "SELECT U&'\\0041' FROM products", Rule::Ambiguous, "Unicode"),
    (PG, "", "SELECT name + U&\"\\0073ecret_note\" FROM customers", Rule::Ambiguous, "Unicode"),
    (PG, "", "SELECT * FROM u&\"secrets\"", Rule::Ambiguous, "Unicode"),
    (
        PG,
        "",
        "SELECT * FROM products_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Rule::Ambiguous,
        "longer than 63",
    ),
    // Functions.
    (PG, "", "SELECT pg_sleep(10)", Rule::Function, "`pg_sleep`"),
    (PG, "", "SELECT pg_read_file('/etc/passwd')", Rule::Function, "`pg_read_file`"),
    (PG, "", "SELECT lo_import('/etc/passwd')", Rule::Function, "`lo_import`"),
    (PG, "", "SELECT query_to_xml('select * from secrets', true, true, '')", Rule::Function, "`query_to_xml`"),
    (PG, "", "SELECT set_config('role', 'postgres', false)", Rule::Function, "`set_config`"),
    (PG, "", "SELECT current_setting('data_directory')", Rule::Function, "`current_setting`"),
    (PG, "", "SELECT dblink('host=evil', 'select 1')", Rule::Function, "`dblink`"),
    (PG, "", "SELECT nextval('orders_id_seq')", Rule::Function, "`nextval`"),
    (PG, "", "SELECT pg_catalog.lower(name) FROM products", Rule::Function, "schema-qualified"),
    (PG, "", "SELECT * FROM generate_series(1, 1000000000)", Rule::TableFunction, "`generate_series`"),
    (PG, "", "SELECT * FROM dblink('x', 'select 1') AS t(a int)", Rule::TableFunction, "`dblink`"),
    (PG, "", "SELECT 'pg_authid'::regclass", Rule::Unsupported, "cast"),
    (BOTH, "", "SELECT repeat('x', 1000000000)", Rule::Function, "`repeat`"),
    (LITE, "", "SELECT load_extension('/tmp/evil.so')", Rule::Function, "`load_extension`"),
    (LITE, "", "SELECT readfile('/etc/passwd')", Rule::Function, "`readfile`"),
    (LITE, "", "SELECT * FROM pragma_table_info('secrets')", Rule::TableFunction, "`pragma_table_info`"),
    (LITE, "", "SELECT randomblob(1000000000)", Rule::Function, "`randomblob`"),
    (LITE, "", "SELECT sqlite_version()", Rule::Function, "`sqlite_version`"),
    // Never allowed.
    (BOTH, "", "CREATE TABLE x (id INTEGER)", Rule::NeverAllowed, "DDL"),
    (BOTH, "", "DROP TABLE products", Rule::NeverAllowed, "DDL"),
    (BOTH, "", "ALTER TABLE products ADD COLUMN x INTEGER", Rule::NeverAllowed, "DDL"),
    (PG, "", "TRUNCATE products", Rule::NeverAllowed, "TRUNCATE"),
    (PG, "", "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", Rule::NeverAllowed, "DDL"),
    (BOTH, "", "BEGIN", Rule::TransactionControl, "this door"),
    (BOTH, "", "COMMIT", Rule::TransactionControl, "this door"),
    (PG, "", "SET ROLE postgres", Rule::NeverAllowed, "SET"),
    (PG, "", "SET search_path = evil", Rule::NeverAllowed, "SET"),
    (PG, "", "RESET ALL", Rule::NeverAllowed, "RESET"),
    (PG, "", "DISCARD ALL", Rule::NeverAllowed, "DISCARD"),
    (PG, "", "COPY products TO PROGRAM 'id'", Rule::NeverAllowed, "COPY"),
    (PG, "", "COPY secrets TO '/tmp/x'", Rule::NeverAllowed, "COPY"),
    (PG, "", "DO $$ BEGIN PERFORM pg_sleep(1); END $$", Rule::Unparsable, ""),
    (PG, "", "CALL do_it()", Rule::NeverAllowed, "CALL"),
    (PG, "", "PREPARE p AS SELECT * FROM secrets", Rule::NeverAllowed, "PREPARE"),
    (PG, "", "EXECUTE p", Rule::NeverAllowed, "EXECUTE"),
    (PG, "", "DEALLOCATE ALL", Rule::NeverAllowed, "DEALLOCATE"),
    (PG, "", "DECLARE c CURSOR FOR SELECT * FROM products", Rule::NeverAllowed, "DECLARE"),
    (PG, "", "LISTEN ch", Rule::NeverAllowed, "LISTEN"),
    (PG, "", "NOTIFY ch, 'x'", Rule::NeverAllowed, "NOTIFY"),
    (PG, "", "LOCK TABLE products", Rule::NeverAllowed, "LOCK"),
    (PG, "", "GRANT ALL ON secrets TO PUBLIC", Rule::NeverAllowed, "GRANT"),
    (PG, "", "REVOKE ALL ON products FROM PUBLIC", Rule::NeverAllowed, "REVOKE"),
    (PG, "", "SELECT * INTO newtable FROM products", Rule::SelectInto, "INTO"),
    (PG, "", "EXPLAIN ANALYZE SELECT * FROM products", Rule::NeverAllowed, "EXPLAIN"),
    (BOTH, "", "EXPLAIN SELECT * FROM products", Rule::NeverAllowed, "EXPLAIN"),
    (LITE, "", "VACUUM INTO '/tmp/x'", Rule::Unparsable, ""),
    (LITE, "", "ATTACH DATABASE '/tmp/x.db' AS x", Rule::NeverAllowed, "ATTACH"),
    (LITE, "", "PRAGMA writable_schema = 1", Rule::NeverAllowed, "PRAGMA"),
    (PG, "", "SELECT id FROM products FOR UPDATE", Rule::RowLocking, "FOR UPDATE"),
    (PG, "", "SELECT id FROM products FOR SHARE", Rule::RowLocking, "FOR UPDATE"),
    // params_only, literals and placeholders.
    (BOTH, "params_only = true", "SELECT id FROM products WHERE name = 'x'", Rule::Literal, "params_only"),
    (BOTH, "params_only = true", "SELECT id FROM products LIMIT 10", Rule::Literal, "in LIMIT"),
    (PG, "params_only = true", "SELECT id FROM products WHERE name = E'x'", Rule::Literal, "params_only"),
    (PG, "params_only = true", "SELECT id FROM products WHERE name = $$x$$", Rule::Literal, "params_only"),
    (LITE, "params_only = true", "SELECT id FROM products WHERE name = X'41'", Rule::Literal, "params_only"),
    (PG, "params_only = true", "SELECT id FROM orders WHERE created_at > DATE '2026-01-01'", Rule::Literal, ""),
    (PG, "", "SELECT id FROM products WHERE id = $0", Rule::Placeholder, "`$0`"),
    (LITE, "", "SELECT id FROM products WHERE id = ? AND name = :n", Rule::Placeholder, "named parameters"),
    // SQLite reads `$name::…(…)` as one parameter name (Tcl-style), where
    // a parser reading `::` as a cast sees a cast and a comment: the
    // comment's text would run (an outside review: a second statement, a
    // WHERE-less update, an ungranted insert column).
    (LITE, "", "UPDATE products SET stock = $1::numeric(10/*) --*/) WHERE id = 1", Rule::Ambiguous, "CAST(x AS type)"),
    (LITE, "", "SELECT id FROM products WHERE id = $1::int", Rule::Ambiguous, "CAST(x AS type)"),
    (LITE, "", "SELECT id FROM products WHERE id = $id", Rule::Placeholder, "named parameters"),
    (LITE, "", "SELECT id FROM products WHERE id = :id", Rule::Placeholder, "named parameters"),
    (LITE, "", "SELECT id FROM products WHERE id = @id", Rule::Placeholder, "named parameters"),
    (LITE, "", "SELECT id FROM products WHERE id = ?0", Rule::Placeholder, "?1 to ?32766"),
    (LITE, "", "SELECT id FROM products WHERE id = ?01", Rule::Placeholder, "?1 to ?32766"),
    (LITE, "", "SELECT id FROM products WHERE id = ?32767", Rule::Placeholder, "?1 to ?32766"),
    (LITE, "", "SELECT id FROM products WHERE id = ?1000000", Rule::Placeholder, "?1 to ?32766"),
    (PG, "", "SELECT id FROM products WHERE id = $01", Rule::Placeholder, "PostgreSQL takes"),
    (PG, "", "SELECT id FROM products WHERE id = $65536", Rule::Placeholder, "out of range"),
    (PG, "", "SELECT id FROM products WHERE id = $99999999999999999999999", Rule::Placeholder, "PostgreSQL takes"),
    // A qualifier naming relations at two levels: SQLite looks for the
    // column in the inner one, then in the outer (an outside review read
    // `customers.ssn` this way, `products` granted whole).
    (LITE, "", "SELECT (SELECT p.email FROM products p) FROM customers p", Rule::Column, "`email` of `customers`"),
    (
        LITE,
        "",
        "SELECT (SELECT products.secret_note FROM products) FROM customers products",
        Rule::Column,
        "`secret_note` of `customers`",
    ),
    (
        LITE,
        "",
        "SELECT id FROM customers p WHERE EXISTS (SELECT 1 FROM products p WHERE p.email LIKE 'a%')",
        Rule::Column,
        "`email` of `customers`",
    ),
    // PostgreSQL's attribute notation: `t.f` is `f(t)` when `t` has no
    // column `f` (an outside review called functions past the allow-list).
    (PG, "", "SELECT i.pg_typeof FROM products i", Rule::Function, "`pg_typeof(i)`"),
    (PG, "", "SELECT products.pg_column_size FROM products", Rule::Function, "function `pg_column_size`"),
    (PG, "", "SELECT o.row_to_json FROM orders o WHERE o.id = 1", Rule::Function, "function `row_to_json`"),
    (PG, "", "SELECT id FROM products p ORDER BY p.hash_record", Rule::Function, "function `hash_record`"),
    // And for a table function returning a scalar, `x.f` is `f(x)` for any
    // function taking its type (a second review: `setseed`, `currval`,
    // `pg_advisory_lock`, `current_setting` this way).
    (
        PG,
        "table_functions = [\"unnest\"]",
        "SELECT x.setseed FROM unnest(ARRAY[0.5]) x",
        Rule::Function,
        "`setseed(x)`",
    ),
    (
        PG,
        "table_functions = [\"unnest\"]",
        "SELECT x.current_setting FROM unnest(ARRAY['search_path']) AS x(v)",
        Rule::Function,
        "`current_setting(x)`",
    ),
    (
        PG,
        "table_functions = [\"generate_series\"]",
        "SELECT g.g FROM generate_series(1, 2) g WHERE g.pg_try_advisory_lock",
        Rule::Function,
        "one of its columns (here `g`)",
    ),
    // A table function whose column is named by an `OUT` parameter: `value`,
    // whatever the alias, so the alias as a column is the call (a third
    // review ran `ts_stat` and `current_setting` this way).
    (
        PG,
        "table_functions = [\"jsonb_array_elements_text\"]",
        "SELECT ts_stat.ts_stat FROM jsonb_array_elements_text('[\"SELECT 1\"]') ts_stat",
        Rule::Function,
        "`ts_stat(ts_stat)`",
    ),
    (
        PG,
        "table_functions = [\"json_array_elements_text\"]",
        "SELECT current_setting.current_setting FROM json_array_elements_text('[\"search_path\"]') current_setting",
        Rule::Function,
        "one of its columns (here `value`)",
    ),
    (
        PG,
        "table_functions = [\"unnest\"]",
        "SELECT current_setting.current_setting FROM unnest(ARRAY['search_path'], ARRAY[1]) current_setting",
        Rule::Function,
        "`current_setting(current_setting)`",
    ),
    // A fourth review: a column definition list runs each type's input
    // function (`regclass` names tables by id, a table's row type lists
    // its columns); `current_role` is a function, not a column; with
    // column names given, `ordinality` is renamed and `x.ordinality` a call.
    (
        PG,
        "table_functions = [\"json_to_record\"]",
        "SELECT x.a FROM json_to_record('{\"a\": 1259}') AS x(a regclass)",
        Rule::Unsupported,
        "a cast to this type",
    ),
    (
        PG,
        "table_functions = [\"jsonb_to_recordset\"]",
        "SELECT x.a FROM jsonb_to_recordset('[{\"a\": null}]') AS x(a secrets)",
        Rule::Unsupported,
        "a cast to this type",
    ),
    (PG, "", "SELECT current_role", Rule::Function, "`current_role`"),
    (PG, "", "SELECT id FROM products WHERE name = current_schema", Rule::Function, "`current_schema`"),
    (
        PG,
        "table_functions = [\"unnest\"]",
        "SELECT x.ordinality FROM unnest(ARRAY[1]) WITH ORDINALITY AS x(v, n)",
        Rule::Function,
        "`ordinality(x)`",
    ),
    // A fifth review: `FROM session_user` is the function whatever a CTE
    // says; system columns tell transaction ids and others' updates; an
    // operator in `ORDER BY … USING` passed unchecked.
    (PG, "", "WITH \"session_user\" AS (SELECT 1 AS a) SELECT * FROM session_user", Rule::Function, "`session_user`"),
    (PG, "", "SELECT p.xmin FROM products p", Rule::Column, "system column `xmin`"),
    (PG, "", "SELECT id FROM products WHERE xmax <> '0'", Rule::Column, "system column `xmax`"),
    (PG, "", "SELECT id FROM products ORDER BY id USING <", Rule::Unsupported, "USING an operator"),
    // Session state of other plugins' calls on a pooled connection.
    (PG, "", "SELECT lastval()", Rule::Function, "`lastval`"),
    (PG, "", "SELECT txid_current_snapshot()", Rule::Function, "`txid_current_snapshot`"),
];

#[test]
fn the_bypass_table_is_denied_for_the_stated_reason() {
    let count: usize = BYPASSES.iter().map(|(dialects, ..)| dialects.len()).sum();
    assert!(BYPASSES.len() >= 80 && count >= 120, "{} entries, {count} checks", BYPASSES.len());
    let failures = wrong_verdicts(BYPASSES, &[]);
    assert!(failures.is_empty(), "{} wrong:\n{}", failures.len(), failures.join("\n"));
}

fn allow(dialect: Dialect, policy: &SqlPolicy, sql: &str) -> Checked {
    check(dialect, policy, sql).unwrap_or_else(|d| panic!("{dialect}: {sql}: {d}"))
}

#[test]
fn checked_reports_kind_tables_rows_and_placeholders() {
    let policy = policy();
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<std::collections::BTreeSet<_>>();
    let read = allow(
        Dialect::Postgres,
        &policy,
        "SELECT p.name FROM Orders o JOIN products p ON p.id = o.product_id WHERE o.id = $2 AND p.id = $1",
    );
    assert_eq!(read.kind, StatementKind::Select);
    assert_eq!((read.reads, read.writes.is_empty()), (set(&["orders", "products"]), true));
    assert!(read.returns_rows);
    assert_eq!(read.placeholders, 2);

    let write = allow(Dialect::Sqlite, &policy, "UPDATE Products SET stock = ? WHERE id = ? RETURNING id");
    assert_eq!(write.kind, StatementKind::Update);
    assert_eq!(write.writes, set(&["products"]));
    assert!(write.returns_rows);
    assert_eq!(write.placeholders, 2);

    let insert = allow(Dialect::Sqlite, &policy, "INSERT INTO audit_log (at, actor, action) VALUES (?1, ?2, ?1)");
    assert_eq!((insert.kind, insert.returns_rows, insert.placeholders), (StatementKind::Insert, false, 2));
    let numbered = allow(Dialect::Sqlite, &policy, "SELECT id FROM orders WHERE id = ?3 OR id = ?1");
    assert_eq!(numbered.placeholders, 3);
    // The highest number each database takes (past it: the bypass table).
    assert_eq!(allow(Dialect::Sqlite, &policy, "SELECT id FROM orders WHERE id = ?32766").placeholders, 32_766);
    assert_eq!(allow(Dialect::Postgres, &policy, "SELECT id FROM orders WHERE id = $65535").placeholders, 65_535);

    let cte = allow(
        Dialect::Postgres,
        &policy,
        "WITH gone AS (DELETE FROM orders WHERE status = $1 RETURNING product_id) SELECT name FROM products WHERE id IN (SELECT product_id FROM gone)",
    );
    assert_eq!(cte.kind, StatementKind::Select);
    assert_eq!((cte.reads, cte.writes), (set(&["products"]), set(&["orders"])));

    // A write led by `WITH` parses as a query whose body is the write: its
    // kind is the write's, so the rows it changed are reported.
    let writes = [
        ("WITH n AS (SELECT 1 AS x) INSERT INTO orders (id) SELECT x FROM n", StatementKind::Insert),
        (
            "WITH n AS (SELECT 1 AS x) UPDATE orders SET status = 'x' WHERE id IN (SELECT x FROM n)",
            StatementKind::Update,
        ),
        ("WITH n AS (SELECT 1 AS x) DELETE FROM orders WHERE id IN (SELECT x FROM n)", StatementKind::Delete),
    ];
    for (sql, kind) in writes {
        for &dialect in BOTH {
            assert_eq!(allow(dialect, &policy, sql).kind, kind, "{dialect}: {sql}");
        }
    }
    // PostgreSQL 15 has no `WITH … MERGE`: refused as unsupported, not
    // judged as a select (which this policy does not grant).
    let inserts = SqlPolicy::from_toml("statements = [\"insert\"]\n[tables]\norders = [\"insert\"]\n").unwrap();
    let merge = "WITH n AS (SELECT 1 AS x) MERGE INTO orders o USING orders p ON o.id = p.id \
                 WHEN MATCHED THEN UPDATE SET quantity = 1";
    assert_eq!(check(Dialect::Postgres, &inserts, merge).unwrap_err().rule, Rule::Unsupported);

    // PostgreSQL reads nested comments whole: one statement, nothing hidden.
    let nested = allow(Dialect::Postgres, &policy, "SELECT 1 /* /* */ ; DELETE FROM orders; -- */");
    assert!(nested.writes.is_empty() && nested.reads.is_empty());
}

#[test]
fn transaction_control_is_a_door_default_and_a_policy_switch() {
    let policy = policy();
    for sql in ["BEGIN", "BEGIN TRANSACTION", "END TRANSACTION", "COMMIT", "ROLLBACK", "END"] {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let checked = check_for(Door::Spin, dialect, &policy, sql).unwrap_or_else(|d| panic!("{sql}: {d}"));
            assert!(matches!(checked.kind, StatementKind::Begin | StatementKind::Commit | StatementKind::Rollback));
            let refused = check_for(Door::Gatehouse, dialect, &policy, sql).unwrap_err();
            assert_eq!(refused.rule, Rule::TransactionControl, "{sql}");
        }
    }
    assert_eq!(check_for(Door::Spin, Dialect::Sqlite, &policy, "BEGIN IMMEDIATE").unwrap().kind, StatementKind::Begin);
    for (begin, locks) in
        [("BEGIN IMMEDIATE", true), ("BEGIN EXCLUSIVE TRANSACTION", true), ("BEGIN DEFERRED", false), ("BEGIN", false)]
    {
        assert_eq!(check_for(Door::Spin, Dialect::Sqlite, &policy, begin).unwrap().locks_at_begin, locks, "{begin}");
    }
    let off = with("transaction_control = false");
    assert_eq!(check_for(Door::Spin, Dialect::Sqlite, &off, "BEGIN").unwrap_err().rule, Rule::TransactionControl);
    let on = with("transaction_control = true");
    assert!(check_for(Door::Gatehouse, Dialect::Sqlite, &on, "COMMIT").is_ok());
    for (dialect, sql) in [
        (Dialect::Postgres, "BEGIN ISOLATION LEVEL SERIALIZABLE"),
        (Dialect::Postgres, "ROLLBACK TO SAVEPOINT x"),
        (Dialect::Postgres, "COMMIT AND CHAIN"),
    ] {
        let denial = check_for(Door::Spin, dialect, &policy, sql).unwrap_err();
        assert_eq!(denial.rule, Rule::TransactionControl, "{sql}: {denial}");
    }
    let savepoint = check_for(Door::Spin, Dialect::Sqlite, &policy, "SAVEPOINT x").unwrap_err();
    assert_eq!(savepoint.rule, Rule::NeverAllowed);
}

#[test]
fn a_query_needs_select_even_without_a_table() {
    let insert_only = SqlPolicy::from_toml("statements = [\"insert\"]\n[tables]\naudit_log = { insert = [\"at\"] }")
        .expect("valid policy");
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        for sql in ["SELECT 1", "VALUES (1)", "SELECT lower('X')"] {
            let denial = check(dialect, &insert_only, sql).unwrap_err();
            assert_eq!(denial.rule, Rule::StatementKind, "{dialect}: {sql}: {denial}");
        }
        allow(dialect, &insert_only, "INSERT INTO audit_log (at) VALUES ('now')");
    }
}

#[test]
fn params_only_refuses_literals_but_not_null_true_false() {
    let strict = with("params_only = true");
    allow(Dialect::Postgres, &strict, "SELECT id FROM products WHERE id = $1 AND name IS NOT NULL AND TRUE");
    allow(Dialect::Sqlite, &strict, "UPDATE products SET stock = ?, name = coalesce(?, NULL) WHERE id = ?");
    assert_eq!(check(Dialect::Sqlite, &strict, "SELECT -1").unwrap_err().rule, Rule::Literal);
}

#[test]
fn denials_escape_and_bound_the_names_they_quote() {
    let policy = policy();
    let hostile = format!("SELECT * FROM \"evil\u{1b}[31m\u{202e}{}\"", "x".repeat(40));
    let denial = check(Dialect::Postgres, &policy, &hostile).unwrap_err();
    assert_eq!(denial.rule, Rule::Table);
    assert!(!denial.message.contains('\u{1b}') && !denial.message.contains('\u{202e}'), "{denial}");
    assert!(denial.message.contains("\\u{1b}"), "{denial}");
    let newline = check(Dialect::Sqlite, &policy, "SELECT * FROM \"a\nERROR forged\"").unwrap_err();
    assert!(!newline.message.contains('\n'), "{newline}");
    let long = format!("SELECT * FROM \"{}\"", "y".repeat(10_000));
    let denial = check(Dialect::Sqlite, &policy, &long).unwrap_err();
    assert!(denial.message.len() < 400, "{}", denial.message.len());
    // Parser messages quote the statement too.
    let garbage = format!("SELECT \u{1b}[2J {}", "z".repeat(5000));
    let denial = check(Dialect::Sqlite, &policy, &garbage).unwrap_err();
    assert!(denial.is_invalid_input() && !denial.message.contains('\u{1b}'), "{denial}");
    assert!(denial.message.len() < 1200, "{}", denial.message.len());
}

/// Size and depth: an oversized statement is refused before parsing, and
/// statements nested to every limit are refused cleanly (never a stack
/// overflow) on a thread with a 1 MiB stack, half a tokio worker's.
#[test]
fn size_and_depth_are_bounded() {
    let policy = policy();
    // Exactly MAX_STATEMENT bytes are checked; one more is refused unread.
    let sized = |len: usize| {
        let head = "SELECT id FROM products WHERE name = '";
        format!("{head}{}'", "x".repeat(len - head.len() - 1))
    };
    let at_bound = sized(gatehouse::services::sql::MAX_STATEMENT);
    assert_eq!(at_bound.len(), 64 << 10);
    assert!(check(Dialect::Sqlite, &policy, &at_bound).is_ok());
    let denial = check(Dialect::Sqlite, &policy, &sized(at_bound.len() + 1)).unwrap_err();
    assert_eq!(denial.rule, Rule::TooLarge);
    assert!(denial.is_invalid_input());

    let shapes: Vec<(String, Rule)> = vec![
        (format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)), Rule::Unparsable),
        (format!("SELECT {}1", "- ".repeat(20_000)), Rule::Unparsable),
        (format!("SELECT {}1", "NOT ".repeat(10_000)), Rule::Unparsable),
        // Walked as a loop (no depth), and refused past MAX_OPERATORS.
        (format!("SELECT id FROM products WHERE {}", vec!["id = 1"; 5000].join(" AND ")), Rule::TooManyCalls),
        (format!("SELECT 1{}", " + 1".repeat(15_000)), Rule::TooManyCalls),
        (format!("SELECT * FROM {}products{}", "(SELECT * FROM ".repeat(400), ") x".repeat(400)), Rule::Unparsable),
        (format!("SELECT {}1 END", "CASE WHEN TRUE THEN ".repeat(3000)), Rule::Unparsable),
        (format!("SELECT coalesce({}1{})", "coalesce(".repeat(3000), ")".repeat(3000)), Rule::Unparsable),
    ];
    // 1 MiB in the release build that ships; an unoptimised build of the
    // crate (`./dev mutants`, with debug assertions) has frames several
    // times larger.
    let stack = if cfg!(debug_assertions) { 16 << 20 } else { 1 << 20 };
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let mut wrong = Vec::new();
            for (sql, rule) in &shapes {
                assert!(sql.len() <= 64 << 10, "{}", sql.len());
                for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                    // Names the shape in the output should a stack overflow abort the test.
                    eprintln!("shape {dialect} {}", &sql[..40]);
                    match check(dialect, &policy, sql) {
                        Err(denial) if denial.rule == *rule => {}
                        other => wrong.push(format!("{dialect}: {}…: {other:?}", &sql[..40])),
                    }
                }
            }
            assert!(wrong.is_empty(), "{wrong:#?}");
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

/// `MERGE` (PostgreSQL) is checked per action: each `WHEN` needs its
/// kind on the target, an `INSERT` without a column list only where every
/// column may be inserted, and the forms the check does not read are
/// refused. Attacks: an `INSERT` with no column list into a table granted
/// only some columns, a column list on the target's alias, optimizer
/// hints, `OUTPUT`, `UPDATE … WHERE`, `UPDATE … DELETE WHERE`, `INSERT …
/// WHERE`.
#[test]
fn attribute_notation_is_a_function_call_on_postgres() {
    // `t.f` is `f(t)` on PostgreSQL where `t` has no column `f`: allowed
    // only where the function is, and counted as a call; still a column
    // read, so a table granting some columns refuses it. SQLite has no
    // such notation: the same text is a column, which the database's own
    // check judges.
    let policy = policy();
    let checked = allow(Dialect::Postgres, &policy, "SELECT p.to_json, p.count FROM products p");
    assert_eq!(checked.kind, StatementKind::Select);
    let denied = check(Dialect::Postgres, &policy, "SELECT c.to_json FROM customers c").unwrap_err();
    assert_eq!((denied.rule, denied.message.contains("`to_json` of `customers`")), (Rule::Column, true), "{denied}");
    let with_it = with("functions = [\"row_to_json\"]");
    allow(Dialect::Postgres, &with_it, "SELECT p.row_to_json FROM products p");
    allow(Dialect::Sqlite, &policy, "SELECT p.pg_typeof FROM products p");
    // A table function's own columns, qualified, pass.
    let functions = with(
        "table_functions = [\"unnest\", \"json_each\", \"jsonb_array_elements\", \"generate_series\", \"json_to_record\"]",
    );
    for sql in [
        "SELECT x.x FROM unnest(ARRAY[1, 2]) x",
        "SELECT unnest.unnest FROM unnest(ARRAY[1, 2])",
        "SELECT t.a FROM unnest(ARRAY[1, 2]) WITH ORDINALITY AS t(a)",
        "SELECT j.key, j.value FROM json_each('{\"a\": 1}') j",
        "SELECT j.k FROM json_each('{\"a\": 1}') AS j(k, v)",
        "SELECT e.value FROM jsonb_array_elements('[1]') e",
        "SELECT g.g, g.ordinality FROM generate_series(1, 3) WITH ORDINALITY g",
        "SELECT u.a, u.b FROM unnest(ARRAY[1], ARRAY[2]) AS u(a, b)",
        "SELECT u.v, u.n FROM unnest(ARRAY[1]) WITH ORDINALITY AS u(v, n)",
        "SELECT r.a, r.b FROM json_to_record('{\"a\": 1, \"b\": \"x\"}') AS r(a int, b text)",
        "SELECT \"current_role\" FROM unnest(ARRAY[1]) AS u(\"current_role\")",
        "WITH \"session_user\" AS (SELECT 1 AS a) SELECT a FROM \"session_user\"",
    ] {
        allow(Dialect::Postgres, &functions, sql);
    }
    for sql in [
        "SELECT j.key FROM json_each('{}') AS j(k, v)",
        "SELECT e.e FROM jsonb_array_elements('[1]') e",
        "SELECT x.value FROM unnest(ARRAY[1]) x",
        "SELECT u.unnest FROM unnest(ARRAY[1], ARRAY[2]) u",
    ] {
        let denied = check(Dialect::Postgres, &functions, sql).unwrap_err();
        assert_eq!(denied.rule, Rule::Function, "{sql}: {denied}");
    }
    allow(Dialect::Sqlite, &functions, "SELECT x.anything FROM json_each('[1]') x");
    // Each counts against the calls a statement may make.
    let many: Vec<String> = (0..65).map(|i| format!("p.to_json AS c{i}")).collect();
    let denied = check(Dialect::Postgres, &policy, &format!("SELECT {} FROM products p", many.join(", "))).unwrap_err();
    assert_eq!(denied.rule, Rule::TooManyCalls, "{denied}");
}

#[test]
fn merge_is_checked_per_action() {
    let policy = policy();
    let merge = |tail: &str| format!("MERGE INTO products p USING orders o ON p.id = o.product_id {tail}");
    for sql in [
        merge("WHEN NOT MATCHED THEN INSERT (id, name, price, stock) VALUES (o.product_id, 'x', 1, 1)"),
        merge("WHEN NOT MATCHED THEN INSERT VALUES (o.product_id, 'x', 1, 1)"),
        "MERGE INTO audit_log a USING orders o ON o.id < 0 WHEN NOT MATCHED THEN INSERT (at, actor, action) VALUES ('x', 'y', 'z')".into(),
    ] {
        allow(Dialect::Postgres, &policy, &sql);
    }
    let unnamed =
        "MERGE INTO audit_log a USING orders o ON o.id < 0 WHEN NOT MATCHED THEN INSERT VALUES (1, 'x', 'y', 'z')";
    let denial = check(Dialect::Postgres, &policy, unnamed).unwrap_err();
    assert_eq!(denial.rule, Rule::Column, "{denial}");
    assert!(denial.message.contains("must name its columns"), "{denial}");
    for sql in [
        "MERGE INTO products AS p (a, b) USING orders o ON o.id < 0 WHEN MATCHED THEN DO NOTHING".to_string(),
        "MERGE /*+ x */ INTO products p USING orders o ON p.id = o.product_id WHEN MATCHED THEN DO NOTHING".into(),
        merge("WHEN MATCHED THEN DO NOTHING OUTPUT $action"),
        merge("WHEN MATCHED THEN UPDATE SET stock = 1 WHERE p.id = 1"),
        merge("WHEN MATCHED THEN UPDATE SET stock = 1 DELETE WHERE p.id = 1"),
        merge("WHEN NOT MATCHED THEN INSERT (id) VALUES (1) WHERE o.id = 1"),
    ] {
        let denial = check(Dialect::Postgres, &policy, &sql).unwrap_err();
        assert_eq!(denial.rule, Rule::Unsupported, "{sql}: {denial}");
    }
}

/// Forms of write the check does not read are refused, never passed with
/// the part it skips: each statement below sets one such part of the
/// parsed write (other dialects' syntax that sqlparser also reads in
/// SQLite's or PostgreSQL's). Attacks: `OUTPUT`, `OVERRIDING`, `ON
/// CLUSTER`, `LIMIT`/`ORDER BY` on a write, `DELETE t FROM t`, index and
/// table hints, a column list on the target's alias. `WITHOUT WHERE` and
/// an aliased target are allowed when granted, as written.
#[test]
fn forms_of_write_the_check_does_not_read_are_refused() {
    let policy = with("update_without_where = true\ndelete_without_where = true");
    let refused: &[(&[Dialect], &str)] = &[
        (PG, "INSERT /*+ APPEND */ INTO orders (id) VALUES (1)"),
        (BOTH, "INSERT INTO orders BY NAME SELECT 1 AS id"),
        (BOTH, "INSERT OVERWRITE orders SELECT 1"),
        (LITE, "INSERT INTO orders PARTITION (p) VALUES (1)"),
        (BOTH, "INSERT INTO orders (id) PARTITION (p) VALUES (1)"),
        (BOTH, "INSERT INTO orders (id) OVERRIDING SYSTEM VALUE VALUES (1)"),
        (BOTH, "INSERT INTO TABLE orders (id) VALUES (1)"),
        (BOTH, "INSERT INTO orders (id) OUTPUT inserted.id VALUES (1)"),
        (PG, "UPDATE /*+ x */ orders SET status = 'x' WHERE id = 1"),
        (BOTH, "UPDATE orders ON CLUSTER c SET status = 'x' WHERE id = 1"),
        (BOTH, "UPDATE orders SET status = 'x' OUTPUT inserted.id WHERE id = 1"),
        (BOTH, "UPDATE orders SET status = 'x' WHERE id = 1 LIMIT 1"),
        (BOTH, "UPDATE orders SET status = 'x' LIMIT 1"),
        (PG, "DELETE /*+ x */ FROM orders WHERE id = 1"),
        (BOTH, "DELETE orders FROM orders WHERE id = 1"),
        (BOTH, "DELETE FROM orders ON CLUSTER c WHERE id = 1"),
        (BOTH, "DELETE FROM orders OUTPUT deleted.id WHERE id = 1"),
        (BOTH, "DELETE FROM orders WHERE id = 1 ORDER BY id"),
        (BOTH, "DELETE FROM orders WHERE id = 1 LIMIT 1"),
        (BOTH, "DELETE FROM orders LIMIT 1"),
        (LITE, "UPDATE orders INDEXED BY i SET status = 'x' WHERE id = 1"),
        (LITE, "DELETE FROM orders NOT INDEXED WHERE id = 1"),
        (BOTH, "DELETE FROM orders WITH (NOLOCK) WHERE id = 1"),
        (BOTH, "UPDATE orders AS o (a, b) SET status = 'x' WHERE id = 1"),
        (BOTH, "UPDATE orders TABLESAMPLE SYSTEM (1) SET status = 'x' WHERE id = 1"),
    ];
    let mut wrong = Vec::new();
    for (dialects, sql) in refused {
        for &dialect in *dialects {
            match check(dialect, &policy, sql) {
                Err(denial) if denial.rule == Rule::Unsupported => {}
                other => wrong.push(format!("{dialect}: {sql}: {other:?}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    for &dialect in BOTH {
        for sql in [
            "UPDATE orders AS o SET status = 'x' WHERE o.id = 1",
            "UPDATE orders SET status = 'x'",
            "DELETE FROM orders",
        ] {
            allow(dialect, &policy, sql);
        }
    }
}

/// What a table of verdicts gets wrong: each `refused` row refused under
/// its rule with its reason, each `allowed` row allowed, on each of its
/// dialects (the fixture policy with the row's extra lines).
fn wrong_verdicts(
    refused: &[(&[Dialect], &str, &str, Rule, &str)],
    allowed: &[(&[Dialect], &str, &str)],
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (dialects, extra, sql, rule, reason) in refused {
        for &dialect in *dialects {
            match check(dialect, &with(extra), sql) {
                Err(denial) if denial.rule == *rule && denial.message.contains(reason) => {}
                other => wrong.push(format!("{dialect}: {sql}\n    -> {other:?}, expected {rule:?} with {reason:?}")),
            }
        }
    }
    for (dialects, extra, sql) in allowed {
        for &dialect in *dialects {
            if let Err(denial) = check(dialect, &with(extra), sql) {
                wrong.push(format!("{dialect}: {}: {denial}", &sql[..sql.len().min(80)]));
            }
        }
    }
    wrong
}

/// Each query, SELECT and FROM clause the check does not read is refused
/// alone (one is enough to reach the database unread), and the FROM items
/// it does read are walked, not refused: a parenthesised join, `LATERAL`
/// table functions, `NATURAL JOIN` of tables granted whole, and sub-queries
/// side by side (each one level deep, however many).
#[test]
fn each_clause_the_check_does_not_read_is_refused_alone() {
    let refused: &[(&[Dialect], &str, &str, Rule, &str)] = &[
        (BOTH, "", "SELECT id FROM products FOR XML PATH", Rule::Unsupported, "this query clause"),
        (PG, "", "SELECT /*+ SeqScan(products) */ id FROM products", Rule::Unsupported, "this SELECT clause"),
        (BOTH, "", "SELECT TOP 1 id FROM products", Rule::Unsupported, "this SELECT clause"),
        (BOTH, "", "SELECT id FROM products QUALIFY id = 1", Rule::Unsupported, "this SELECT clause"),
        (BOTH, "", "SELECT id FROM products LATERAL VIEW explode(x) t AS y", Rule::Unsupported, "this SELECT clause"),
        (BOTH, "", "SELECT id FROM products CONNECT BY PRIOR id = id", Rule::Unsupported, "this SELECT clause"),
        (LITE, "", "SELECT id FROM products CLUSTER BY id", Rule::Unsupported, "this SELECT clause"),
        (LITE, "", "SELECT id FROM products DISTRIBUTE BY id", Rule::Unsupported, "this SELECT clause"),
        (LITE, "", "SELECT id FROM products SORT BY id", Rule::Unsupported, "this SELECT clause"),
        (BOTH, "", "SELECT id FROM products GROUP BY ALL", Rule::Unsupported, "this GROUP BY"),
        (BOTH, "", "SELECT id FROM products TABLESAMPLE SYSTEM (1)", Rule::Unsupported, "this table clause"),
        (LITE, "", "SELECT id FROM products INDEXED BY i", Rule::Unsupported, "this table clause"),
        (LITE, "", "SELECT id FROM products NOT INDEXED", Rule::Unsupported, "this table clause"),
        (PG, "", "SELECT id FROM ONLY products", Rule::Unsupported, "this table clause"),
        (PG, "", "SELECT id FROM products *", Rule::Unsupported, "this table clause"),
        (
            BOTH,
            "",
            "SELECT * FROM (INSERT INTO orders (id) VALUES (1) RETURNING id) AS u",
            Rule::Unsupported,
            "only allowed at the top level",
        ),
        (PG, "", "SELECT * AS x FROM products", Rule::Unsupported, "options on `*`"),
        (BOTH, "", "SELECT id FROM products WITH (NOLOCK)", Rule::Unsupported, "this table clause"),
        (
            BOTH,
            "",
            "SELECT * FROM (UPDATE orders SET status = 'x' WHERE id = 1 RETURNING id) AS u",
            Rule::Unsupported,
            "only allowed at the top level",
        ),
        (
            BOTH,
            "",
            "SELECT * FROM (DELETE FROM orders WHERE id = 1 RETURNING id) AS u",
            Rule::Unsupported,
            "only allowed at the top level",
        ),
        (
            PG,
            "table_functions = [\"generate_series\"]",
            "SELECT p.id FROM products p, LATERAL pg_read_file('x') AS g",
            Rule::TableFunction,
            "`pg_read_file`",
        ),
        (BOTH, "", "SELECT p.id FROM (products p JOIN secrets s ON true)", Rule::Table, "`secrets`"),
        (BOTH, "", "SELECT id FROM orders NATURAL JOIN customers", Rule::Column, "NATURAL JOIN with `customers`"),
    ];
    let longest_name = format!("SELECT {} FROM products", "a".repeat(gatehouse::services::sql::names::PG_MAX_IDENT));
    let siblings = format!("SELECT {}", vec!["(SELECT 1)"; gatehouse::services::sql::MAX_DEPTH + 1].join(", "));
    let allowed: &[(&[Dialect], &str, &str)] = &[
        (BOTH, "", "SELECT p.id FROM (products p JOIN orders o ON p.id = o.id)"),
        (BOTH, "", "SELECT id FROM products NATURAL JOIN orders"),
        (
            PG,
            "table_functions = [\"generate_series\"]",
            "SELECT p.id, g FROM products p, LATERAL generate_series(1, p.id) AS g",
        ),
        (BOTH, "", &siblings),
        // The longest name PostgreSQL keeps whole (one more is a bypass row).
        (BOTH, "", &longest_name),
    ];
    let wrong = wrong_verdicts(refused, allowed);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A grant is read to its bounds: as many tables and functions as the
/// bounds allow (function names with `_`), names of the longest length;
/// one more is refused. A table granted `{ select = true }` is granted
/// whole; one granted nothing (`[]`, `{}`) is refused, not taken as
/// granting nothing silently.
#[test]
fn grants_are_read_to_their_bounds() {
    use gatehouse::services::sql::policy::{MAX_LIST, MAX_NAME, MAX_TABLES};
    let tables = |n: usize| (0..n).map(|i| format!("t{i} = \"select\"\n")).collect::<String>();
    let functions = |n: usize| (0..n).map(|i| format!("\"f_{i}\"")).collect::<Vec<_>>().join(", ");
    let read = |body: String| SqlPolicy::from_toml(&format!("statements = [\"select\"]\n{body}"));
    assert!(read(format!("[tables]\n{}", tables(MAX_TABLES))).is_ok());
    let too_many = read(format!("[tables]\n{}", tables(MAX_TABLES + 1))).unwrap_err();
    assert!(too_many.contains(&format!("at most {MAX_TABLES} tables")), "{too_many}");
    for key in ["functions", "table_functions"] {
        assert!(read(format!("{key} = [{}]", functions(MAX_LIST))).is_ok(), "{key}");
        let too_many = read(format!("{key} = [{}]", functions(MAX_LIST + 1))).unwrap_err();
        assert!(too_many.contains(&format!("at most {MAX_LIST}")), "{too_many}");
    }
    // A function name starts with a letter or `_`.
    assert!(read("functions = [\"_f\", \"f_1\"]".into()).is_ok());
    for bad in ["1f", "-f", "f-1", "f.g", ""] {
        assert!(read(format!("functions = [\"{bad}\"]")).is_err(), "{bad:?}");
    }
    let longest = "n".repeat(MAX_NAME);
    assert!(read(format!("[tables]\n{longest} = {{ select = [\"{longest}\"] }}")).is_ok());
    let long = "n".repeat(MAX_NAME + 1);
    assert!(read(format!("[tables]\n{long} = \"select\"")).unwrap_err().contains("use 1 to 63 bytes"));
    for nothing in ["[]", "{}"] {
        assert!(read(format!("[tables]\norders = {nothing}")).is_err(), "{nothing}");
    }
    let whole = read("[tables]\norders = { select = true }".into()).unwrap();
    for dialect in BOTH {
        allow(*dialect, &whole, "SELECT * FROM orders");
    }
}

/// The expression forms the walk reads, each allowed on the dialects that
/// have it and refused on the other where its parser reads it too: the
/// special-syntax functions, grouping sets, array subscripts, collations,
/// casts, `SIMILAR TO`, and PostgreSQL's `U&` escapes as sqlparser splits
/// them (`u & "…"`), which other uses of `&` are not mistaken for.
#[test]
fn expression_forms_are_read_on_their_dialects() {
    let allowed: &[(&[Dialect], &str, &str)] = &[
        (BOTH, "", "SELECT EXTRACT(YEAR FROM CAST(name AS DATE)) FROM products"),
        (BOTH, "", "SELECT POSITION('a' IN name) FROM products"),
        (BOTH, "", "SELECT SUBSTRING(name FROM 1 FOR 2) FROM products"),
        (BOTH, "", "SELECT TRIM(BOTH 'x' FROM name) FROM products"),
        (PG, "", "SELECT id FROM products GROUP BY GROUPING SETS ((id), ())"),
        (PG, "", "SELECT id FROM products GROUP BY CUBE (id)"),
        (PG, "", "SELECT (ARRAY[1, 2])[1]"),
        (PG, "", "SELECT (ARRAY[1, 2])[1:2]"),
        (PG, "", "SELECT id FROM products WHERE name SIMILAR TO 'a%'"),
        (BOTH, "", "SELECT id & \"name\" FROM products"),
        (BOTH, "", "SELECT u & 1 FROM products"),
        (PG, "", "SELECT name COLLATE \"C\" FROM products"),
        (LITE, "", "SELECT name COLLATE nocase FROM products"),
        (PG, "", "SELECT CAST(id AS INT4), CAST(name AS JSONB) FROM products"),
        (LITE, "", "SELECT CAST(id AS BLOB) FROM products"),
        (LITE, "", "SELECT X'00'"),
        (PG, "", "SELECT CAST(name AS TIMESTAMP) AT TIME ZONE 'UTC' FROM products"),
        (BOTH, "", "SELECT id FROM products WHERE id IS DISTINCT FROM 1 OR id IS NOT DISTINCT FROM 2"),
        (LITE, "", "SELECT u & \"name\" FROM products"),
        (PG, "", "SELECT id FROM products WHERE u = 'x'"),
        (BOTH, "", "SELECT string_agg(name, ',') WITHIN GROUP (ORDER BY id) FROM products"),
    ];
    let refused: &[(&[Dialect], &str, &str, Rule, &str)] = &[
        (PG, "", "SELECT u & \"name\" FROM products", Rule::Ambiguous, "Unicode-escaped"),
        (PG, "", "SELECT u & 'x' FROM products", Rule::Ambiguous, "Unicode-escaped"),
        (LITE, "", "SELECT id FROM products WHERE name SIMILAR TO 'a%'", Rule::Unsupported, "this expression"),
        (LITE, "", "SELECT name COLLATE \"C\" FROM products", Rule::Unsupported, "this collation"),
        (PG, "", "SELECT name COLLATE nocase FROM products", Rule::Unsupported, "this collation"),
        (BOTH, "", "SELECT name COLLATE \"de_DE\" FROM products", Rule::Unsupported, "this collation"),
        (LITE, "", "SELECT CAST(id AS INT4) FROM products", Rule::Unsupported, "a cast to this type"),
        (PG, "", "SELECT CAST(id AS BLOB) FROM products", Rule::Unsupported, "a cast to this type"),
        (PG, "", "SELECT X'00'", Rule::Literal, "this kind of literal is not PostgreSQL"),
        (BOTH, "", "SELECT {fn lower(name)} FROM products", Rule::Unsupported, "this function call syntax"),
        (LITE, "", "SELECT id FROM products WHERE id = ? OR id = ?1", Rule::Placeholder, "not mixed"),
        (LITE, "", "SELECT id FROM products WHERE id = ?1 OR id = ?", Rule::Placeholder, "not mixed"),
        (BOTH, "", "SELECT max(*) FROM products", Rule::Unsupported, "`*` as this function's argument"),
        (
            BOTH,
            "",
            "SELECT id FROM products WHERE id IS NOT DISTINCT FROM (SELECT 1 FROM secrets)",
            Rule::Table,
            "`secrets`",
        ),
        (
            PG,
            "",
            "SELECT CAST(name AS TIMESTAMP) AT TIME ZONE (SELECT note FROM secrets) FROM products",
            Rule::Table,
            "`secrets`",
        ),
        (BOTH, "", "SELECT lower(x => name) FROM products", Rule::Unsupported, "this function argument"),
        (
            BOTH,
            "",
            "SELECT string_agg(name, ',') WITHIN GROUP (ORDER BY (SELECT note FROM secrets)) FROM products",
            Rule::Table,
            "`secrets`",
        ),
        (BOTH, "", "SELECT SUBSTRING(name FROM (SELECT 1 FROM secrets)) FROM products", Rule::Table, "`secrets`"),
        (BOTH, "", "SELECT TRIM((SELECT note FROM secrets) FROM name) FROM products", Rule::Table, "`secrets`"),
        (BOTH, "", "SELECT POSITION('a' IN (SELECT note FROM secrets)) FROM products", Rule::Table, "`secrets`"),
        (PG, "", "SELECT id FROM products GROUP BY ROLLUP (id, pg_sleep(1))", Rule::Function, "`pg_sleep`"),
    ];
    let wrong = wrong_verdicts(refused, allowed);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The walk's own depth bound is reached by what the parser builds in a
/// loop, not by recursion it counts: a chain of set operations is as deep
/// as it is long. The first select of `k` `UNION ALL`s sits `k + 3` levels
/// down (the query, its body, each operation, then the select's items and
/// tables), so `MAX_DEPTH - 3` operations are walked and one more is
/// refused, on a thread with a 1 MiB stack.
#[test]
fn a_chain_of_set_operations_is_walked_to_max_depth_and_no_further() {
    use gatehouse::services::sql::MAX_DEPTH;
    let chain = |k: usize| format!("SELECT id FROM products{}", " UNION ALL SELECT id FROM products".repeat(k));
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let policy = policy();
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                let at = check(dialect, &policy, &chain(MAX_DEPTH - 3));
                assert!(at.is_ok(), "{dialect}: {at:?}");
                let denial = check(dialect, &policy, &chain(MAX_DEPTH - 2)).unwrap_err();
                assert_eq!(denial.rule, Rule::TooDeep, "{dialect}: {denial}");
            }
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

/// Function calls per statement are bounded (SQLite checks a deadline
/// only at jumps, and one row's calls have none between them). Attack (an
/// outside review): thousands of `length`/`hex` calls of a 16 MiB value in
/// one row, ~10 ms each, ran long past the statement's deadline.
#[test]
fn function_calls_per_statement_are_bounded() {
    use gatehouse::services::sql::MAX_FUNCTION_CALLS;
    let policy = policy();
    let calls = |n: usize| vec!["length(name)"; n].join(" + ");
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let at = format!("SELECT {} AS n FROM products", calls(MAX_FUNCTION_CALLS));
        assert!(check(dialect, &policy, &at).is_ok(), "{dialect}: {:?}", check(dialect, &policy, &at));
        // Nested or spread over clauses, they count alike.
        let nested = format!("SELECT id FROM products WHERE length(upper(name)) > {}", calls(MAX_FUNCTION_CALLS - 1));
        let over = [format!("SELECT {} AS n FROM products", calls(MAX_FUNCTION_CALLS + 1)), nested];
        for sql in over {
            let denial = check(dialect, &policy, &sql).unwrap_err();
            assert_eq!(denial.rule, Rule::TooManyCalls, "{dialect}: {denial}");
            assert!(denial.message.contains(&MAX_FUNCTION_CALLS.to_string()), "{denial}");
        }
    }
}

/// Operators per statement are bounded, for the same reason as function
/// calls: each is one step linear in its operands. Attack (an outside
/// review): 2,000 `s = t COLLATE NOCASE` of two 8 MiB strings in one row
/// held a connection 13 s past a 1 s deadline, and its client's hang-up
/// did not stop it. Each form counts what SQLite compares: a binary
/// operator one, `BETWEEN` two, an `IN` list of values one (a lookup) and
/// one per member that is not a value, `CASE x WHEN …` one per `WHEN`,
/// casts, unary operators and `LIKE` one each, a row-value comparison one
/// per element, a call one per argument past its first (a second review
/// got past the count with `(x, x, …) = (y, y, …)` and `max(x, x, …)`).
#[test]
fn operators_per_statement_are_bounded() {
    use gatehouse::services::sql::MAX_OPERATORS;
    let policy = policy();
    let forms: [(&str, usize); 12] = [
        ("(price, stock, id) = (1, 2, 3)", 3),
        ("((price, stock, id)) = ((1, 2, 3))", 3),
        ("coalesce(price, stock, id, 4)", 3),
        ("abs(price)", 0),
        ("price BETWEEN 1 AND 2", 2),
        ("price IN (1, 2, 3, 4)", 1),
        ("price IN (stock, id, 3)", 3),
        ("(CASE price WHEN 1 THEN 1 WHEN 2 THEN 2 ELSE 3 END)", 2),
        ("CAST(price AS TEXT)", 1),
        ("(-price)", 1),
        ("name LIKE 'a%'", 1),
        ("price", 0),
    ];
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        for (form, cost) in forms {
            // Ten comparisons joined by nine ANDs, and the form.
            let base = format!("SELECT id, {form} FROM products WHERE {}", ["price = 1"; 10].join(" AND "));
            let room = MAX_OPERATORS - 19 - cost;
            // Padded with `+ 0` on the last comparison's value, to the
            // bound exactly and then one past it.
            let padded = |n: usize| format!("{base}{}", " + 0".repeat(n));
            let exact = padded(room);
            assert!(check(dialect, &policy, &exact).is_ok(), "{dialect} {form}: {:?}", check(dialect, &policy, &exact));
            let denial = check(dialect, &policy, &padded(room + 1)).unwrap_err();
            assert_eq!(denial.rule, Rule::TooManyCalls, "{dialect} {form}: {denial}");
            assert!(denial.message.contains(&format!("more than {MAX_OPERATORS} operators")), "{denial}");
        }
    }
}

/// A query built from a small grammar over the fixture tables, `secrets`
/// included; aliases and CTE names never spell `secrets`, so a statement
/// that names it reads the real table.
fn query() -> impl Strategy<Value = String> {
    let table = prop_oneof![
        Just("products"),
        Just("orders"),
        Just("secrets"),
        Just("customers"),
        Just("PRODUCTS"),
        Just("\"secrets\""),
        Just("main.secrets"),
    ];
    let column = prop_oneof![
        Just("id"),
        Just("name"),
        Just("x.id"),
        Just("t.id"),
        Just("status"),
        Just("*"),
        Just("count(*)"),
        Just("lower(name)"),
        Just("secret_note"),
    ];
    let leaf = (column.clone(), table.clone()).prop_map(|(c, t)| format!("SELECT {c} FROM {t}"));
    leaf.prop_recursive(4, 24, 3, move |inner| {
        prop_oneof![
            (column.clone(), inner.clone()).prop_map(|(c, q)| format!("SELECT {c} FROM ({q}) AS x")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} UNION {b}")),
            (column.clone(), table.clone(), inner.clone())
                .prop_map(|(c, t, q)| format!("SELECT {c} FROM {t} WHERE id IN ({q})")),
            (column.clone(), table.clone(), inner.clone())
                .prop_map(|(c, t, q)| format!("SELECT {c} FROM {t} WHERE EXISTS ({q})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("WITH t AS ({a}) {b}")),
            (column.clone(), inner.clone(), table.clone())
                .prop_map(|(c, q, t)| format!("SELECT ({q}) FROM {t} ORDER BY {c}")),
            (table.clone(), inner.clone()).prop_map(|(t, q)| format!("INSERT INTO {t} (id) {q}")),
            (table.clone(), inner.clone()).prop_map(|(t, q)| format!("DELETE FROM {t} WHERE id IN ({q})")),
        ]
    })
}

/// Whether `secrets` follows `FROM` or `INTO` (elsewhere, after a token
/// was dropped, it can be a column alias).
fn reaches_secrets(sql: &str) -> bool {
    let tokens: Vec<String> = sql.split(' ').map(str::to_ascii_lowercase).collect();
    tokens.windows(2).any(|pair| matches!(pair[0].as_str(), "from" | "into") && pair[1].contains("secrets"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Grammar-built statements: nothing that reads or writes `secrets` is
    /// ever allowed. The same with one token dropped or doubled (token
    /// soups): no panic, and allowed only if the parser reads exactly one
    /// statement. (A mutant can turn `secrets` into an alias: SQLite's
    /// parser reads `SELECT SELECT * FROM "secrets"` as `SELECT (select *
    /// from) AS "secrets"`, which SQLite itself refuses.)
    #[test]
    fn nothing_reaching_an_ungranted_table_is_allowed(sql in query(), cut in 0usize..64, doubled in any::<bool>()) {
        let policy = policy();
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            if let Ok(checked) = check(dialect, &policy, &sql) {
                prop_assert!(!reaches_secrets(&sql), "{dialect} allowed {sql}: {checked:?}");
            }
        }
        let mut tokens: Vec<&str> = sql.split(' ').collect();
        let at = cut % tokens.len();
        if doubled { tokens.insert(at, tokens[at]) } else { tokens.remove(at); }
        let mutant = tokens.join(" ");
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            if check(dialect, &policy, &mutant).is_ok() {
                let parsed = gatehouse::services::sql::check::parse(dialect, &mutant);
                prop_assert!(parsed.is_ok_and(|statements| statements.len() == 1), "{dialect} allowed {mutant}");
            }
        }
    }

    /// Arbitrary text: no panic, and what the parser refuses is never
    /// allowed.
    #[test]
    fn arbitrary_text_never_panics_and_unparsable_is_never_allowed(sql in "[ -~\\n\u{80}-\u{2ff}]{0,200}") {
        let policy = policy();
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let parsed = gatehouse::services::sql::check::parse(dialect, &sql);
            let result: Result<Checked, Denial> = check(dialect, &policy, &sql);
            if !parsed.as_ref().is_ok_and(|statements| statements.len() == 1) {
                prop_assert!(result.is_err(), "{dialect} allowed {sql:?}");
            }
        }
    }

    /// Random SQL keywords and symbols (more likely to parse than random
    /// text; comments and strings included): no panic, and nothing allowed
    /// that the parser does not read as exactly one statement.
    #[test]
    fn keyword_soups_never_panic(words in proptest::collection::vec(prop_oneof![
        Just("SELECT"), Just("FROM"), Just("WHERE"), Just("secrets"), Just("products"), Just("("), Just(")"),
        Just(","), Just("*"), Just("id"), Just("="), Just("1"), Just("UNION"), Just("WITH"), Just("AS"),
        Just("JOIN"), Just("ON"), Just("IN"), Just("EXISTS"), Just(";"), Just("'"), Just("/*"), Just("*/"),
        Just("--"), Just("\n"), Just("$1"), Just("?"), Just("INSERT"), Just("INTO"), Just("VALUES"),
        Just("DELETE"), Just("UPDATE"), Just("SET"), Just("RETURNING"), Just("CASE"), Just("WHEN"), Just("END"),
    ], 0..40)) {
        let sql = words.join(" ");
        let policy = policy();
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            if check(dialect, &policy, &sql).is_ok() {
                let parsed = gatehouse::services::sql::check::parse(dialect, &sql);
                prop_assert!(parsed.is_ok_and(|statements| statements.len() == 1), "{dialect} allowed {sql:?}");
            }
        }
    }
}
