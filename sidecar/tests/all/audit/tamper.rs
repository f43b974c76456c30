//! The tamper matrix. Attacks tried, each asserting the entry (or
//! checkpoint) reported and the reason:
//! - on an export: edit each field of an entry (first, middle, last),
//!   make an entry non-canonical, delete one, swap two, insert a forged
//!   one (middle and end), truncate the tail (detected against a held
//!   checkpoint), drop the latest checkpoints (an old checkpoint
//!   replayed), replay an old checkpoint line out of order, forge a
//!   checkpoint with another key, edit a signed checkpoint, and present a
//!   fork (a log rolled back and appended again) to an auditor holding a
//!   checkpoint from before;
//! - on the store: the same edits to the redb tables, a rollback of the
//!   file followed by new appends (a fork, found with a consistency proof
//!   from the held checkpoint), and the log's own refusal to sign over a
//!   store changed behind its back.
//!
//! `python.rs` runs the independent verifier on the same export cases.

use std::path::Path;

use gatehouse::audit::export;
use gatehouse::audit::merkle;
use gatehouse::audit::store::{CHECKPOINTS, ENTRIES, NODES};
use gatehouse::audit::{AuditError, AuditLog, Checkpoint, Location, Problem, Summary, VerifyError, canonical, verify};
use serde_json::{Value, json};

use super::{ORIGIN, attacker_key, change, export_lines, join, key, log_of};

/// One tampered export and what verifying it must report.
pub struct Case {
    /// What was done.
    pub name: String,
    /// The export's lines.
    pub lines: Vec<Vec<u8>>,
    /// The checkpoint the auditor holds.
    pub held: Option<String>,
    /// `None`: it verifies.
    pub expect: Option<(Location, Problem)>,
}

/// A change to one entry's JSON.
type Edit = fn(&mut Value);

/// Entry lines are the ones not starting with `{"checkpoint":`.
fn entry_positions(lines: &[Vec<u8>]) -> Vec<usize> {
    (0..lines.len()).filter(|&i| !lines[i].starts_with(b"{\"checkpoint\":")).collect()
}

fn checkpoint_position(lines: &[Vec<u8>], size: u64) -> usize {
    (0..lines.len())
        .find(|&i| {
            lines[i].starts_with(b"{\"checkpoint\":")
                && export::read(&mut &join(&lines[i..=i])[..]).unwrap().checkpoints[0].contains(&format!("\n{size}\n"))
        })
        .unwrap()
}

/// Re-encodes entry `seq` after `edit`, canonically: what a careful
/// attacker writes.
fn edit_entry(lines: &mut [Vec<u8>], seq: usize, edit: impl FnOnce(&mut Value)) {
    let at = entry_positions(lines)[seq];
    let mut value: Value = serde_json::from_slice(&lines[at]).unwrap();
    edit(&mut value);
    lines[at] = canonical::to_vec(&value).unwrap();
}

fn checkpoint_line(note: &str) -> Vec<u8> {
    let mut line = b"{\"checkpoint\":".to_vec();
    canonical::string(note, &mut line);
    line.push(b'}');
    line
}

