//! Crash safety: a child process writes through the group-commit writer
//! and prints each write it got an answer for; it is killed with SIGKILL
//! at a random point, several rounds over one file. After each kill the
//! store must hold every acknowledged write, and usage must equal a full
//! scan.
//!
//! The child is this test binary itself, running the ignored test
//! `crash_child` with the file named in an environment variable.
//!
//! SIGKILL ends the process, not the machine: what the kernel already
//! holds survives it, so this checks that nothing is answered before its
//! transaction is committed and that usage stays exact, not the fsync
//! itself (that is redb's `Durability::Immediate`). Checked against the
//! bug it exists for: with answers sent before the commit, 4 runs in 5
//! failed at 10 rounds; it runs 20.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{Bucket, KvBackend, RedbBackend};

use super::suite::{assert_usage_exact, bucket, full_scan};

const CHILD_FILE: &str = "GATEHOUSE_KV_CRASH_FILE";
const CHILD_ROUND: &str = "GATEHOUSE_KV_CRASH_ROUND";
const TASKS: usize = 16;
const ROUNDS: u32 = 20;

const QUOTA: Quota = Quota { max_keys: 10_000_000, max_bytes: 1 << 36, max_key: 256, max_value: 4096 };

fn durable() -> Bucket {
    bucket("crash", "default", QUOTA, Durability::Immediate)
}

fn relaxed() -> Bucket {
    bucket("crash", "cache", QUOTA, Durability::Relaxed)
}

fn value_of(key: &str) -> Vec<u8> {
    key.as_bytes().repeat(7)
}

