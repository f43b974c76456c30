//! `gatehouse audit verify | show | export | prove | consistency | key`:
//! the audit log for auditors and operators.
//!
//! Every command reads the log's file itself (`<data_dir>/audit/log.redb`)
//! read-only, whether or not a sidecar runs: the sidecar holds the file
//! only for the moment of an append or a read (see `audit::trail`), and a
//! command that finds it held waits up to `LOCK_WAIT` for it. So the
//! commands need the data directory, not the admin token, and a command
//! holding the file delays a reload's append by as long (its reads take
//! milliseconds). With `[audit] database`, the commands read the shared
//! PostgreSQL log instead, creating nothing there. `verify` also reads an
//! export (`--export FILE`), for an auditor who has only that.
//!
//! What an entry holds came from policy files and token names: `show`
//! prints each field escaped and bounded, one entry a line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gatehouse::audit::entry::{Entry, Recorded};
use gatehouse::audit::trail::Location;
use gatehouse::audit::{NoteVerifier, export, key, merkle, tiles};
use gatehouse::config::Config;
use gatehouse::guest_text::{LINE, escape};

/// What to do with the log.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole log: every entry, the chain, the tree and every
    /// checkpoint's signature; with --checkpoint, that the log extends a
    /// checkpoint kept from before. Exit 0 with a summary, or 1 naming the
    /// first bad entry (or checkpoint) and why.
    Verify {
        /// A signed checkpoint kept from an earlier visit (a file holding
        /// the note, as `GET /admin/audit/checkpoint` or a proof gave it).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The key to trust, in signed-note vkey form (`audit key` prints
        /// it), or a file holding it. Default: the settings' key.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
        /// Verify an export (`audit export`) instead of the store.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
    },
    /// Print entries, one a line, oldest first: sequence number, time,
    /// actor, plugin, kind, item, and the values before and after.
    Show {
        /// Only this plugin's entries.
        #[arg(long)]
        plugin: Option<String>,
        /// Only entries from this time on: RFC 3339 (`2026-12-02T10:00:00Z`)
        /// or a duration back from now (`1h`, `7days`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Write the log as JSON Lines: each entry's canonical bytes on a line,
    /// and after the entries each checkpoint covers, `{"checkpoint": NOTE}`.
    /// With --tiles, a C2SP tlog-tiles directory instead.
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE", conflicts_with = "tiles")]
        out: Option<PathBuf>,
        /// Write the tree of the latest checkpoint as a tlog-tiles
        /// directory (created; refused unless empty): `checkpoint`,
        /// `tile/<L>/<N>` and `tile/entries/<N>`.
        #[arg(long, value_name = "DIR")]
        tiles: Option<PathBuf>,
    },
    /// Print an inclusion proof of entry SEQ against the latest checkpoint
    /// (one JSON object; docs/audit-log.md, "Proofs from the CLI").
    Prove {
        /// The entry's sequence number.
        seq: u64,
    },
    /// Print a consistency proof from the tree of OLD_SIZE entries (an
    /// older checkpoint's size) to the latest checkpoint (one JSON object).
    Consistency {
        /// The older checkpoint's tree size.
        old_size: u64,
    },
    /// Print the log's verifier key in signed-note vkey form: give it to
    /// auditors (`audit verify --key`, Go's sumdb/note, `signed_note`).
    Key,
}

