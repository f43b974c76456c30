//! The audit log in the running sidecar: every load and reload records
//! the grant changes it would make, in one durable batch, before they take
//! effect (the runtime's gate, see [`crate::Runtime::reload_gated`]). If
//! the batch cannot be written, the reload fails and the grants in force
//! stay as they were.
//!
//! What a load is compared with: the grants in force as the log's own
//! entries left them, kept in the store's `audit_grants` table and written
//! in the same transaction as the entries (see [`super::store`]). Not the
//! plugins in memory, which are empty at start: a restart with the same
//! policies then writes nothing, and policies edited while the sidecar was
//! stopped are recorded at the next start. Why not replay the entries
//! instead: values over 16 KiB are recorded by hash, and a list element
//! added reads the same as a section granted, so the entries alone do not
//! give back the grants.
//!
//! The sidecar holds the log's file only while it appends or reads, so
//! that `gatehouse audit …` reads the file itself whether or not a sidecar
//! runs (redb lets one process write, or several read, never both). An
//! append waits up to [`LOCK_WAIT`] for such a reader to let go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::approval::{
    ApprovalState, Decision, Row, UnreadableRow, approved, growth, is_plugin_row, narrowing, row, states,
};
use super::entry::{Change, Entry, MAX_ACTOR, NewEntry};
use super::log::{AuditError, AuditLog, AuditReader, MAX_BATCH, Plan};
use super::note::{NoteSigner, NoteVerifier};
use super::postgres::PgStore;
use super::store::{ReadOpenError, StoreError};
use super::{STORE_FILE, canonical, key};
use crate::config::{AuditSettings, Config};
use crate::policy::PluginPolicy;
use crate::policy::grant_diff::{GrantChange, diff_grants, grants};

/// How often a sidecar on a shared (PostgreSQL) log reads its head
/// ([`AuditTrail::follow`]).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// Longest an append or a read waits for another process (a `gatehouse
/// audit …` reading the file) to let go of it.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What asked for a (re)load, which decides the entries' actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The policy files on disk (the first load, SIGHUP): each entry's
    /// actor is the plugin's policy file and its content hash,
    /// `file:<path>#sha256:<hex>`.
    Disk,
    /// The admin API, with the name of the caller's token: `admin:<name>`.
    Admin(String),
}

/// Why the changes could not be recorded; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The log refused or failed the append.
    #[error(transparent)]
    Log(#[from] AuditError),
    /// More changes than one batch may hold.
    #[error("{0} grant changes at once; one reload may make at most {MAX_BATCH}: apply them in steps")]
    TooMany(usize),
    /// The grants in force recorded in the store cannot be read.
    #[error("the grants recorded in force for plugin `{0}` cannot be read")]
    State(String),
    /// An approval or rejection of a plugin with nothing pending.
    #[error("plugin `{0}` has no grants waiting for approval")]
    NotPending(String),
    /// A decision naming grants (by digest) other than those pending now.
    #[error(
        "the grants pending for plugin `{0}` are not the ones reviewed (sha256 {1}): they changed since; review them again"
    )]
    NotReviewed(String, String),
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        RecordError::Log(AuditError::Store(e))
    }
}

impl From<UnreadableRow> for RecordError {
    fn from(e: UnreadableRow) -> Self {
        RecordError::State(e.0)
    }
}

/// A plugin whose next grants wait for a person ([`AuditTrail::screen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The plugin.
    pub plugin: String,
    /// Why, naming the items that grow and what to run.
    pub reason: String,
    /// Its loaded version must stop serving rather than be kept: it grows
    /// beyond the approved grants as well (they were approved since it
    /// loaded, or another sidecar loaded them), or it has what the new
    /// policy takes away, which cannot wait for the growth's decision.
    pub unload: bool,
}

/// What [`AuditTrail::screen`] decided and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screened {
    /// The plugins held for approval.
    pub held: Vec<Held>,
    /// Entries appended (`requested`, `withdrawn`).
    pub entries: u64,
}

