//! The independent verifier (`tools/verify_audit.py`, Python standard
//! library + `cryptography`) agrees with ours on every export case of the
//! tamper matrix: the same location and reason, or both accept.
//!
//! The verifier runs in a virtualenv under `target/audit-venv`, created
//! here when missing (`./dev test` creates it first).

use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse::audit::{AuditLog, NoteSigner};

use super::tamper::{export_cases, rust_verdict};
use super::{ORIGIN, attacker_key, change, join, key};

fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = root.join("target/audit-venv");
    let python = venv.join("bin/python");
    let ready =
        |p: &Path| Command::new(p).args(["-c", "import cryptography"]).output().is_ok_and(|o| o.status.success());
    // Tests run in parallel processes: one creates the venv under an
    // exclusive file lock, the others wait on it. The kernel releases the
    // lock with its process, so a run cancelled mid-install (nextest's
    // fail-fast kills tests) leaves nothing that blocks the next one.
    if !ready(&python) {
        std::fs::create_dir_all(root.join("target")).unwrap();
        let lock = std::fs::File::create(root.join("target/audit-venv.flock")).unwrap();
        lock.lock().unwrap();
        if !ready(&python) {
            let _ = std::fs::remove_dir_all(&venv);
            let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap();
            assert!(status.success(), "python3 -m venv failed");
            let status = Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--requirement"])
                .arg(root.join("tools/requirements.txt"))
                .status()
                .unwrap();
            assert!(status.success(), "pip install of the verifier's requirements failed");
        }
    }
    python
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("tools/verify_audit.py")
}

/// Runs the Python verifier: (exit code, first line of its output).
fn python_verdict(python: &Path, dir: &Path, export: &[u8], vkeys: &[String], held: Option<&str>) -> (i32, String) {
    let file = dir.join("export.jsonl");
    std::fs::write(&file, export).unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(script()).arg(&file);
    for vkey in vkeys {
        cmd.arg("--vkey").arg(vkey);
    }
    if let Some(held) = held {
        let held_file = dir.join("held.checkpoint");
        std::fs::write(&held_file, held).unwrap();
        cmd.arg("--held").arg(held_file);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.stderr.is_empty(), "the verifier crashed: {}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap(), stdout.lines().next().unwrap_or_default().to_string())
}

#[test]
fn the_python_verifier_agrees_on_every_export_case() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let vkeys = [key().verifier().to_vkey()];
    for case in export_cases(dir.path()) {
        let (code, line) = python_verdict(&python, dir.path(), &join(&case.lines), &vkeys, case.held.as_deref());
        match rust_verdict(&case) {
            Ok(summary) => {
                assert_eq!(code, 0, "{}: python says {line}", case.name);
                assert!(line.starts_with(&format!("ok: {} entries", summary.size)), "{}: {line}", case.name);
            }
            Err(e) => {
                assert_eq!(code, 1, "{}: python says {line}", case.name);
                let want = format!("{}: {}:", e.at, e.problem.code());
                assert!(line.starts_with(&want), "{}: rust says {want}, python says {line}", case.name);
            }
        }
    }
}

/// Key rotation: checkpoints signed by the old and the new key verify
/// with either alone, in both verifiers; a stranger's key verifies none.
#[test]
fn the_python_verifier_follows_a_key_rotation() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let new = NoteSigner::from_seed(ORIGIN, [43; 32]).unwrap();
    let log = AuditLog::open(&dir.path().join("log.redb"), ORIGIN, vec![key(), new]).unwrap();
    for i in 0..3 {
        log.append(&[change(i)]).unwrap();
    }
    let mut export = Vec::new();
    log.export(&mut export).unwrap();
    let new = NoteSigner::from_seed(ORIGIN, [43; 32]).unwrap();
    for trusted in [vec![key().verifier()], vec![new.verifier()]] {
        let vkeys: Vec<String> = trusted.iter().map(|v| v.to_vkey()).collect();
        assert!(log.verify(&trusted, None).unwrap().is_ok());
        let (code, line) = python_verdict(&python, dir.path(), &export, &vkeys, None);
        assert_eq!((code, line.as_str()), (0, line.as_str()));
        assert!(line.starts_with("ok: 3 entries"), "{line}");
    }
    let stranger = [attacker_key().verifier().to_vkey()];
    let (code, line) = python_verdict(&python, dir.path(), &export, &stranger, None);
    assert_eq!((code, line.as_str()), (1, "checkpoint 1: untrusted: no trusted key signed it"));
}