pub fn run(config: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let store = Location::of(config, false).context("the audit log")?;
    match command {
        AuditCommand::Verify { checkpoint, key, export } => verify(config, &store, checkpoint, key, export),
        AuditCommand::Show { plugin, since } => show(&store, plugin.as_deref(), since.as_deref()),
        AuditCommand::Export { tiles: Some(dir), .. } => tiles_to(&store, &dir),
        AuditCommand::Export { out, tiles: None } => export_to(&store, out),
        AuditCommand::Prove { seq } => {
            let proof = store.reader()?.prove(seq).with_context(|| format!("no proof of entry {seq}"))?;
            let entry = String::from_utf8(proof.entry.clone()).context("the stored entry is not UTF-8")?;
            print_json(&serde_json::json!({
                "type": "inclusion",
                "index": proof.seq,
                "size": proof.size,
                "entry": entry,
                "leaf_hash": B64.encode(merkle::leaf_hash(&proof.entry)),
                "path": proof.path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                "checkpoint": proof.checkpoint,
            }))
        }
        AuditCommand::Consistency { old_size } => {
            let proof =
                store.reader()?.consistency(old_size).with_context(|| format!("no proof from size {old_size}"))?;
            print_json(&serde_json::json!({
                "type": "consistency",
                "old_size": proof.old,
                "size": proof.size,
                "path": proof.path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                "checkpoint": proof.checkpoint,
            }))
        }
        AuditCommand::Key => {
            let signer = key::load(&config.audit.key).context("the audit log's key")?;
            println!("{}", signer.verifier().to_vkey());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<ExitCode> {
    println!("{value}");
    Ok(ExitCode::SUCCESS)
}

/// The keys to trust: `--key` (a vkey, or a file holding one), else the
/// verifier of the settings' signing key.
fn trusted(config: &Config, given: Option<String>) -> anyhow::Result<Vec<NoteVerifier>> {
    let Some(given) = given else {
        let signer = key::load(&config.audit.key)
            .context("the settings' audit key (give the log's verifier key with --key VKEY)")?;
        return Ok(vec![signer.verifier()]);
    };
    let text = if Path::new(&given).is_file() {
        let bytes = gatehouse::bounded_read::read_regular_file(Path::new(&given), 4096)
            .with_context(|| format!("reading the key file {}", escape(&given, LINE)))?;
        String::from_utf8(bytes).context("the key file is not UTF-8")?
    } else {
        given
    };
    Ok(vec![NoteVerifier::from_vkey(text.trim()).map_err(|e| anyhow::anyhow!("--key: {e}"))?])
}

fn verify(
    config: &Config,
    store: &Location,
    held: Option<PathBuf>,
    key: Option<String>,
    export: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let trusted = trusted(config, key)?;
    let held = match held {
        Some(path) => {
            let bytes = gatehouse::bounded_read::read_regular_file(&path, 64 * 1024)
                .with_context(|| format!("reading the checkpoint {}", gatehouse::policy::shown(&path)))?;
            Some(String::from_utf8(bytes).context("the checkpoint file is not UTF-8")?)
        }
        None => None,
    };
    // The store also holds the grants in force, which its latest
    // checkpoint signs, and its tree and head (an export has none).
    let (entries, checkpoints, snapshot) = match export {
        Some(path) => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening the export {}", gatehouse::policy::shown(&path)))?;
            let read = export::read(&mut std::io::BufReader::new(file))?;
            (read.entries, read.checkpoints, None)
        }
        // Read, then let go of the file before the work.
        None => {
            let mut snapshot = store.reader()?.snapshot()?;
            let (entries, checkpoints) =
                (std::mem::take(&mut snapshot.entries), std::mem::take(&mut snapshot.checkpoints));
            (entries, checkpoints, Some(snapshot))
        }
    };
    let bytes: usize = entries.iter().map(Vec::len).sum();
    match gatehouse::audit::verify(&entries, &checkpoints, &trusted, held.as_deref()) {
        Ok(_) if !grants_signed(snapshot.as_ref().map(|s| &s.grants), checkpoints.last()) => {
            println!(
                "{}: grants-mismatch: the grants in force stored beside the log are not the ones the latest \
                 checkpoint signed (edited outside the sidecar?)",
                store.shown()
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(summary)
            if let Some(problem) = snapshot.as_ref().and_then(|s| s.store_problem(summary.size, &summary.root)) =>
        {
            println!("{}: {problem}", store.shown());
            Ok(ExitCode::FAILURE)
        }
        Ok(summary) => {
            let held = summary.held.map(|s| format!(", extends the held checkpoint of size {s}")).unwrap_or_default();
            println!(
                "ok: {} entries ({bytes} bytes), root {}, {} checkpoints, latest signed by {}{held}",
                summary.size,
                B64.encode(summary.root),
                summary.checkpoints,
                if summary.signed_by.is_empty() { "-".to_string() } else { summary.signed_by.join(", ") },
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            println!("{}", escape(&problem.to_string(), gatehouse::guest_text::MESSAGE));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Whether the stored grants in force are the ones the latest checkpoint
/// signed (true when there is nothing to compare: an export, or a
/// checkpoint signed before the digest line existed).
fn grants_signed(grants: Option<&std::collections::BTreeMap<String, Vec<u8>>>, latest: Option<&String>) -> bool {
    let (Some(grants), Some(latest)) = (grants, latest) else { return true };
    let Some(signed) = gatehouse::audit::Checkpoint::peek(latest).ok().and_then(|c| c.grants) else { return true };
    signed == gatehouse::audit::store::grants_digest(grants.iter().map(|(p, b)| (p.as_str(), b.as_slice())))
}

/// `--since`: an RFC 3339 time, or a duration back from now.
fn since_time(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    let back = humantime::parse_duration(text)
        .map_err(|_| anyhow::anyhow!("--since: `{}` is neither an RFC 3339 time nor a duration", escape(text, 64)))?;
    Ok(SystemTime::now().checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH))
}

fn shown_value(value: &Option<Recorded>) -> String {
    match value {
        None => "-".into(),
        Some(Recorded::Value(v)) => escape(&v.to_string(), LINE),
        Some(Recorded::Digest { sha256, size }) => format!("sha256:{} ({size} bytes)", hex::encode(sha256)),
    }
}

fn show(store: &Location, plugin: Option<&str>, since: Option<&str>) -> anyhow::Result<ExitCode> {
    let since = since.map(since_time).transpose()?;
    let (entries, _) = store.reader()?.read_all()?;
    let mut out = std::io::stdout().lock();
    for (seq, bytes) in entries.iter().enumerate() {
        let Ok(entry) = Entry::decode(bytes) else {
            writeln!(out, "{seq} (not a valid entry: run `gatehouse audit verify`)")?;
            continue;
        };
        if plugin.is_some_and(|p| entry.plugin.as_deref() != Some(p)) {
            continue;
        }
        if let Some(since) = since
            && humantime::parse_rfc3339(&entry.time).is_ok_and(|t| t < since)
        {
            continue;
        }
        let change = &entry.change;
        writeln!(
            out,
            "{seq} {} {} {} {} {} before={} after={}",
            entry.time,
            escape(&entry.actor, LINE),
            entry.plugin.as_deref().map_or("-".into(), |p| escape(p, LINE)),
            change.kind,
            if change.item.is_empty() { "(plugin)".into() } else { escape(&change.item, LINE) },
            shown_value(&change.before),
            shown_value(&change.after),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn tiles_to(store: &Location, dir: &Path) -> anyhow::Result<ExitCode> {
    let (entries, checkpoints) = store.reader()?.read_all()?;
    let latest = checkpoints.last().ok_or(tiles::TilesError::NoCheckpoint)?;
    let written = tiles::write(dir, &entries, latest)?;
    println!("wrote {} entries in {} files to {}", written.size, written.files.len(), gatehouse::policy::shown(dir));
    Ok(ExitCode::SUCCESS)
}

fn export_to(store: &Location, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (entries, checkpoints) = store.reader()?.read_all()?;
    match out {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", gatehouse::policy::shown(&path)))?,
            );
            export::write(&mut file, &entries, &checkpoints)?;
            file.flush()?;
        }
        None => {
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            export::write(&mut stdout, &entries, &checkpoints)?;
            stdout.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