/// Why the log could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The key.
    #[error(transparent)]
    Key(#[from] key::KeyError),
    /// The directory.
    #[error(transparent)]
    Directory(#[from] crate::data_dir::DataDirError),
    /// The store, or its last checkpoint does not match it.
    #[error(transparent)]
    Log(#[from] AuditError),
    /// `[audit] database`'s alias cannot be used.
    #[error(transparent)]
    Database(#[from] crate::databases::DatabaseError),
}

/// Where the log is kept.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded redb file (`<data_dir>/audit/log.redb`).
    File(PathBuf),
    /// A PostgreSQL database (`[audit] database`), shared by the sidecars
    /// pointed at it.
    Postgres(PgStore),
}

impl Location {
    /// The settings' store: the PostgreSQL alias `[audit] database` names
    /// (connected to now, so this needs a tokio runtime; given its schema
    /// when `create`, else it must exist), else the file in the data
    /// directory.
    pub fn of(config: &Config, create: bool) -> Result<Location, TrailError> {
        let Some(alias) = &config.audit.database else {
            return Ok(Location::File(config.data_dir.join(STORE_FILE)));
        };
        let settings = config.databases.get(alias).cloned().ok_or_else(|| {
            AuditError::Store(StoreError(format!("[audit] database: no [databases.{alias}] in the settings")))
        })?;
        let databases = crate::databases::Databases::open(&BTreeMap::from([(alias.clone(), settings)]))?;
        let options = databases.options(alias).cloned().ok_or_else(|| {
            AuditError::Store(StoreError(format!("[audit] database: [databases.{alias}] is not PostgreSQL")))
        })?;
        let store = if create { PgStore::open(options, alias) } else { PgStore::open_existing(options, alias) };
        Ok(Location::Postgres(store.map_err(AuditError::Store)?))
    }

    /// For messages: the file, or the database alias.
    pub fn shown(&self) -> String {
        match self {
            Location::File(path) => crate::policy::shown(path),
            Location::Postgres(pg) => format!("[databases.{}] (PostgreSQL)", pg.alias()),
        }
    }

    /// The log opened for reading. The file is opened read-only, waiting up
    /// to [`LOCK_WAIT`] while another process appends (blocking).
    pub fn reader(&self) -> Result<AuditReader, ReadOpenError> {
        let path = match self {
            Location::Postgres(pg) => return Ok(AuditReader::postgres(pg.clone())),
            Location::File(path) => path,
        };
        let started = Instant::now();
        loop {
            match AuditReader::open(path) {
                Err(ReadOpenError::Locked(_)) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                opened => return opened,
            }
        }
    }
}

/// What a successful record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Entries appended (0: no grant changed, nothing written).
    pub entries: u64,
    /// The log's size after.
    pub size: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TrailMetrics {
    appended: AtomicU64,
    failures: AtomicU64,
    size: AtomicU64,
    /// When the latest checkpoint was signed, in ms since the epoch (0: none).
    signed_ms: AtomicU64,
}

impl TrailMetrics {
    /// Entries this process appended.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Appends that failed (each failed a reload).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The latest checkpoint's tree size.
    pub fn checkpoint_size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Seconds since the latest checkpoint was signed (`None`: none yet).
    pub fn checkpoint_age(&self) -> Option<f64> {
        let ms = self.signed_ms.load(Ordering::Relaxed);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        (ms != 0).then(|| now.saturating_sub(ms) as f64 / 1000.0)
    }

    fn signed_at(&self, time: SystemTime) {
        let ms = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.signed_ms.store(ms.max(1), Ordering::Relaxed);
    }
}

/// The sidecar's audit log: where it is, its key, and its counters.
#[derive(Debug)]
pub struct AuditTrail {
    location: Location,
    origin: String,
    signers: Vec<NoteSigner>,
    /// Reads share the file; an append has it alone (in this process;
    /// other processes are waited for, see [`LOCK_WAIT`]).
    lock: RwLock<()>,
    /// The latest tree (size, root) this process saw the store hold: every
    /// append checks that the store still extends it.
    seen: std::sync::Mutex<Option<(u64, super::merkle::Hash)>>,
    /// Where `seen` is remembered across restarts ([`AuditTrail::remembering`]).
    witness: Option<PathBuf>,
    metrics: TrailMetrics,
}

/// The file under the data directory that remembers the latest tree the
/// sidecar saw ([`AuditTrail::remembering`]).
pub const WITNESS_FILE: &str = "audit/seen";

/// The origin a new log gets when the settings name none.
pub fn default_origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).take(100).collect();
    format!("gatehouse/{}", if host.is_empty() { "localhost" } else { &host })
}

impl AuditTrail {
    /// Opens the log of `data_dir` (`<data_dir>/audit/log.redb`): see
    /// [`AuditTrail::open_at`].
    pub fn open(data_dir: &Path, settings: &AuditSettings) -> Result<AuditTrail, TrailError> {
        AuditTrail::open_at(Location::File(data_dir.join(STORE_FILE)), settings)
    }