/// The export cases, from a log of 8 single-entry batches (and a fork of it).
pub fn export_cases(dir: &Path) -> Vec<Case> {
    let (log, cps) = log_of(&dir.join("cases.redb"), 8);
    let good = export_lines(&log);
    let mut cases = vec![
        Case { name: "untouched".into(), lines: good.clone(), held: None, expect: None },
        Case {
            name: "untouched, held checkpoint 5".into(),
            lines: good.clone(),
            held: Some(cps[4].clone()),
            expect: None,
        },
    ];
    let mut case =
        |name: &str, held: Option<String>, expect: Option<(Location, Problem)>, f: &dyn Fn(&mut Vec<Vec<u8>>)| {
            let mut lines = good.clone();
            f(&mut lines);
            cases.push(Case { name: name.into(), lines, held, expect });
        };
    let fields: [(&str, Edit); 7] = [
        ("time", |v| v["time"] = json!("2030-01-01T00:00:00Z")),
        ("actor", |v| v["actor"] = json!("admin:someone-else")),
        ("plugin", |v| v["plugin"] = Value::Null),
        ("change.kind", |v| v["change"]["kind"] = json!("removed")),
        ("change.item", |v| v["change"]["item"] = json!("http.allow")),
        ("change.before", |v| v["change"]["before"] = json!({"value": -1})),
        ("change.after", |v| v["change"]["after"] = json!({"value": {"max_keys": 1_000_000}})),
    ];
    for (field, f) in fields {
        for (seq, expect) in [(0, Problem::HashMismatch), (3, Problem::HashMismatch), (7, Problem::RootMismatch)] {
            case(&format!("edit {field} of entry {seq}"), None, Some((Location::Entry(seq as u64), expect)), &|l| {
                edit_entry(l, seq, f)
            });
        }
    }
    // Digits that are digits only outside ASCII (an outside review: the
    // Python verifier's `\d` took them), and a held note with CRLF line
    // ends (Python read it in text mode and accepted it).
    case("Arabic-Indic digits in the time of entry 3", None, Some((Location::Entry(3), Problem::Malformed)), &|l| {
        edit_entry(l, 3, |v| v["time"] = json!("\u{662}\u{660}\u{662}\u{666}-01-01T00:00:00Z"))
    });
    case(
        "fullwidth fraction digit in the time of entry 3",
        None,
        Some((Location::Entry(3), Problem::Malformed)),
        &|l| edit_entry(l, 3, |v| v["time"] = json!("2026-01-01T00:00:00.\u{ff11}Z")),
    );
    case(
        "held checkpoint 5 with CRLF line ends",
        Some(cps[4].replace('\n', "\r\n")),
        Some((Location::Held, Problem::CheckpointMalformed)),
        &|_| {},
    );
    case("edit seq of entry 3", None, Some((Location::Entry(3), Problem::Sequence)), &|l| {
        edit_entry(l, 3, |v| v["seq"] = json!(4))
    });
    for seq in [0, 3, 7] {
        case(
            &format!("edit prev of entry {seq}"),
            None,
            Some((Location::Entry(seq as u64), Problem::PrevMismatch)),
            &|l| edit_entry(l, seq, |v| v["prev"] = json!("ab".repeat(32))),
        );
    }
    case("edit v of entry 3", None, Some((Location::Entry(3), Problem::Malformed)), &|l| {
        edit_entry(l, 3, |v| v["v"] = json!(2))
    });
    case("entry 3 not canonical", None, Some((Location::Entry(3), Problem::Malformed)), &|l| {
        let at = entry_positions(l)[3];
        l[at] = String::from_utf8(l[at].clone()).unwrap().replacen(':', ": ", 1).into_bytes();
    });
    case("entry 3 as an empty line", None, Some((Location::Entry(3), Problem::Malformed)), &|l| {
        let at = entry_positions(l)[3];
        l[at].clear();
    });
    case("delete entry 3", None, Some((Location::Entry(3), Problem::Sequence)), &|l| {
        let at = entry_positions(l)[3];
        l.remove(at);
    });
    case("swap entries 2 and 3", None, Some((Location::Entry(2), Problem::Sequence)), &|l| {
        let at = entry_positions(l);
        l.swap(at[2], at[3]);
    });
    let forged = |seq: u64, prev: merkle::Hash| {
        let mut e = gatehouse::audit::Entry::record(seq, "2026-12-02T00:00:00Z".into(), prev, &change(99)).unwrap();
        e.actor = "admin:attacker".into();
        e.encode().unwrap()
    };
    case("insert a forged entry 3", None, Some((Location::Entry(3), Problem::RootMismatch)), &|l| {
        let at = entry_positions(l);
        let prev = merkle::leaf_hash(&l[at[2]]);
        l.insert(at[3], forged(3, prev));
    });
    case("append a forged entry 8", None, Some((Location::Entry(8), Problem::Unsigned)), &|l| {
        let at = entry_positions(l);
        let prev = merkle::leaf_hash(&l[at[7]]);
        l.push(forged(8, prev));
    });
    // Truncation: entries 6 and 7 and their checkpoints gone. Undetectable
    // alone (it is a valid older log); detected against a held checkpoint.
    let truncate = |l: &mut Vec<Vec<u8>>| {
        let cut = entry_positions(l)[6];
        l.truncate(cut);
    };
    case("truncate the tail", None, None, &truncate);
    case(
        "truncate the tail, held checkpoint 8",
        Some(cps[7].clone()),
        Some((Location::Entry(6), Problem::Truncated)),
        &truncate,
    );
    case(
        "truncate the tail, held checkpoint 7",
        Some(cps[6].clone()),
        Some((Location::Entry(6), Problem::Truncated)),
        &truncate,
    );
    case("truncate entries, keep checkpoints", None, Some((Location::Entry(6), Problem::Truncated)), &|l| {
        let at = entry_positions(l);
        l.remove(at[7]);
        l.remove(at[6]);
    });
    case(
        "drop the latest checkpoints (an old one replayed)",
        None,
        Some((Location::Entry(6), Problem::Unsigned)),
        &|l| {
            let (c7, c8) = (checkpoint_position(l, 7), checkpoint_position(l, 8));
            l.remove(c8);
            l.remove(c7);
        },
    );
    let old = checkpoint_line(&cps[5]);
    case("replay checkpoint 6 in place of 8", None, Some((Location::Checkpoint(6), Problem::CheckpointOrder)), &|l| {
        let c8 = checkpoint_position(l, 8);
        l[c8] = old.clone();
    });
    // Entry 7 edited and checkpoint 8 re-signed by an attacker's key.
    let forged_cp = |l: &mut Vec<Vec<u8>>| {
        edit_entry(l, 7, |v| v["actor"] = json!("admin:attacker"));
        let entries: Vec<Vec<u8>> = entry_positions(l).iter().map(|&i| l[i].clone()).collect();
        let mut tree = merkle::Tree::new();
        for e in &entries {
            tree.push(merkle::leaf_hash(e));
        }
        let cp = Checkpoint { origin: ORIGIN.into(), size: 8, root: merkle::root(&tree, 8).unwrap(), grants: None };
        let c8 = checkpoint_position(l, 8);
        l[c8] = checkpoint_line(&cp.sign(&[&attacker_key()]).unwrap());
    };
    case("checkpoint 8 forged with another key", None, Some((Location::Checkpoint(8), Problem::Untrusted)), &forged_cp);
    let edited_note = checkpoint_line(&cps[7].replacen("\n8\n", "\n9\n", 1));
    case("checkpoint 8's text edited", None, Some((Location::Checkpoint(9), Problem::BadSignature)), &|l| {
        let c8 = checkpoint_position(l, 8);
        l[c8] = edited_note.clone();
    });

    // A fork: the log rolled back to 4 entries, then 4 other entries
    // appended and signed by the log's key. The auditor holds checkpoint 6
    // (or 8) of the original history.
    drop(log);
    let fork_path = dir.join("fork.redb");
    {
        let (_, _) = log_of(&fork_path, 4);
    }
    let fork = AuditLog::open(&fork_path, ORIGIN, vec![key()]).unwrap();
    for i in 0..4 {
        fork.append(&[change(100 + i)]).unwrap();
    }
    let fork_lines = export_lines(&fork);
    cases.push(Case { name: "fork, nothing held".into(), lines: fork_lines.clone(), held: None, expect: None });
    for held in [5, 7] {
        cases.push(Case {
            name: format!("fork, held checkpoint {}", held + 1),
            lines: fork_lines.clone(),
            held: Some(cps[held].clone()),
            expect: Some((Location::Held, Problem::Fork)),
        });
    }
    cases
}

