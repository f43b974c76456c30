//! `gatehouse invoke | policy … | compile | demo | kv … | audit …`.
//!
//! The CLI is the binary's edge: it turns library errors into messages and
//! exit codes (0 success, 1 the operation failed, 2 bad usage or settings).

mod audit;
mod commands;
mod demo;
mod explain_sql;
mod grants;
mod json_log;
mod kv;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::config::Config;

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = "Runs WebAssembly plugins behind policy-checked host services")]
struct Cli {
    /// Settings file. Defaults to ./gatehouse.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Policy directory (overrides the settings file). Components are then
    /// looked for beside the policies, unless --plugins says otherwise.
    #[arg(long, global = true, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Directory that policy `component` paths are relative to.
    #[arg(long, global = true, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Log lines on stderr: `text` for people, `json` (one object a line,
    /// a plugin's fields as a real object) for log pipelines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one plugin on one input and print its output document.
    Invoke {
        /// Plugin name, as in its policy file.
        plugin: String,
        /// Input file, or `-` for stdin (the default).
        #[arg(long, short, default_value = "-")]
        input: PathBuf,
        /// Media type of the input. Defaults to application/json for
        /// `*.json` files and text/plain otherwise.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Compile every plugin into the code cache, so that loading is fast.
    Compile,
    /// Run the sidecar: the invoke API, the admin API, health and metrics,
    /// until SIGTERM (SIGHUP reloads the policies).
    Run {
        /// Address of the invoke API (overrides `[server] listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Address of the admin API, or `off` (overrides `[server]
        /// admin_listen`).
        #[arg(long, value_name = "ADDR|off")]
        admin_listen: Option<String>,
    },
    /// Load the example plugins and run each on a sample document.
    Demo,
    /// Read the key-value store (read-only): usage, a value, keys.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// The audit log of grant changes (read-only): verify, show, export,
    /// proofs, the verifier key.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// What a reload would change (`diff`), and the approvals of grants
    /// that grow (`pending`, `approve`, `reject`).
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
    /// Write the `gatehouse:services` WIT package this binary serves into
    /// DIR, for building a plugin outside this repository.
    Wit {
        /// Where to write the `.wit` files.
        #[arg(default_value = "wit")]
        dir: PathBuf,
    },
    /// Internal: compile one component from stdin in a memory-capped child.
    #[command(name = "__compile", hide = true)]
    CompileWorker {
        /// The engine settings, as the parent passes them.
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory as a load would, without serving: parse
    /// every policy, compile each component, check its imports against its
    /// grants, resolve its secrets; exit 1 with every problem, one line
    /// each, if anything is wrong. Logs only with GATEHOUSE_LOG set.
    Check {
        /// Policy directory; defaults to the configured one.
        dir: Option<PathBuf>,
    },
    /// Say whether a plugin's `[http]` policy lets it reach a URL, which
    /// rule matched or why none did, and what the host resolves to; exit 0
    /// if allowed, 1 if denied. Sends nothing.
    ExplainUrl {
        /// Plugin name, as in its policy file.
        plugin: String,
        /// The URL the plugin would request.
        url: String,
    },
    /// Say whether a plugin's `[sql.<alias>]` policy allows one statement:
    /// its kind and the tables it reads and writes, or the rule it breaks
    /// and where; exit 0 if allowed, 1 if denied, 2 on a usage or policy
    /// error. Checks the statement only: no database is opened.
    ExplainSql {
        /// Plugin name, as in its policy file.
        plugin: String,
        /// Database alias, as in `[sql.<alias>]`.
        alias: String,
        /// The statement, as the plugin would send it.
        statement: String,
        /// The alias's SQL dialect, when the settings do not define the
        /// alias (they say PostgreSQL for `[databases.<alias>]`).
        #[arg(long, value_enum)]
        dialect: Option<explain_sql::DialectArg>,
        /// The door the statement comes through (sets whether
        /// `BEGIN`/`COMMIT` are allowed by default).
        #[arg(long, value_enum, default_value = "gatehouse")]
        door: explain_sql::DoorArg,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CompileWorker { args } = &cli.command {
        return gatehouse::runtime::compile_worker::main(args);
    }
    // Needs no settings and loads nothing.
    if let Command::Wit { dir } = &cli.command {
        return match gatehouse::wit::write_to(dir) {
            Ok(files) => {
                files.iter().for_each(|file| println!("{}", file.display()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: writing {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    // `policy check` reports on stdout, one line per problem; its log would
    // only say the same again.
    let quiet = matches!(
        cli.command,
        Command::Policy(PolicyCommand::Check { .. } | PolicyCommand::ExplainSql { .. })
            | Command::Audit(_)
            | Command::Grants(_)
    );
    init_tracing(if quiet { "off" } else { "info" }, cli.log_format);
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Invoke { plugin, input, content_type } => {
                commands::invoke(&config, &plugin, &input, content_type).await
            }
            Command::Policy(PolicyCommand::Check { .. }) => commands::policy_check(&config).await,
            Command::Policy(PolicyCommand::ExplainUrl { plugin, url }) => {
                commands::explain_url(&config, &plugin, &url).await
            }
            Command::Policy(PolicyCommand::ExplainSql { plugin, alias, statement, dialect, door }) => {
                explain_sql::explain_sql(&config, &plugin, &alias, &statement, dialect, door)
            }
            Command::Compile => commands::compile(&config),
            Command::Run { .. } => run::run(&config).await,
            Command::Demo => demo::demo(&config).await,
            Command::Kv(command) => kv::run(&config, command).await,
            Command::Audit(command) => audit::run(&config, command),
            Command::Grants(command) => grants::run(&config, command),
            Command::CompileWorker { .. } | Command::Wit { .. } => {
                unreachable!("handled before the settings are read")
            }
        }
    });
    end_runtime(runtime);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// How long the process waits, once its command is done, for threads
/// still busy in work nothing awaits any more.
const THREADS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends the async runtime without waiting more than [`THREADS_WAIT`] for
/// its threads. Dropping it would wait for every one, and a thread stepping
/// a SQLite statement that no check reaches (one row of uninterruptible
/// work, see the README) kept a stopped server alive for a minute after
/// SIGTERM (an outside review); `gatehouse run` has by then drained, and
/// stopped what it could (`Runtime::stop_all`). The process exits with such
/// a thread mid-statement, as on a crash, which SQLite's journal undoes.
fn end_runtime(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_timeout(THREADS_WAIT);
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let default_file = PathBuf::from("gatehouse.toml");
    let file = cli.config.clone().or_else(|| default_file.is_file().then_some(default_file));
    let mut config = match &file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // `policy check DIR` resolves components the way `--policies DIR` does:
    // beside the policies, unless `--plugins` says where they are.
    let (flag, dir) = match &cli.command {
        Command::Policy(PolicyCommand::Check { dir: Some(dir) }) => ("policy check DIR", Some(dir)),
        _ => ("--policies", cli.policies.as_ref()),
    };
    if let Some(dir) = dir {
        config.policy_dir = dir.clone();
        config.plugin_dir = dir.clone();
        config.plugin_dir_origin = format!("the policy directory given to {flag} (--plugins DIR looks elsewhere)");
    }
    if let Some(dir) = &cli.plugins {
        config.plugin_dir = dir.clone();
        config.plugin_dir_origin = "--plugins".into();
    }
    if let Command::Run { listen, admin_listen } = &cli.command {
        if let Some(addr) = listen {
            config.server.listen = *addr;
        }
        if let Some(text) = admin_listen {
            config.server.admin_listen =
                gatehouse::config::parse_admin_listen(text).map_err(|e| anyhow::anyhow!("--admin-listen: {e}"))?;
        }
        config.server.validate().map_err(anyhow::Error::msg)?;
    }
    // A check is read-only: without a settings file (which names the data
    // directory), it compiles in memory rather than creating `.gatehouse/`
    // wherever it happens to run.
    if file.is_none() && matches!(cli.command, Command::Policy(_)) {
        config.runtime.cache_dir = None;
    }
    // Compile in a memory-capped child process of this same binary.
    config.runtime.compile_worker = std::env::current_exe().ok();
    Ok(config)
}

/// Logs go to stderr so that `invoke` output on stdout stays clean.
/// `GATEHOUSE_LOG` (or `RUST_LOG`) overrides the `info` default. Colours
/// only on a terminal, and never with `NO_COLOR` set.
fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("GATEHOUSE_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default))
        // sqlx logs what a database server sends (NOTICE text, unknown URL
        // parameters) as it is: unescaped, unbounded, and possibly quoting
        // part of a URL. Gatehouse logs database problems itself.
        .add_directive("sqlx=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json_log::JsonLines)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A thread busy in work nothing awaits any more (as a SQLite statement
    /// no check reaches) does not keep the process: the runtime ends after
    /// `THREADS_WAIT`, where dropping it waits for the thread (the outside
    /// review's minute after SIGTERM).
    #[test]
    fn ending_the_runtime_does_not_wait_for_a_busy_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (started, busy) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            tokio::task::block_in_place(|| {
                started.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(120));
            })
        });
        busy.recv().unwrap();
        let ending = Instant::now();
        super::end_runtime(runtime);
        assert!(ending.elapsed() < Duration::from_secs(60), "{:?}", ending.elapsed());
    }
}