    /// Opens the log at `location` with the settings' key, creating both
    /// on first run, and checks that the stored tree still matches the
    /// last checkpoint it signed. The origin is the settings' one, else
    /// the existing key's name, else [`default_origin`] (so a host renamed
    /// later keeps its log's name).
    pub fn open_at(location: Location, settings: &AuditSettings) -> Result<AuditTrail, TrailError> {
        let origin = match &settings.origin {
            Some(origin) => origin.clone(),
            None if settings.key.exists() => key::load(&settings.key)?.name().to_string(),
            None => default_origin(),
        };
        let signer = key::load_or_generate(&settings.key, &origin)?;
        if let Location::File(store) = &location
            && let Some(dir) = store.parent()
        {
            crate::data_dir::secure(dir)?;
        }
        let trail = AuditTrail {
            location,
            origin,
            signers: vec![signer],
            lock: RwLock::new(()),
            seen: Default::default(),
            witness: None,
            metrics: Default::default(),
        };
        let log = trail.open_log()?;
        // An empty append writes nothing but checks the stored tree
        // against the last signed checkpoint (and repairs a file whose
        // writer was killed).
        let appended = log.append(&[])?;
        *trail.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((appended.size, appended.root));
        trail.metrics.size.store(appended.size, Ordering::Relaxed);
        if let Some(last) = appended.size.checked_sub(1).map(|seq| log.entry(seq)).transpose()?.flatten() {
            let time = Entry::decode(&last).ok().and_then(|e| humantime::parse_rfc3339(&e.time).ok());
            trail.metrics.signed_at(time.unwrap_or_else(SystemTime::now));
        }
        Ok(trail)
    }

    /// Remembers the latest tree this process sees (size and root) in
    /// `file`, a file of the sidecar's own outside the store, and refuses
    /// now a store that does not extend the tree remembered there: a
    /// sidecar restarted after its database was rolled back (a restored
    /// dump, a replaced file) refuses to sign over it, as a running one
    /// does. To accept a log that was reset on purpose, remove the file.
    pub fn remembering(mut self, file: PathBuf) -> Result<AuditTrail, TrailError> {
        if let Some(dir) = file.parent() {
            crate::data_dir::secure(dir)?;
        }
        if let Some((size, root)) = read_witness(&file)? {
            self.open_log()?.extending(size, root).append(&[]).map_err(|e| match e {
                AuditError::Inconsistent(why) => AuditError::Inconsistent(format!(
                    "{why} (the tree this sidecar saw before it restarted, remembered in {}; remove that file \
                     only to accept a log reset on purpose)",
                    crate::policy::shown(&file)
                )),
                e => e,
            })?;
        }
        self.witness = Some(file);
        let seen = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = seen {
            self.remember(seen).map_err(|e| AuditError::Store(StoreError(e)))?;
        }
        Ok(self)
    }

    /// Writes `seen` to the witness file, if there is one (atomically: a
    /// new file renamed over the old).
    fn remember(&self, (size, root): (u64, super::merkle::Hash)) -> Result<(), String> {
        let Some(file) = &self.witness else { return Ok(()) };
        let shown = crate::policy::shown(file);
        // A name of this process's own: the CLI and the sidecar may both
        // write it at once (writes within one process hold `seen`).
        let temporary = file.with_extension(format!("{}.tmp", std::process::id()));
        let text = format!("{size} {}\n", hex::encode(root));
        crate::data_dir::replace_private(file, &temporary, text.as_bytes()).map_err(|e| format!("{shown}: {e}"))
    }

    /// Records `latest` as seen, in memory and in the witness file (whose
    /// failure is logged: an older witness only checks less).
    fn saw(&self, seen: &mut Option<(u64, super::merkle::Hash)>, latest: (u64, super::merkle::Hash)) {
        if *seen == Some(latest) {
            return;
        }
        *seen = Some(latest);
        if let Err(error) = self.remember(latest) {
            tracing::warn!(%error, "the audit log's latest tree is not remembered for a restart");
        }
    }

    /// The log's origin (its name in checkpoints and its key's name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The keys that check its checkpoints.
    pub fn verifiers(&self) -> Vec<NoteVerifier> {
        self.signers.iter().map(NoteSigner::verifier).collect()
    }

    /// Where the log is kept.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Its counters.
    pub fn metrics(&self) -> &TrailMetrics {
        &self.metrics
    }

    fn open_log(&self) -> Result<AuditLog, AuditError> {
        let path = match &self.location {
            Location::Postgres(pg) => return AuditLog::postgres(pg.clone(), &self.origin, self.signers.clone()),
            Location::File(path) => path,
        };
        let started = Instant::now();
        loop {
            match AuditLog::open(path, &self.origin, self.signers.clone()) {
                Err(AuditError::Locked(_)) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => return other,
            }
        }
    }