/// What the Rust verifier says of a case.
pub fn rust_verdict(case: &Case) -> Result<Summary, VerifyError> {
    let export = export::read(&mut &join(&case.lines)[..]).unwrap();
    verify(&export.entries, &export.checkpoints, &[key().verifier()], case.held.as_deref())
}

#[test]
fn every_tampering_of_an_export_is_named_with_its_entry_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = export_cases(dir.path());
    assert!(cases.len() > 35, "{}", cases.len());
    for case in &cases {
        let verdict = rust_verdict(case);
        match (&case.expect, &verdict) {
            (None, Ok(_)) => {}
            (Some((at, problem)), Err(e)) if e.at == *at && e.problem == *problem => {}
            _ => panic!("{}: expected {:?}, got {verdict:?}", case.name, case.expect),
        }
    }
}

fn edit_store(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

fn store_verdict(path: &Path, held: Option<&str>) -> Result<Summary, VerifyError> {
    let log = AuditLog::open(path, ORIGIN, vec![key()]).unwrap();
    log.verify(&[key().verifier()], held).unwrap()
}

fn assert_verdict(verdict: Result<Summary, VerifyError>, at: Location, problem: Problem) {
    match verdict {
        Err(e) if e.at == at && e.problem == problem => {}
        other => panic!("expected {at}: {}, got {other:?}", problem.code()),
    }
}

fn fresh(dir: &Path, name: &str) -> (std::path::PathBuf, Vec<String>) {
    let path = dir.join(name);
    let (_, cps) = log_of(&path, 8);
    (path, cps)
}

fn entry_bytes(txn: &redb::WriteTransaction, seq: u64) -> Vec<u8> {
    use redb::ReadableTable;
    txn.open_table(ENTRIES).unwrap().get(seq).unwrap().unwrap().value().to_vec()
}

#[test]
fn every_tampering_of_the_store_is_named_with_its_entry_and_reason() {
    let dir = tempfile::tempdir().unwrap();

    let (path, _) = fresh(dir.path(), "edit.redb");
    edit_store(&path, |txn| {
        let mut v: Value = serde_json::from_slice(&entry_bytes(txn, 3)).unwrap();
        v["actor"] = json!("admin:attacker");
        txn.open_table(ENTRIES).unwrap().insert(3, canonical::to_vec(&v).unwrap().as_slice()).unwrap();
    });
    assert_verdict(store_verdict(&path, None), Location::Entry(3), Problem::HashMismatch);

    let (path, _) = fresh(dir.path(), "delete.redb");
    edit_store(&path, |txn| {
        txn.open_table(ENTRIES).unwrap().remove(3).unwrap();
    });
    assert_verdict(store_verdict(&path, None), Location::Entry(3), Problem::Sequence);

    let (path, _) = fresh(dir.path(), "swap.redb");
    edit_store(&path, |txn| {
        let (two, three) = (entry_bytes(txn, 2), entry_bytes(txn, 3));
        let mut t = txn.open_table(ENTRIES).unwrap();
        t.insert(2, three.as_slice()).unwrap();
        t.insert(3, two.as_slice()).unwrap();
    });
    assert_verdict(store_verdict(&path, None), Location::Entry(2), Problem::Sequence);

    let (path, _) = fresh(dir.path(), "insert.redb");
    edit_store(&path, |txn| {
        let rows: Vec<Vec<u8>> = (3..8).map(|s| entry_bytes(txn, s)).collect();
        let prev = merkle::leaf_hash(&entry_bytes(txn, 2));
        let mut forged = gatehouse::audit::Entry::record(3, "2026-12-02T00:00:00Z".into(), prev, &change(99)).unwrap();
        forged.actor = "admin:attacker".into();
        let mut t = txn.open_table(ENTRIES).unwrap();
        t.insert(3, forged.encode().unwrap().as_slice()).unwrap();
        for (i, row) in rows.iter().enumerate() {
            t.insert(4 + i as u64, row.as_slice()).unwrap();
        }
    });
    assert_verdict(store_verdict(&path, None), Location::Entry(3), Problem::RootMismatch);

    // Truncation with its checkpoints: a valid older log, caught by the
    // held checkpoint. The log itself signs nothing over it that
    // contradicts what it still has, but the auditor's checkpoint does.
    let (path, cps) = fresh(dir.path(), "truncate.redb");
    edit_store(&path, |txn| {
        let (mut e, mut c) = (txn.open_table(ENTRIES).unwrap(), txn.open_table(CHECKPOINTS).unwrap());
        for seq in 6..8 {
            e.remove(seq).unwrap();
            c.remove(seq + 1).unwrap();
        }
    });
    assert!(store_verdict(&path, None).is_ok());
    assert_verdict(store_verdict(&path, Some(&cps[7])), Location::Entry(6), Problem::Truncated);

    // The latest checkpoints dropped (an old checkpoint replayed as the
    // latest): the entries after it are unsigned, and the log refuses to
    // sign anything over them.
    let (path, _) = fresh(dir.path(), "replay.redb");
    edit_store(&path, |txn| {
        let mut c = txn.open_table(CHECKPOINTS).unwrap();
        c.remove(8).unwrap();
        c.remove(7).unwrap();
    });
    assert_verdict(store_verdict(&path, None), Location::Entry(6), Problem::Unsigned);
    let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
    assert!(matches!(log.append(&[change(8)]), Err(AuditError::Inconsistent(_))));
    drop(log);

    // A checkpoint forged with another key, written into the store.
    let (path, _) = fresh(dir.path(), "forged-cp.redb");
    edit_store(&path, |txn| {
        let cp = Checkpoint { origin: ORIGIN.into(), size: 8, root: [9; 32], grants: None };
        txn.open_table(CHECKPOINTS).unwrap().insert(8, cp.sign(&[&attacker_key()]).unwrap().as_str()).unwrap();
    });
    assert_verdict(store_verdict(&path, None), Location::Checkpoint(8), Problem::Untrusted);
    let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
    assert!(matches!(log.append(&[change(8)]), Err(AuditError::Inconsistent(_))));
}

/// Attacks on the writer itself: the stored tree nodes the root of the
/// last checkpoint is computed from (here the one node of a complete tree
/// of 8), the last leaf hash, or the last entry changed behind the log's
/// back. The log refuses to sign a checkpoint (and writes nothing) rather
/// than vouch for them. (A lower node the root does not read is not
/// checked at append time, which costs O(log n) reads; a proof built on it
/// fails at the auditor's end, and verify recomputes every node.)
#[test]
fn the_log_refuses_to_sign_over_a_store_changed_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    for (name, node) in [("root-node.redb", (3u8, 0u64)), ("last-leaf.redb", (0, 7))] {
        let (path, _) = fresh(dir.path(), name);
        edit_store(&path, |txn| {
            txn.open_table(NODES).unwrap().insert(node, [7u8; 32].as_slice()).unwrap();
        });
        let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
        let error = log.append(&[change(8)]).unwrap_err();
        assert!(matches!(error, AuditError::Inconsistent(_)), "{name}: {error}");
        assert_eq!(log.size().unwrap(), 8);
    }

    let (path, _) = fresh(dir.path(), "last.redb");
    edit_store(&path, |txn| {
        let mut v: Value = serde_json::from_slice(&entry_bytes(txn, 7)).unwrap();
        v["actor"] = json!("admin:attacker");
        txn.open_table(ENTRIES).unwrap().insert(7, canonical::to_vec(&v).unwrap().as_slice()).unwrap();
    });
    let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
    assert!(matches!(log.append(&[change(8)]), Err(AuditError::Inconsistent(_))));
    assert_eq!(log.size().unwrap(), 8);
}

