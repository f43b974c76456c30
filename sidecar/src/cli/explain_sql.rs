//! `gatehouse policy explain-sql <plugin> <alias> "<statement>"`: what the
//! statement checker says about one statement under a plugin's
//! `[sql.<alias>]` grant, for platform teams' CI. Exit 0 allowed, 1
//! denied, 2 usage or policy error. Runs nothing: no database is opened.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use gatehouse::config::Config;
use gatehouse::guest_text::{LINE, escape};
use gatehouse::services::sql::{Dialect, Door, SqlPolicy, SqlSection, StatementKind, check_for};

/// The `[sql.<alias>]` sections of a policy file, the rest ignored.
#[derive(serde::Deserialize)]
struct SqlOnly {
    #[serde(default)]
    sql: std::collections::BTreeMap<String, SqlSection>,
}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `--dialect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DialectArg {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// `--door`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DoorArg {
    /// `gatehouse:services/sql`.
    Gatehouse,
    /// Spin's sqlite interfaces (`BEGIN`/`END` allowed by default).
    Spin,
}

pub fn explain_sql(
    config: &Config,
    plugin: &str,
    alias: &str,
    statement: &str,
    dialect: Option<DialectArg>,
    door: DoorArg,
) -> anyhow::Result<ExitCode> {
    let dialect = alias_dialect(config, alias, dialect)?;
    let (file, policy) = sql_policy(&config.policy_dir, plugin, alias)?;
    let door = match door {
        DoorArg::Gatehouse => Door::Gatehouse,
        DoorArg::Spin => Door::Spin,
    };
    println!("plugin      {} ({file})", escape(plugin, LINE));
    println!("alias       {} ({dialect})", escape(alias, LINE));
    println!("statement   {}", escape(statement, LINE));
    Ok(match check_for(door, dialect, &policy, statement) {
        Ok(checked) => {
            println!("kind        {}", kind_name(checked.kind));
            println!("reads       {}", list(&checked.reads));
            println!("writes      {}", list(&checked.writes));
            println!("parameters  {}", checked.placeholders);
            println!("verdict     allowed");
            ExitCode::SUCCESS
        }
        Err(denial) => {
            println!("verdict     denied: {} ({:?})", denial.message, denial.rule);
            ExitCode::FAILURE
        }
    })
}

fn kind_name(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Select => "select",
        StatementKind::Insert => "insert",
        StatementKind::Update => "update",
        StatementKind::Delete => "delete",
        StatementKind::Merge => "merge",
        StatementKind::Begin => "begin",
        StatementKind::Commit => "commit",
        StatementKind::Rollback => "rollback",
    }
}

fn list(tables: &std::collections::BTreeSet<String>) -> String {
    if tables.is_empty() {
        return "-".into();
    }
    tables.iter().map(|t| escape(t, LINE)).collect::<Vec<_>>().join(", ")
}

/// The alias's dialect: from the settings when they define the alias
/// (`url` is PostgreSQL, `sqlite` SQLite; `app`, when the settings do not
/// define it, is the embedded SQLite database), else `--dialect`, which
/// must agree with the settings when both say.
fn alias_dialect(config: &Config, alias: &str, flag: Option<DialectArg>) -> anyhow::Result<Dialect> {
    let flag = flag.map(|d| match d {
        DialectArg::Sqlite => Dialect::Sqlite,
        DialectArg::Postgres => Dialect::Postgres,
    });
    let configured = match config.databases.get(alias) {
        Some(settings) => Some(settings.dialect()),
        None if alias == gatehouse::services::sql::pool::APP_ALIAS => Some(Dialect::Sqlite),
        None => None,
    };
    match (configured, flag) {
        (Some(configured), Some(flag)) if configured != flag => {
            bail!("alias `{}` is a {configured} database in the settings, not {flag}", escape(alias, LINE))
        }
        (Some(dialect), _) | (None, Some(dialect)) => Ok(dialect),
        (None, None) => bail!(
            "alias `{}` is not among the settings' databases: say which dialect with --dialect sqlite|postgres",
            escape(alias, LINE)
        ),
    }
}

/// The `[sql.<alias>]` section of `plugin`'s policy file, validated as the
/// loader validates it ([`SqlSection::validate`]) but read on its own: the
/// plugin's component need not be built or present (CI checks statements
/// before it is). Returns the file's name too.
fn sql_policy(dir: &Path, plugin: &str, alias: &str) -> anyhow::Result<(String, SqlPolicy)> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading the policy directory {}", dir.display()))?;
    let mut files: Vec<_> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    files.sort();
    for path in files {
        let shown = escape(&path.display().to_string(), LINE);
        // Bounded like the loader: policy files are small.
        let bytes = gatehouse::bounded_read::read_regular_file(&path, gatehouse::policy::MAX_POLICY_FILE)
            .with_context(|| format!("reading {shown}"))?;
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        let Ok(table) = toml::from_str::<toml::Table>(text) else { continue };
        let named = table.get("plugin").and_then(|p| p.get("name")).and_then(|n| n.as_str());
        if named != Some(plugin) {
            continue;
        }
        // Read again for the section alone, keeping its places in the file.
        let mut sections = toml::from_str::<SqlOnly>(text).map_err(|e| anyhow::anyhow!("{shown}: {}", e.message()))?;
        let Some(section) = sections.sql.remove(alias) else {
            bail!(
                "{shown}: plugin `{}` has no [sql.{}] section: it may not use that alias",
                escape(plugin, LINE),
                escape(alias, LINE)
            );
        };
        return match section.validate() {
            Ok(policy) => Ok((shown, policy)),
            Err(problems) => {
                let lines: Vec<String> = problems
                    .iter()
                    .map(|(span, why)| {
                        format!("{shown}:{}: [sql.{}]: {why}", line_of(text, span.start), escape(alias, LINE))
                    })
                    .collect();
                bail!("{}", lines.join("\n"))
            }
        };
    }
    bail!("no policy file in {} names plugin `{}`", dir.display(), escape(plugin, LINE))
}