    /// Appends what `plan` makes of the stored grants (see
    /// [`AuditLog::append_planned`]), refusing a store that no longer
    /// extends the tree this process last saw it hold.
    fn append(
        &self,
        plan: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> Result<Plan, RecordError>,
    ) -> Result<super::log::Appended, RecordError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut log = self.open_log()?;
        if let Some((size, root)) = *seen {
            log = log.extending(size, root);
        }
        let appended = log.append_planned(plan)?;
        self.saw(&mut seen, (appended.size, appended.root));
        Ok(appended)
    }

    /// Moves what this process has seen up to the log's latest checkpoint,
    /// if the store extends what it saw; otherwise refuses, as the next
    /// append would. A sidecar on a shared log calls it every
    /// [`FOLLOW_INTERVAL`], so that a rollback of the database is refused
    /// by every sidecar that ran while the newer log existed, not only by
    /// those that appended to it. Blocking.
    pub fn follow(&self) -> Result<(), AuditError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let verifiers = self.verifiers();
        let latest = self.read(|reader| {
            let Some(note) = reader.checkpoint()? else { return Ok(None) };
            let checkpoint = super::Checkpoint::open(&note, &verifiers)?;
            let proof = match *seen {
                Some((size, _)) if size <= checkpoint.size => Some(reader.consistency(size)?),
                _ => None,
            };
            Ok(Some((checkpoint, proof)))
        })?;
        let Some((size, root)) = *seen else { return Ok(()) };
        let latest_size = latest.as_ref().map_or(0, |(checkpoint, _)| checkpoint.size);
        let extends = match &latest {
            Some((checkpoint, Some(proof))) if proof.size == checkpoint.size => {
                super::merkle::verify_consistency(size, checkpoint.size, &root, &checkpoint.root, &proof.path).is_ok()
            }
            None => size == 0,
            _ => false,
        };
        if !extends {
            return Err(AuditError::Inconsistent(format!(
                "the store (now {latest_size} entries) does not extend the log of {size} entries this process saw: \
                 it was deleted, replaced or rolled back; restore it from a backup"
            )));
        }
        if let Some((checkpoint, _)) = latest {
            self.saw(&mut seen, (checkpoint.size, checkpoint.root));
        }
        Ok(())
    }

    /// Runs `read` on the log opened read-only (blocking; waits up to
    /// [`LOCK_WAIT`] for another process's append).
    pub fn read<T>(&self, read: impl FnOnce(&AuditReader) -> Result<T, AuditError>) -> Result<T, AuditError> {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        let reader = self.location.reader().map_err(|e| match e {
            ReadOpenError::Locked(shown) => AuditError::Locked(shown),
            e => AuditError::Store(StoreError(e.to_string())),
        })?;
        read(&reader)
    }

    /// Records the changes from the grants in force (as the log's entries
    /// left them) to `in_force`, in one durable batch with the new state,
    /// or nothing when nothing changed. `named`: the plugins a policy
    /// still names (loaded or not: held for approval, refused); the
    /// approvals of any other plugin not in force end (`revoked`).
    /// Blocking: call it off the async executor. Counts the outcome in the
    /// metrics.
    pub fn record(
        &self,
        trigger: &Trigger,
        in_force: &[PluginPolicy],
        named: &[String],
    ) -> Result<Recorded, RecordError> {
        let _alone = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let outcome = self.record_locked(trigger, in_force, named);
        match &outcome {
            Ok(recorded) if recorded.entries > 0 => self.counted(recorded.entries, recorded.size),
            Ok(_) => {}
            Err(_) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    fn record_locked(
        &self,
        trigger: &Trigger,
        in_force: &[PluginPolicy],
        named: &[String],
    ) -> Result<Recorded, RecordError> {
        let appended = self.append(|rows| plan_record(trigger, in_force, named, rows))?;
        Ok(Recorded { entries: appended.size - appended.first, size: appended.size })
    }

    /// Sorts `next` (the policies a reload would put in force) into those
    /// that may take effect and those [`Held`] for approval (see
    /// [`super::approval`]). Grants newly waiting are recorded (a
    /// `requested` entry per item that grows, and the pending row) in one
    /// durable batch; pending grants no longer asked for are `withdrawn`.
    /// `loaded`: the versions loaded now, each judged too when its plugin
    /// is held. Blocking: call it off the async executor.
    pub fn screen(
        &self,
        trigger: &Trigger,
        next: &[&PluginPolicy],
        loaded: &[PluginPolicy],
    ) -> Result<Screened, RecordError> {
        let _alone = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let mut held = Vec::new();
        let appended = self.append(|rows| {
            let (plan, waiting) = plan_screen(trigger, next, loaded, rows)?;
            held = waiting;
            Ok::<_, RecordError>(plan)
        })?;
        let entries = appended.size - appended.first;
        if entries > 0 {
            self.counted(entries, appended.size);
        }
        Ok(Screened { held, entries })
    }

    /// Approves or rejects the grants pending for `plugin`, in one durable
    /// batch: an `approved` or `rejected` entry naming `actor` (with the
    /// grants approved before and the grants decided on), and the rows
    /// (approved: they become the approved grants; rejected: they are held
    /// until something else is asked for). The decision takes effect at
    /// the next reload. Blocking.
    /// With `reviewed` (the [`super::approval::digest`] the approver saw),
    /// the decision is refused unless the pending grants are still those.
    pub fn decide(
        &self,
        plugin: &str,
        decision: Decision,
        actor: &str,
        reviewed: Option<&str>,
    ) -> Result<Recorded, RecordError> {
        let _alone = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let appended = self.append(|rows| plan_decision(plugin, decision, actor, reviewed, rows))?;
        self.counted(1, appended.size);
        Ok(Recorded { entries: 1, size: appended.size })
    }

    /// The grants in force, by plugin, as the log's state records them.
    /// Blocking.
    pub fn in_force(&self) -> Result<BTreeMap<String, Value>, RecordError> {
        let rows = self.read(|reader| reader.grants())?;
        rows.iter()
            .filter(|(key, _)| super::approval::is_plugin_row(key))
            .map(|(plugin, bytes)| {
                let row: Value = serde_json::from_slice(bytes).map_err(|_| RecordError::State(plugin.clone()))?;
                Ok((plugin.clone(), row["grants"].clone()))
            })
            .collect()
    }

    /// The grants pending or rejected, by plugin, each with what it adds
    /// to the approved grants.
    pub fn approvals(&self) -> Result<Vec<ApprovalState>, RecordError> {
        let rows = self.read(|reader| reader.grants())?;
        Ok(states(&rows)?)
    }

    fn counted(&self, entries: u64, size: u64) {
        self.metrics.appended.fetch_add(entries, Ordering::Relaxed);
        self.metrics.size.store(size, Ordering::Relaxed);
        self.metrics.signed_at(SystemTime::now());
    }
}

/// The entries and rows that take the grants in force (`rows`) to
/// `in_force`: each change an entry by the reload's actor, each plugin's
/// row its new grants (or removed); and the approval rows of plugins
/// neither in force nor `named` by a policy, `revoked`.
fn plan_record(
    trigger: &Trigger,
    in_force: &[PluginPolicy],
    named: &[String],
    recorded: &BTreeMap<String, Vec<u8>>,
) -> Result<Plan, RecordError> {
    let mut before: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for (plugin, bytes) in recorded.iter().filter(|(key, _)| is_plugin_row(key)) {
        let row: Value = serde_json::from_slice(bytes).map_err(|_| RecordError::State(plugin.clone()))?;
        let file = row["file"].as_str().unwrap_or_default().to_string();
        before.insert(plugin.clone(), (file, row["grants"].clone()));
    }
    let after: BTreeMap<&str, &PluginPolicy> = in_force.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut names: Vec<&str> = before.keys().map(String::as_str).chain(after.keys().copied()).collect();
    names.sort_unstable();
    names.dedup();

    let mut batch = Vec::new();
    let mut state = Vec::new();
    for name in names {
        let old = before.get(name);
        let new = after.get(name).copied();
        let new_grants = new.map(grants);
        let changes = diff_grants(name, old.map(|(_, g)| g), new_grants.as_ref());
        if changes.is_empty() {
            continue;
        }
        let actor = match new {
            Some(policy) => actor(trigger, policy),
            None => gone_actor(trigger, recorded, name),
        };
        let changes = bounded(name, changes, old.map(|(_, g)| g), new_grants.as_ref());
        batch.extend(changes.into_iter().map(|change| entry(&actor, change, None)));
        let row = match (new, new_grants) {
            (Some(policy), Some(value)) => {
                let row = json!({ "file": policy.file.to_string_lossy(), "grants": value });
                Some(canonical::to_vec(&row).map_err(|_| RecordError::State(name.to_string()))?)
            }
            _ => None,
        };
        state.push((name.to_string(), row));
    }
    // An approval ends with its plugin's policy, so that a plugin added
    // back under the same name asks again. One a policy still names keeps
    // them (held, or out until it loads).
    for (key, bytes) in recorded {
        let Some((which @ (Row::Approved | Row::Rejected), plugin)) = Row::parse(key) else { continue };
        if after.contains_key(plugin) || named.iter().any(|n| n == plugin) {
            continue;
        }
        let grants: Value = serde_json::from_slice(bytes).map_err(|_| RecordError::State(plugin.to_string()))?;
        let change = Change { kind: "revoked".into(), item: which.name().into(), before: Some(grants), after: None };
        batch.push(NewEntry { actor: gone_actor(trigger, recorded, plugin), plugin: Some(plugin.to_string()), change });
        state.push((key.clone(), None));
    }
    if batch.len() > MAX_BATCH {
        return Err(RecordError::TooMany(batch.len()));
    }
    Ok((batch, state))
}

/// Who ended what `plugin` had when its policy is gone: the admin token's
/// name, or the file that defined it, as the grants in force name it (a
/// plugin never in force: `-`).
fn gone_actor(trigger: &Trigger, rows: &BTreeMap<String, Vec<u8>>, plugin: &str) -> String {
    match trigger {
        Trigger::Admin(token) => format!("admin:{token}"),
        Trigger::Disk => {
            let in_force: Option<Value> = rows.get(plugin).and_then(|b| serde_json::from_slice(b).ok());
            let file = in_force.as_ref().and_then(|row| row["file"].as_str()).unwrap_or("-");
            file_actor(Path::new(file), current_hash(Path::new(file)))
        }
    }
}

/// What a reload's screening writes (`requested` and `withdrawn` entries,
/// pending rows), and the plugins held.
fn plan_screen(
    trigger: &Trigger,
    next: &[&PluginPolicy],
    loaded: &[PluginPolicy],
    rows: &BTreeMap<String, Vec<u8>>,
) -> Result<(Plan, Vec<Held>), RecordError> {
    let mut batch = Vec::new();
    let mut state = Vec::new();
    let mut held = Vec::new();
    for policy in next {
        let name = policy.name.as_str();
        let value = grants(policy);
        let approved = approved(rows, name)?;
        let grows = growth(name, approved.as_ref(), &value);
        let pending = row(rows, Row::Pending, name)?;
        let actor = actor(trigger, policy);
        if grows.is_empty() {
            if let Some(pending) = pending {
                let change =
                    Change { kind: "withdrawn".into(), item: String::new(), before: Some(pending), after: None };
                batch.push(NewEntry { actor, plugin: Some(name.to_string()), change });
                state.push((Row::Pending.key(name), None));
            }
            continue;
        }
        let items = shown_items(&grows);
        // The version it keeps must itself be within the approved grants,
        // and keep nothing the new policy takes away.
        let loaded = loaded.iter().find(|p| p.name == name).map(grants);
        let beyond = loaded.as_ref().map(|l| growth(name, approved.as_ref(), l)).filter(|g| !g.is_empty());
        let narrows = loaded.as_ref().map(|l| narrowing(name, l, &value)).filter(|n| !n.is_empty());
        let unload = beyond.is_some() || narrows.is_some();
        let kept = match (&beyond, &narrows) {
            (Some(grows), _) => format!(
                "its loaded version is unloaded: it grows beyond the approved grants too ({})",
                shown_items(grows)
            ),
            (None, Some(narrows)) => format!(
                "its loaded version is unloaded: it still has what the policy takes away ({})",
                shown_items(narrows)
            ),
            (None, None) => "the loaded version, if any, stays".to_string(),
        };
        if row(rows, Row::Rejected, name)?.as_ref() == Some(&value) {
            let reason = format!(
                "its grants were rejected (they would grow: {items}); {kept} until the policy or the manifest \
                 asks for something else"
            );
            held.push(Held { plugin: name.to_string(), reason, unload });
            continue;
        }
        let reason = format!(
            "waiting for approval: its grants would grow ({items}); {kept}; `gatehouse grants approve {name}` \
             or POST /admin/approvals/{name}"
        );
        held.push(Held { plugin: name.to_string(), reason, unload });
        if pending.as_ref() != Some(&value) {
            let grows = bounded(name, grows, approved.as_ref(), Some(&value));
            batch.extend(grows.into_iter().map(|change| entry(&actor, change, Some("requested"))));
            let bytes = canonical::to_vec(&value).map_err(|_| RecordError::State(name.to_string()))?;
            state.push((Row::Pending.key(name), Some(bytes)));
            // A new request supersedes a rejected one.
            state.push((Row::Rejected.key(name), None));
        }
    }
    // A request whose plugin no longer has a policy is withdrawn, so that it
    // cannot be approved for a plugin added back later.
    let asked: std::collections::BTreeSet<&str> = next.iter().map(|p| p.name.as_str()).collect();
    for (key, bytes) in rows {
        let Some((Row::Pending, plugin)) = Row::parse(key).filter(|(_, plugin)| !asked.contains(plugin)) else {
            continue;
        };
        let pending: Value = serde_json::from_slice(bytes).map_err(|_| RecordError::State(plugin.to_string()))?;
        let actor = gone_actor(trigger, rows, plugin);
        let change = Change { kind: "withdrawn".into(), item: String::new(), before: Some(pending), after: None };
        batch.push(NewEntry { actor, plugin: Some(plugin.to_string()), change });
        state.push((key.clone(), None));
    }
    if batch.len() > MAX_BATCH {
        return Err(RecordError::TooMany(batch.len()));
    }
    Ok(((batch, state), held))
}

/// The entry and rows of a decision on `plugin`'s pending grants.
fn plan_decision(
    plugin: &str,
    decision: Decision,
    actor: &str,
    reviewed: Option<&str>,
    rows: &BTreeMap<String, Vec<u8>>,
) -> Result<Plan, RecordError> {
    let pending = row(rows, Row::Pending, plugin)?.ok_or_else(|| RecordError::NotPending(plugin.to_string()))?;
    if let Some(reviewed) = reviewed
        && !reviewed.eq_ignore_ascii_case(&super::approval::digest(&pending))
    {
        let shown = crate::guest_text::escape(reviewed, crate::guest_text::SHORT);
        return Err(RecordError::NotReviewed(plugin.to_string(), shown));
    }
    let before = approved(rows, plugin)?;
    let bytes = canonical::to_vec(&pending).map_err(|_| RecordError::State(plugin.to_string()))?;
    let change = Change { kind: decision.kind().into(), item: String::new(), before, after: Some(pending) };
    let entry = NewEntry { actor: actor.to_string(), plugin: Some(plugin.to_string()), change };
    let mut state = vec![(Row::Pending.key(plugin), None)];
    match decision {
        Decision::Approve => {
            state.push((Row::Approved.key(plugin), Some(bytes)));
            state.push((Row::Rejected.key(plugin), None));
        }
        Decision::Reject => state.push((Row::Rejected.key(plugin), Some(bytes))),
    }
    Ok((vec![entry], state))
}

/// Most entries one plugin's changes take in one batch. Past it they are
/// recorded as one change of the whole plugin (item `""`, its grants
/// before and after), so that a policy or a manifest naming thousands of
/// origins cannot fill the batch and fail every other plugin's reload.
pub const MAX_ENTRIES_PER_PLUGIN: usize = 64;

fn bounded(plugin: &str, changes: Vec<GrantChange>, before: Option<&Value>, after: Option<&Value>) -> Vec<GrantChange> {
    if changes.len() <= MAX_ENTRIES_PER_PLUGIN {
        return changes;
    }
    vec![GrantChange {
        plugin: plugin.to_string(),
        item: String::new(),
        before: before.cloned(),
        after: after.cloned(),
    }]
}

/// The items that grow, for a one-line reason: at most five, then a count.
fn shown_items(changes: &[GrantChange]) -> String {
    let mut items: Vec<&str> =
        changes.iter().map(|c| if c.item.is_empty() { "a new plugin" } else { c.item.as_str() }).collect();
    items.dedup();
    let more = items.len().saturating_sub(5);
    let mut shown = items.into_iter().take(5).collect::<Vec<_>>().join(", ");
    if more > 0 {
        shown.push_str(&format!(" and {more} more"));
    }
    shown
}

/// The actor of changes a reload makes to `policy`'s grants.
fn actor(trigger: &Trigger, policy: &PluginPolicy) -> String {
    match trigger {
        Trigger::Admin(token) => format!("admin:{token}"),
        Trigger::Disk => file_actor(&policy.file, Some(policy.file_sha256)),
    }
}

/// One grant change as an entry: `kind`, else `added` (no value before),
/// `removed` (none after) or `changed`.
fn entry(actor: &str, change: GrantChange, kind: Option<&str>) -> NewEntry {
    let kind = kind.unwrap_or(change.kind());
    NewEntry {
        actor: actor.to_string(),
        plugin: Some(change.plugin),
        change: Change { kind: kind.into(), item: change.item, before: change.before, after: change.after },
    }
}

/// `file:<path>#sha256:<hex>`, or `file:<path>#absent` when the file is
/// gone. A path too long for the actor field keeps its end, after `…`.
pub fn file_actor(path: &Path, sha256: Option<[u8; 32]>) -> String {
    let suffix = match sha256 {
        Some(digest) => format!("#sha256:{}", hex::encode(digest)),
        None => "#absent".to_string(),
    };
    let room = MAX_ACTOR - "file:".len() - suffix.len();
    let shown = crate::guest_text::escape(&path.to_string_lossy(), crate::guest_text::MESSAGE);
    let shown = if shown.len() <= room {
        shown
    } else {
        let mut cut = shown.len() - (room - "…".len());
        while !shown.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &shown[cut..])
    };
    format!("file:{shown}{suffix}")
}

