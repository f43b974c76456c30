//! `[databases.<alias>]` against a real PostgreSQL: `/readyz`, `/metrics`
//! and the admin API tell which aliases answer. What is tried:
//! - a right URL, a wrong password (from a secret file) and a port where
//!   nothing listens, side by side: only the bad two are named unready, with
//!   their reasons on the admin API only;
//! - plugins keep serving while a database is down;
//! - each database's state is logged once, when it changes, not at every
//!   check;
//! - no password, right or wrong, reaches the log or any answer;
//! - a flood of `/readyz` costs the database at most one connection a
//!   second;
//! - TLS: with `sslmode=verify-full` and the server's CA the database is
//!   reached over TLS; a certificate from another CA, a certificate for
//!   another name, and a plain-text login are each refused;
//! - a hostile server that answers every login and query with thousands of
//!   NOTICE messages carrying a forged log line and ANSI escapes: no forged
//!   line, no escape byte and no flood reach the sidecar's log.

use std::net::TcpListener;

use crate::common::Policies;
use crate::postgres::{TestPostgres, test_ca};
use crate::sidecar::{Sidecar, json, request};

#[test]
fn readiness_names_the_databases_that_do_not_answer_and_never_a_password() {
    let postgres = TestPostgres::start("app", "right-pw-1a2b3c", "orders");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secrets = tempfile::tempdir().unwrap();
    let wrong = secrets.path().join("wrong-url");
    std::fs::write(&wrong, format!("postgres://app:wrong-pw-4d5e6f@127.0.0.1:{}/orders\n", postgres.port)).unwrap();
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let settings = format!(
        "[databases.good]\nurl = {{ env = \"GOOD_URL\" }}\n\
         [databases.wrong]\nurl = {{ file = {:?} }}\n\
         [databases.closed]\nurl = \"postgres://app:closed-pw-7a8b9c@127.0.0.1:{closed}/orders\"\n",
        wrong.display().to_string()
    );
    let sidecar = Sidecar::start_unready(&policies, &settings, &[("GOOD_URL", &postgres.url())]);

    let (status, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (503, "database `closed` unreachable\ndatabase `wrong` unreachable\n")
    );
    assert_eq!(sidecar.invoke("echo", "still serving").2, b"still serving");

    let (status, _, body) = request(&sidecar.admin, "GET", "/admin/databases", &[], b"");
    assert_eq!(status, 200);
    let answer = json(&body);
    let problem = |alias: &str| {
        let entry = answer["databases"].as_array().unwrap().iter().find(|d| d["alias"] == alias).unwrap().clone();
        (entry["up"].as_bool().unwrap(), entry["problem"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(problem("good"), (true, String::new()));
    let (up, why) = problem("wrong");
    assert!(!up && why.contains("password authentication failed for user \"app\""), "{why}");
    let (up, why) = problem("closed");
    assert!(!up && why.contains("Connection refused"), "{why}");

    let metrics = String::from_utf8(sidecar.get(&sidecar.invoke, "/metrics").2).unwrap();
    for series in [
        "gatehouse_database_up{database=\"good\"} 1",
        "gatehouse_database_up{database=\"wrong\"} 0",
        "gatehouse_database_up{database=\"closed\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} not in\n{metrics}");
    }

    // Checks are shared: 50 readiness probes in a row open at most a
    // handful of connections (one per second of the burst, plus the ones
    // before it), never one each.
    let before = connections(&postgres);
    for _ in 0..50 {
        sidecar.get(&sidecar.invoke, "/readyz");
    }
    let opened = connections(&postgres) - before;
    assert!(opened <= 4, "{opened} connections for 50 probes");

    // A state is logged when it changes, once: two more checks, each past
    // the readiness cache's second, add no line.
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        sidecar.get(&sidecar.invoke, "/readyz");
    }
    let log = sidecar.stderr();
    let logged = |message: &str, alias: &str| {
        let alias = format!("database={alias} ");
        log.lines().filter(|line| line.contains(message) && line.contains(&alias)).count()
    };
    assert_eq!(
        [
            logged("database reachable", "good"),
            logged("database unreachable", "wrong"),
            logged("database unreachable", "closed")
        ],
        [1, 1, 1],
        "{log}"
    );
    let everything = format!("{log}{answer}{metrics}");
    for password in ["right-pw-1a2b3c", "wrong-pw-4d5e6f", "closed-pw-7a8b9c"] {
        assert!(!everything.contains(password), "{password} leaked:\n{everything}");
    }
}

#[test]
fn tls_to_a_database_is_verified() {
    let (trusted, other) = (test_ca("gatehouse test CA"), test_ca("another CA"));

    let postgres = TestPostgres::start("app", "tls-pw", "orders");
    postgres.require_tls(&trusted);
    let dir = tempfile::tempdir().unwrap();
    let (trusted_pem, other_pem) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&trusted_pem, trusted.pem()).unwrap();
    std::fs::write(&other_pem, other.pem()).unwrap();
    let port = postgres.port;
    let url = |host: &str, query: String| format!("\"postgres://app:tls-pw@{host}:{port}/orders?{query}\"");
    let verify = |ca: &std::path::Path| format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let settings = format!(
        "[databases.verified]\nurl = {}\n[databases.untrusted]\nurl = {}\n\
         [databases.wrongname]\nurl = {}\n[databases.plain]\nurl = {}\n",
        url("localhost", verify(&trusted_pem)),
        url("localhost", verify(&other_pem)),
        url("127.0.0.1", verify(&trusted_pem)),
        url("localhost", "sslmode=disable".into()),
    );
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::start_unready(&policies, &settings, &[]);

    let (_, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
    let unready = String::from_utf8(body).unwrap();
    assert_eq!(
        unready,
        "database `plain` unreachable\ndatabase `untrusted` unreachable\ndatabase `wrongname` unreachable\n"
    );
    let answer = json(&request(&sidecar.admin, "GET", "/admin/databases", &[], b"").2);
    let why = |alias: &str| {
        let entry = answer["databases"].as_array().unwrap().iter().find(|d| d["alias"] == alias).unwrap().clone();
        entry["problem"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(why("verified"), "");
    assert!(why("untrusted").contains("certificate"), "{}", why("untrusted"));
    assert!(why("wrongname").contains("certificate"), "{}", why("wrongname"));
    assert!(why("plain").contains("no encryption"), "{}", why("plain"));
}

#[test]
fn notices_from_a_hostile_server_cannot_forge_or_flood_the_log() {
    let port = fake_postgres(5_000);
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let settings = format!("[databases.fake]\nurl = \"postgres://app:pw@127.0.0.1:{port}/db?sslmode=disable\"\n");
    let sidecar = Sidecar::start(&policies, &settings, &[]);
    // Ready means the checks went through the notices to `SELECT 1`.
    for _ in 0..3 {
        assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let log = sidecar.stderr();
    assert!(!log.contains('\u{1b}'), "an escape byte reached the log");
    assert!(!log.lines().any(|l| l.starts_with("2099-")), "a forged line:\n{log}");
    assert!(log.len() < 64 * 1024, "{} bytes of log", log.len());
}

/// A "PostgreSQL server" that lets anyone in and answers the login and
/// every simple query with `notices` NOTICE messages carrying a forged
/// log line, then completes the query.
fn fake_postgres(notices: usize) -> u16 {
    use std::io::{Read, Write};
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    let notice =
        message(b'N', b"SNOTICE\0VNOTICE\0C00000\0Mhi\n2099-01-01T00:00:00Z ERROR gatehouse::api: FORGED\x1b[31m\0\0");
    let burst: Vec<u8> = notice.repeat(notices);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let burst = burst.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                // Startup, after an SSLRequest answered "no" if one comes.
                let Some(first) = startup_packet(&mut stream) else { return };
                if first[..4] == 80877103i32.to_be_bytes()
                    && (stream.write_all(b"N").is_err() || startup_packet(&mut stream).is_none())
                {
                    return;
                }
                let mut hello = message(b'R', &0i32.to_be_bytes());
                hello.extend_from_slice(&burst);
                hello.extend(message(b'Z', b"I"));
                if stream.write_all(&hello).is_err() {
                    return;
                }
                loop {
                    let mut head = [0; 5];
                    if stream.read_exact(&mut head).is_err() {
                        return;
                    }
                    let mut body = vec![0; i32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
                    if stream.read_exact(&mut body).is_err() || head[0] == b'X' {
                        return;
                    }
                    if head[0] == b'Q' {
                        let mut answer = burst.clone();
                        answer.extend(message(b'C', b"SELECT 1\0"));
                        answer.extend(message(b'Z', b"I"));
                        if stream.write_all(&answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// One length-prefixed startup packet (no tag byte).
fn startup_packet(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut len = [0; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0; (i32::from_be_bytes(len) as usize).checked_sub(4)?];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

/// Successful logins to the cluster so far, from its statistics.
fn connections(postgres: &TestPostgres) -> i64 {
    let out = postgres.psql("SELECT sessions FROM pg_stat_database WHERE datname = 'orders'");
    out.trim().parse().unwrap_or_else(|_| panic!("sessions: {out:?}"))
}

#[test]
fn a_certificate_file_named_by_the_environment_or_an_alias_spelling_must_be_a_regular_file() {
    // Attacks: a FIFO named by `PGSSLROOTCERT` (which sqlx reads when the
    // URL names no root certificate) and by `ssl-ca=` (sqlx's third
    // spelling of `sslrootcert`). Read on every connection, each would
    // block a thread per readiness probe; the start must refuse both,
    // naming the variable or parameter, without blocking.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ca.pem");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.display().to_string();
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    for (url, env, named) in [
        ("postgres://app@127.0.0.1:9/app?sslmode=verify-full".to_string(), Some(fifo.as_str()), "PGSSLROOTCERT"),
        (format!("postgres://app@127.0.0.1:9/app?sslmode=verify-full&ssl-ca={fifo}"), None, "ssl-ca"),
    ] {
        let (_root, config) = policies.settings(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"off\"\n[databases.main]\nurl = {url:?}\n"
        ));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        command.args(["--config", config.to_str().unwrap(), "run"]).env_remove("PGSSLROOTCERT");
        if let Some(value) = env {
            command.env("PGSSLROOTCERT", value);
        }
        let mut child =
            command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{named}: the sidecar started (or blocked) with a FIFO as a certificate file");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{named}: {stderr}");
        assert!(stderr.contains(&format!("{named} `{fifo}`: not a regular file")), "{named}: {stderr}");
    }
}