/// What nothing signs but appends and proofs need: the stored tree nodes.
/// An edited or deleted node on the right edge (of 8 entries: the root
/// node), or the whole table
/// emptied, leaves every entry and checkpoint verifying, so the store's
/// snapshot names it (`tree-mismatch`), as `audit verify` prints it. A
/// node off the right edge is not read (O(log n)); the next append or
/// proof through it fails instead.
#[test]
fn a_store_whose_tree_disagrees_with_its_entries_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let judged = |path: &Path| {
        let snapshot = gatehouse::audit::AuditReader::open(path).unwrap().snapshot().unwrap();
        let summary =
            gatehouse::audit::verify(&snapshot.entries, &snapshot.checkpoints, &[key().verifier()], None).unwrap();
        snapshot.store_problem(summary.size, &summary.root)
    };
    let (path, _) = fresh(dir.path(), "intact.redb");
    assert_eq!(judged(&path), None);
    type Edit = fn(&redb::WriteTransaction);
    let edits: [(&str, Edit); 3] = [
        ("the root node edited", |txn| {
            txn.open_table(NODES).unwrap().insert((3u8, 0u64), [7u8; 32].as_slice()).unwrap();
        }),
        ("the root node deleted", |txn| {
            txn.open_table(NODES).unwrap().remove((3u8, 0u64)).unwrap();
        }),
        ("every node deleted", |txn| {
            txn.open_table(NODES).unwrap().retain(|_, _| false).unwrap();
        }),
    ];
    for (name, edit) in edits {
        let (path, _) = fresh(dir.path(), &format!("{}.redb", name.len()));
        edit_store(&path, edit);
        let problem = judged(&path).unwrap_or_else(|| panic!("{name}: not named"));
        assert!(problem.starts_with("tree-mismatch"), "{name}: {problem}");
    }
}