#[test]
#[ignore = "the child process of kv_acknowledged_writes_survive_sigkill"]
fn crash_child() {
    let (Some(file), Some(round)) = (std::env::var_os(CHILD_FILE), std::env::var_os(CHILD_ROUND)) else {
        return;
    };
    let round = round.into_string().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let backend = Arc::new(RedbBackend::open(file.as_ref()).unwrap());
        println_flush("READY");
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (backend, round) = (Arc::clone(&backend), round.clone());
                tokio::spawn(async move {
                    let (durable, relaxed) = (durable(), relaxed());
                    for i in 0.. {
                        let key = format!("r{round}-t{t}-{i}");
                        backend.set(&durable, key.clone(), value_of(&key)).await.unwrap();
                        println_flush(&format!("S {key}"));
                        let n = backend.increment(&durable, format!("counter-t{t}"), 1).await.unwrap();
                        println_flush(&format!("I {t} {n}"));
                        // Relaxed writes may be lost; they must never break usage.
                        backend.set(&relaxed, format!("{key}-r"), vec![1; i % 50]).await.unwrap();
                        if i % 4 == 3 {
                            backend.delete(&durable, key.clone()).await.unwrap();
                            println_flush(&format!("D {key}"));
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

fn println_flush(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// A small xorshift, seeded from the clock (the seed is printed).
struct Random(u64);

impl Random {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn kv_acknowledged_writes_survive_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.redb");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut random = Random(seed);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // Everything acknowledged so far, over all rounds.
    let mut set: BTreeSet<String> = BTreeSet::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut counters: BTreeMap<usize, u64> = BTreeMap::new();
    // Keys whose delete may have been in flight at a kill: present or absent.
    let mut maybe_deleted: BTreeSet<String> = BTreeSet::new();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kv::crash::crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_FILE, &file)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test kv::crash::crash_child ... " before it.
                if line.ends_with("READY") {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        ready_rx.recv_timeout(Duration::from_secs(20)).expect("the child opened the store");
        std::thread::sleep(Duration::from_millis(50 + random.next(450)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();

        // The last key each task wrote this round.
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        for line in &lines {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("S"), Some(key), None) => {
                    set.insert(key.to_string());
                    let task: usize = key.split('-').nth(1).unwrap()[1..].parse().unwrap();
                    last.insert(task, key.to_string());
                }
                (Some("D"), Some(key), None) => {
                    deleted.insert(key.to_string());
                }
                (Some("I"), Some(task), Some(n)) => {
                    counters.insert(task.parse().unwrap(), n.parse().unwrap());
                }
                _ => continue,
            }
            total_acks += 1;
        }

        // A task killed between the answer to a set and the answer to the
        // delete that follows it (every fourth key) may have deleted it.
        for key in last.values() {
            let i: u64 = key.rsplit('-').next().unwrap().parse().unwrap();
            if i % 4 == 3 && !deleted.contains(key) {
                maybe_deleted.insert(key.clone());
            }
        }

        rt.block_on(async {
            let backend = RedbBackend::open(&file).expect("the store opens after a SIGKILL");
            let (stored, _) = full_scan(&backend, &durable()).await;
            for key in &set {
                if deleted.contains(key) {
                    assert!(!stored.contains_key(key), "round {round}: acknowledged delete of {key} was lost");
                } else {
                    match stored.get(key) {
                        Some(value) => assert_eq!(value, &value_of(key), "round {round}: {key} has a wrong value"),
                        None => {
                            assert!(maybe_deleted.contains(key), "round {round}: acknowledged write {key} was lost")
                        }
                    }
                }
            }
            for (task, acked) in &counters {
                let value = stored.get(&format!("counter-t{task}")).expect("counter present");
                let value: u64 = std::str::from_utf8(value).unwrap().parse().unwrap();
                assert!(
                    value == *acked || value == acked + 1,
                    "round {round}: counter {task} is {value}, acked {acked}"
                );
            }
            assert_usage_exact(&backend, &durable()).await;
            assert_usage_exact(&backend, &relaxed()).await;
            let report = backend.usage(&durable()).await.unwrap();
            let relaxed_usage = backend.usage(&relaxed()).await.unwrap().bucket;
            assert_eq!(report.plugin.keys, report.bucket.keys + relaxed_usage.keys);
            assert_eq!(report.plugin.bytes, report.bucket.bytes + relaxed_usage.bytes);
        });
    }
    eprintln!("{ROUNDS} rounds, {total_acks} acknowledged writes checked in {:?}", started.elapsed());
    assert!(total_acks > 100 * ROUNDS as usize / 10, "too few writes to mean anything: {total_acks}");
}

const RELAXED_FILE: &str = "GATEHOUSE_KV_RELAXED_FILE";
const RELAXED_WRITES: usize = 50;

#[test]
#[ignore = "the child process of relaxed_writes_are_on_disk_a_flush_interval_after_the_last"]
fn relaxed_child() {
    let Some(file) = std::env::var_os(RELAXED_FILE) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let backend = RedbBackend::open(file.as_ref()).unwrap();
        for i in 0..RELAXED_WRITES {
            backend.set(&relaxed(), format!("k{i}"), vec![1; 100]).await.unwrap();
        }
        println_flush("ACKED");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// The README's promise for relaxed buckets: a crash loses at most the
/// writes of the last `RELAXED_FLUSH` (1 s). Once writes stop, the writer
/// makes them durable within that: a child process writes 50 relaxed
/// values, is idle 2 s, and is killed (SIGKILL); all 50 are there. (redb
/// keeps no non-durable commit across a kill: without the writer's flush
/// all 50 are lost.)
#[test]
fn relaxed_writes_are_on_disk_a_flush_interval_after_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kv::crash::relaxed_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(RELAXED_FILE, &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let acked = stdout.lines().map_while(Result::ok).any(|line| line.ends_with("ACKED"));
    assert!(acked, "the child did not write");
    std::thread::sleep(gatehouse::services::kv::redb::RELAXED_FLUSH + Duration::from_secs(1));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let backend = RedbBackend::open(&file).expect("the store opens after a SIGKILL");
        let (stored, _) = full_scan(&backend, &relaxed()).await;
        assert_eq!(stored.len(), RELAXED_WRITES, "relaxed writes acknowledged over a second before the kill were lost");
    });
}