/// SHA-256 of the file as it is now (for the actor of a removal: the
/// file that defined the plugin may be gone, or say something else now).
fn current_hash(file: &Path) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let bytes = crate::bounded_read::read_regular_file(file, crate::policy::MAX_POLICY_FILE).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// The tree a witness file remembers, if it exists.
fn read_witness(file: &Path) -> Result<Option<(u64, super::merkle::Hash)>, TrailError> {
    let shown = crate::policy::shown(file);
    let bytes = match crate::bounded_read::read_regular_file(file, 256) {
        Ok(bytes) => bytes,
        Err(crate::bounded_read::BoundedReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(AuditError::Store(StoreError(format!("{shown}: {e}"))).into()),
    };
    let malformed = || AuditError::Store(StoreError(format!("{shown}: not `<size> <root in hex>`")));
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (size, root) = text.trim_end().split_once(' ').ok_or_else(malformed)?;
    let size = size.parse::<u64>().map_err(|_| malformed())?;
    let root: super::merkle::Hash = hex::decode(root).ok().and_then(|r| r.try_into().ok()).ok_or_else(malformed)?;
    Ok(Some((size, root)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_actors_fit_the_actor_field_and_keep_the_end_of_the_path() {
        let short = file_actor(Path::new("/etc/gatehouse/policies/a.toml"), Some([0xab; 32]));
        assert_eq!(short, format!("file:/etc/gatehouse/policies/a.toml#sha256:{}", "ab".repeat(32)));
        let long = PathBuf::from(format!("/{}/é/policy.toml", "d".repeat(400)));
        let actor = file_actor(&long, Some([1; 32]));
        assert!(actor.len() <= MAX_ACTOR, "{}", actor.len());
        assert!(actor.starts_with("file:…") && actor.contains("/é/policy.toml#sha256:"), "{actor}");
        assert_eq!(file_actor(Path::new("gone.toml"), None), "file:gone.toml#absent");
        let forged = file_actor(Path::new("a\nb.toml"), None);
        assert!(!forged.contains('\n'), "{forged}");
    }

    /// A sidecar remembers the tree it saw outside the store
    /// ([`WITNESS_FILE`]): reopened on a store rolled back to an older copy
    /// (a backup of the file alone restored), it refuses; a malformed
    /// memory is an error, not ignored; without one, the store opens and is
    /// remembered anew.
    #[test]
    fn a_store_rolled_back_behind_the_remembered_tree_is_refused_at_open() {
        let data = tempfile::tempdir().unwrap();
        let settings = AuditSettings {
            enabled: true,
            key: data.path().join("audit/key"),
            origin: Some("witness.test/log".into()),
            require_approval: false,
            database: None,
        };
        let (witness, store) = (data.path().join(WITNESS_FILE), data.path().join(STORE_FILE));
        let open = || AuditTrail::open(data.path(), &settings).unwrap().remembering(witness.clone());
        let entry = |item: &str| NewEntry {
            actor: "test".into(),
            plugin: Some("p".into()),
            change: Change { kind: "added".into(), item: item.into(), before: None, after: Some(json!(1)) },
        };
        open().unwrap().append(|_| Ok((vec![entry("a")], Vec::new()))).unwrap();
        let older = std::fs::read(&store).unwrap();
        open().unwrap().append(|_| Ok((vec![entry("b")], Vec::new()))).unwrap();
        assert!(std::fs::read_to_string(&witness).unwrap().starts_with("2 "));

        std::fs::write(&store, &older).unwrap();
        let refused = open().unwrap_err().to_string();
        assert!(
            refused.contains("does not extend the log of 2 entries") && refused.contains("audit/seen"),
            "{refused}"
        );
        std::fs::write(&witness, "two 00").unwrap();
        assert!(open().unwrap_err().to_string().contains("not `<size> <root in hex>`"));
        // Unreadable is not absent: a symbolic link to itself does not
        // make the check go away.
        std::fs::remove_file(&witness).unwrap();
        std::os::unix::fs::symlink(&witness, &witness).unwrap();
        assert!(open().is_err(), "a witness that cannot be read was taken as none");
        std::fs::remove_file(&witness).unwrap();
        open().unwrap();
        assert!(std::fs::read_to_string(&witness).unwrap().starts_with("1 "));
    }

    #[test]
    fn the_default_origin_is_a_valid_key_name() {
        let origin = default_origin();
        assert!(origin.starts_with("gatehouse/"), "{origin}");
        assert!(super::super::note::check_name(&origin).is_ok(), "{origin}");
    }
}