/// The rollback attack on the store: the file is restored from a copy
/// taken at 4 entries and new entries are appended, which the log signs
/// (it cannot know). An auditor holding checkpoint 6 of the first history
/// finds the fork with a consistency proof from it, by our verifier and
/// by `tlog_tiles`.
#[test]
fn a_rolled_back_and_reappended_store_is_a_fork_against_a_held_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let backup = dir.path().join("backup.redb");
    let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
    for i in 0..4 {
        log.append(&[change(i)]).unwrap();
    }
    drop(log);
    std::fs::copy(&path, &backup).unwrap();
    let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
    let mut held = String::new();
    for i in 4..8 {
        let appended = log.append(&[change(i)]).unwrap();
        if appended.size == 6 {
            held = appended.checkpoint;
        }
    }
    drop(log);
    std::fs::copy(&backup, &path).unwrap();
    let log = AuditLog::open(&path, ORIGIN, vec![key()]).unwrap();
    for i in 0..5 {
        log.append(&[change(200 + i)]).unwrap();
    }
    // Alone, the forked log is a valid log.
    assert!(log.verify(&[key().verifier()], None).unwrap().is_ok());
    assert_verdict(log.verify(&[key().verifier()], Some(&held)).unwrap(), Location::Held, Problem::Fork);
    // What an auditor does without reading entries: ask for a consistency
    // proof from the held size and check it against the held root.
    let held_cp = Checkpoint::open(&held, &[key().verifier()]).unwrap();
    let proof = log.consistency(held_cp.size).unwrap();
    let latest = Checkpoint::open(&proof.checkpoint, &[key().verifier()]).unwrap();
    assert!(merkle::verify_consistency(held_cp.size, latest.size, &held_cp.root, &latest.root, &proof.path).is_err());
    let path_t: Vec<tlog_tiles::tlog::Hash> = proof.path.iter().map(|h| tlog_tiles::tlog::Hash(*h)).collect();
    assert!(
        tlog_tiles::tlog::check_tree(
            &path_t,
            latest.size,
            tlog_tiles::tlog::Hash(latest.root),
            held_cp.size,
            tlog_tiles::tlog::Hash(held_cp.root)
        )
        .is_err()
    );
}

/// A log large enough that verify splits its entries over threads (each
/// part at least 4,096 entries): each problem is still named at its own
/// entry, in the part it falls in, and the first one wins. Attacks: an
/// entry edited in the last part, a non-canonical one in the first part
/// and one in the last. (Batches of 1,000, so the problems sit where a
/// checkpoint's range starts: the root mismatch names the same entry.)
#[test]
fn a_large_log_split_over_threads_names_each_problem_at_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("large.redb"), ORIGIN, vec![key()]).unwrap();
    const SIZE: u64 = 12_000;
    for batch in 0..SIZE / 1000 {
        log.append(&(batch * 1000..(batch + 1) * 1000).map(change).collect::<Vec<_>>()).unwrap();
    }
    let verdict = |lines: &[Vec<u8>]| {
        rust_verdict(&Case { name: String::new(), lines: lines.to_vec(), held: None, expect: None })
    };
    let good = export_lines(&log);
    assert_eq!(verdict(&good).unwrap().size, SIZE);

    let mut edited = good.clone();
    edit_entry(&mut edited, 11_000, |v| v["actor"] = json!("admin:someone-else"));
    assert_verdict(verdict(&edited), Location::Entry(11_000), Problem::HashMismatch);

    let spaced = |lines: &mut Vec<Vec<u8>>, seq: usize| {
        let at = entry_positions(lines)[seq];
        lines[at] = String::from_utf8(lines[at].clone()).unwrap().replacen(':', ": ", 1).into_bytes();
    };
    let mut malformed = good.clone();
    spaced(&mut malformed, 10_000);
    assert_verdict(verdict(&malformed), Location::Entry(10_000), Problem::Malformed);
    spaced(&mut malformed, 1_000);
    assert_verdict(verdict(&malformed), Location::Entry(1_000), Problem::Malformed);
    spaced(&mut edited, 10_000);
    assert_verdict(verdict(&edited), Location::Entry(10_000), Problem::Malformed);
}
