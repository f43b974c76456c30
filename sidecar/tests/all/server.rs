//! `gatehouse run`, the real binary, over real HTTP on loopback. What is
//! tried, and what must happen:
//! - an invocation returns the plugin's document with its content type and
//!   a request id (the caller's, or a new one) that the plugin's log
//!   events carry;
//! - each error kind comes back with its status, a JSON body and, when
//!   transient, `Retry-After`;
//! - the admin API refuses a missing or wrong token (401) and exists only on
//!   the admin listener;
//! - a reload under concurrent load loses no request, and each request sees
//!   one version; SIGHUP with a broken policy keeps the loaded version;
//!   SIGTERM lets in-flight requests finish;
//! - `/metrics` counts what happened;
//! - an oversized body, a client that never finishes its request head, and
//!   a flood of one plugin do not hurt another plugin's requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketType};

use crate::common::Policies;
use crate::sidecar::{Sidecar, header, json, request};

#[test]
fn invoke_returns_the_document_and_a_request_id() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("log", "hostile_log", "");
    let sidecar = Sidecar::start(&policies, "", &[]);

    let (status, headers, body) = sidecar.invoke("echo", "hello");
    assert_eq!((status, body.as_slice()), (200, b"hello".as_slice()));
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));
    assert!(header(&headers, "x-request-id").is_some_and(|id| !id.is_empty()));

    // The caller's id comes back, and the plugin's own log lines carry it.
    let path = "/v1/plugins/log/invoke";
    let (status, headers, _) = request(&sidecar.invoke, "POST", path, &[("x-request-id", "req-42.a_b")], b"forge");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-request-id"), Some("req-42.a_b"));
    let started = Instant::now();
    while !sidecar.stderr().lines().any(|l| l.contains("req-42.a_b") && l.contains("gatehouse::plugin")) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // An id that is not plain is replaced, not echoed.
    let (_, headers, _) = request(&sidecar.invoke, "POST", path, &[("x-request-id", "evil id=x")], b"forge");
    assert!(header(&headers, "x-request-id").is_some_and(|id| !id.contains("evil")));

    // A plugin name in the path is caller text: it cannot start a log line.
    let forged = "/v1/plugins/x%0a2026-01-01T00:00:00Z%20%20INFO%20gatehouse::cli::run:%20FORGED%1b%5b8m/invoke";
    assert_eq!(request(&sidecar.invoke, "POST", forged, &[], b"x").0, 404);
    let started = Instant::now();
    while !sidecar.stderr().contains("FORGED") {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    for line in sidecar.stderr().lines() {
        assert!(!line.starts_with("2026-01-01") && !line.contains('\u{1b}'), "forged: {line:?}");
    }

    // Nor can it pass for fields of its own.
    let spaced = "/v1/plugins/x%20request_id=forged%20plugin=echo/invoke";
    assert_eq!(request(&sidecar.invoke, "POST", spaced, &[], b"x").0, 404);
    let started = Instant::now();
    while !sidecar.stderr().contains("request_id=forged") {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sidecar.stderr().contains(r#"plugin="x request_id=forged plugin=echo""#), "{}", sidecar.stderr());

    // Every answer has an id, whatever the route; a head over 64 KiB is
    // refused whatever way it arrives.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/plugins", "/nowhere"] {
        assert!(header(&sidecar.get(&sidecar.invoke, path).1, "x-request-id").is_some(), "{path}");
    }
    assert!(header(&sidecar.get(&sidecar.admin, "/admin/plugins").1, "x-request-id").is_some());
    let big = "a".repeat(70 * 1024);
    assert_eq!(request(&sidecar.invoke, "GET", "/healthz", &[("x-big", &big)], b"").0, 431);

    let (status, _, body) = sidecar.get(&sidecar.invoke, "/v1/plugins");
    assert_eq!(status, 200);
    let plugins = json(&body)["plugins"].clone();
    assert_eq!(plugins[0]["name"], "echo");
    assert_eq!(plugins[0]["version"], "0.1.0");
    assert_eq!(plugins[0]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn each_error_kind_has_its_status_body_and_hint() {
    let policies = Policies::new();
    policies.plugin("log", "hostile_log", "");
    policies.plugin("spin", "hostile_loop", "timeout = \"100ms\"");
    policies.plugin("hog", "hostile_memory", "memory = \"16 MiB\"\ntimeout = \"5s\"");
    policies.plugin("crash", "hostile_trap", "");
    policies.plugin("busy", "sleeper", "concurrency = 1\ntimeout = \"2s\"");
    policies.plugin("socket", "hostile_socket", "");
    // Never ready (`socket` is refused), but serving the others.
    let sidecar = Sidecar::start_unready(&policies, "max_body = \"1 KiB\"", &[]);

    let expect = |plugin: &str, input: &str, status: u16, kind: &str| {
        let (got, headers, body) = sidecar.invoke(plugin, input);
        let body = json(&body);
        assert_eq!((got, body["kind"].as_str().unwrap()), (status, kind), "{plugin}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        headers
    };
    expect("log", "error", 403, "denied");
    expect("log", "no such attack", 400, "invalid-input");
    expect("nope", "x", 404, "not-found");
    expect("hog", "eat", 507, "quota-exceeded");
    expect("spin", "go", 504, "timeout");
    expect("socket", "x", 503, "unavailable");
    expect("crash", "12345", 500, "internal");
    // Routing failures have the same JSON shape: no route, a wrong method,
    // a name that is not UTF-8 (not quoted back).
    for (method, path, status, kind) in [
        ("GET", "/nope", 404, "not-found"),
        ("GET", "/v1/plugins/echo/invoke", 405, "invalid-input"),
        ("POST", "/v1/plugins/%ff/invoke", 400, "invalid-input"),
        ("GET", "/p/%ff/", 400, "invalid-input"),
    ] {
        let (got, headers, body) = request(&sidecar.invoke, method, path, &[], b"");
        assert_eq!((got, json(&body)["kind"].as_str()), (status, Some(kind)), "{method} {path}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
    }
    // A crash's panic and backtrace, and a refusal's file and reason, are
    // the operator's: in the log, not in the answer.
    let (_, _, crash) = sidecar.invoke("crash", "12345");
    let (_, _, socket) = sidecar.invoke("socket", "x");
    let answers = format!("{}{}", String::from_utf8_lossy(&crash), String::from_utf8_lossy(&socket));
    for detail in ["gave up", "wasm backtrace", "socket.toml", "wasi:sockets"] {
        assert!(!answers.contains(detail), "{detail} in {answers}");
    }
    // (The log reaches us through a pipe: give it a moment.)
    let started = Instant::now();
    while !(sidecar.stderr().contains("gave up") && sidecar.stderr().contains("wasi:sockets")) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Rate limited: the only slot is held, and its queue is full.
    let holder = {
        let addr = sidecar.invoke.clone();
        std::thread::spawn(move || request(&addr, "POST", "/v1/plugins/busy/invoke", &[], b"1500"))
    };
    let started = Instant::now();
    let mut limited = None;
    while limited.is_none() && started.elapsed() < Duration::from_secs(10) {
        // Six callers at once: one slot, four places in the queue.
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let addr = sidecar.invoke.clone();
                std::thread::spawn(move || request(&addr, "POST", "/v1/plugins/busy/invoke", &[], b"1"))
            })
            .collect();
        for caller in callers {
            let (status, headers, body) = caller.join().unwrap();
            if status == 429 {
                assert_eq!(json(&body)["kind"], "rate-limited");
                limited = Some(headers);
            }
        }
    }
    let headers = limited.expect("a full queue answers 429");
    assert!(header(&headers, "retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // The holder may itself have lost the race for the slot.
    assert!([200, 429].contains(&holder.join().unwrap().0));

    // Too large a body is refused before any plugin runs.
    let (status, _, body) = sidecar.invoke("log", &"x".repeat(2048));
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["kind"], "invalid-input");
    // A declared length one byte over is refused from the head, before any
    // body is asked for: `Expect: 100-continue` gets 413, not `100
    // Continue`. One of exactly the limit is asked for.
    for (length, first) in [(1025, "HTTP/1.1 413"), (1024, "HTTP/1.1 100")] {
        let mut stream = TcpStream::connect(&sidecar.invoke).unwrap();
        write!(
            stream,
            "POST /v1/plugins/log/invoke HTTP/1.1\r\nhost: localhost\r\ncontent-length: {length}\r\nexpect: 100-continue\r\n\r\n"
        )
        .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(String::from_utf8_lossy(&answer), first, "declared {length}");
    }
}

/// What is tried against a loopback admin listener without a token: a
/// cross-site form post (the browser adds `Origin`) and a DNS-rebinding
/// read (the browser sends the attacker's name as `Host`). Expected: 403
/// for both, while calls naming loopback pass.
#[test]
fn a_tokenless_admin_api_refuses_browsers_and_foreign_host_names() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let admin = &sidecar.admin;
    assert_eq!(request(admin, "GET", "/admin/plugins", &[], b"").0, 200);
    let form = [("origin", "http://attacker.example"), ("content-type", "application/x-www-form-urlencoded")];
    assert_eq!(request(admin, "POST", "/admin/reload", &form, b"a=1").0, 403);
    // A cross-site GET (an <img> or a link) carries no Origin, but says
    // where it comes from.
    assert_eq!(request(admin, "GET", "/admin/plugins", &[("sec-fetch-site", "cross-site")], b"").0, 403);
    assert_eq!(request(admin, "GET", "/admin/plugins", &[("sec-fetch-site", "none")], b"").0, 200);
    let port = admin.rsplit(':').next().unwrap();
    for (host, expected) in [("attacker.example", "403"), ("localhost", "200"), ("127.0.0.1", "200")] {
        let mut stream = TcpStream::connect(admin).unwrap();
        write!(stream, "GET /admin/plugins HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {expected}")), "{host}: {answer}");
    }
}

#[test]
fn the_admin_api_needs_its_token_and_only_exists_on_its_listener() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar =
        Sidecar::start(&policies, "admin_token = { env = \"TEST_ADMIN_TOKEN\" }", &[("TEST_ADMIN_TOKEN", "s3cret")]);
    let admin = &sidecar.admin;
    assert_eq!(request(admin, "GET", "/admin/plugins", &[], b"").0, 401);
    assert_eq!(request(admin, "GET", "/admin/plugins", &[("authorization", "Bearer wrong")], b"").0, 401);
    assert_eq!(request(admin, "POST", "/admin/reload", &[("authorization", "Bearer s3cre")], b"").0, 401);
    let (status, _, body) = request(admin, "GET", "/admin/plugins", &[("authorization", "Bearer s3cret")], b"");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["plugins"][0]["name"], "echo");
    for path in ["/admin/plugins", "/admin/reload"] {
        assert_eq!(request(&sidecar.invoke, "GET", path, &[("authorization", "Bearer s3cret")], b"").0, 404);
        assert_eq!(request(&sidecar.invoke, "POST", path, &[("authorization", "Bearer s3cret")], b"").0, 404);
    }
    // The scheme is case-insensitive, the token is not.
    assert_eq!(request(admin, "GET", "/admin/plugins", &[("authorization", "bearer s3cret")], b"").0, 200);
    assert_eq!(request(admin, "GET", "/admin/plugins", &[("authorization", "Bearer S3CRET")], b"").0, 401);
    // The invoke API is not on the admin listener either.
    assert_eq!(request(admin, "POST", "/v1/plugins/echo/invoke", &[("authorization", "Bearer s3cret")], b"x").0, 404);
}

#[test]
fn a_reload_under_load_loses_no_request_and_each_sees_one_version() {
    let policies = Policies::new();
    policies.plugin("p", "echo", "concurrency = 8");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let load: Vec<_> = (0..4)
        .map(|_| {
            let addr = sidecar.invoke.clone();
            std::thread::spawn(move || {
                (0..60)
                    .map(|_| request(&addr, "POST", "/v1/plugins/p/invoke", &[], b"{\"text\": \"One two.\"}"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Swap p from echo to doc-enricher, twice, while the load runs.
    for component in ["doc_enricher", "echo", "doc_enricher"] {
        policies.plugin("p", component, "concurrency = 8");
        let (status, _, body) = request(&sidecar.admin, "POST", "/admin/reload", &[], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let mut versions = std::collections::BTreeSet::new();
    for thread in load {
        for (status, _, body) in thread.join().unwrap() {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let text = String::from_utf8_lossy(&body).into_owned();
            // Either the echo of the input, or doc-enricher's whole answer.
            let echoed = text == "{\"text\": \"One two.\"}";
            let enriched = json(&body)["enrichment"]["words"] == 2;
            assert!(echoed ^ enriched, "a mixed answer: {text}");
            versions.insert(echoed);
        }
    }
    assert_eq!(sidecar.invoke("p", "{\"text\": \"a b c\"}").0, 200);
}

#[test]
fn sighup_with_a_broken_policy_keeps_the_loaded_version_and_sigterm_drains() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sleeper = policies.plugin("sleeper", "sleeper", "timeout = \"5s\"");
    let sidecar = Sidecar::start(&policies, "", &[]);

    std::fs::write(&sleeper, "[plugin\nname = ").unwrap();
    sidecar.signal("HUP");
    let started = Instant::now();
    while !sidecar.stderr().contains("trigger=\"SIGHUP\"") {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sidecar.stderr().contains("keeping the loaded version"), "{}", sidecar.stderr());
    assert_eq!(sidecar.invoke("sleeper", "1").0, 200, "the old grants stay in force");

    // SIGTERM while a request runs: it completes, then the process exits.
    let in_flight = {
        let addr = sidecar.invoke.clone();
        std::thread::spawn(move || request(&addr, "POST", "/v1/plugins/sleeper/invoke", &[], b"700"))
    };
    let started = Instant::now();
    while !sidecar.stderr().contains("sleeper") || started.elapsed() < Duration::from_millis(100) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut sidecar = sidecar;
    sidecar.signal("TERM");
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, b"slept".as_slice()));
    let exit = sidecar.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    assert!(sidecar.stderr().contains("stopped"), "{}", sidecar.stderr());
}

#[test]
fn a_sighup_while_the_plugins_load_reloads_afterwards_instead_of_ending_the_process() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    // info() spins until its 1 s deadline: the first load takes a second.
    policies.plugin("slow", "hostile_slow_info", "");
    let mut sidecar = Sidecar::launch(&policies, "", &[]);
    sidecar.signal("HUP");
    let started = Instant::now();
    while !sidecar.stderr().contains("trigger=\"SIGHUP\"") {
        assert!(sidecar.child.try_wait().unwrap().is_none(), "SIGHUP ended the process: {}", sidecar.stderr());
        assert!(started.elapsed() < Duration::from_secs(20), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sidecar.invoke("echo", "alive").2, b"alive");
}

#[test]
fn metrics_count_what_happened() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("crash", "hostile_trap", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    for _ in 0..3 {
        assert_eq!(sidecar.invoke("echo", "x").0, 200);
    }
    assert_eq!(sidecar.invoke("crash", "12345").0, 500);
    let (status, headers, body) = sidecar.get(&sidecar.invoke, "/metrics");
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let text = String::from_utf8(body).unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    };
    assert_eq!(value("gatehouse_invocations_total{plugin=\"echo\",version=\"0.1.0\",outcome=\"ok\"}"), 3.0);
    assert_eq!(value("gatehouse_invocations_total{plugin=\"crash\",version=\"0.1.0\",outcome=\"internal\"}"), 1.0);
    assert_eq!(value("gatehouse_invocation_seconds_count{plugin=\"echo\",version=\"0.1.0\"}"), 3.0);
    assert_eq!(value("gatehouse_plugin_in_flight{plugin=\"echo\"}"), 0.0);
    assert_eq!(value("gatehouse_plugin_concurrency{plugin=\"echo\"}"), 16.0);
    assert!(text.trim_end().ends_with("# EOF"));
}

/// What is tried: a client that asks for an answer larger than the socket
/// buffers and never reads it, on the only connection slot. Expected: it
/// is cut off `request_timeout` after its response stalls, so the slot
/// comes back and the next caller is served (without the write deadline
/// it would wait forever, and the request below fails at its 30 s read
/// timeout); the stalled client never gets its whole answer.
#[test]
fn clients_that_stop_reading_are_cut_off_and_free_their_connection_slot() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "memory = \"128 MiB\"");
    let settings = "max_connections = 1\nrequest_timeout = \"1s\"\nmax_body = \"16 MiB\"";
    let sidecar = Sidecar::start(&policies, settings, &[]);
    let body = vec![b'x'; 12 << 20];

    // A small receive buffer, set before connecting (which also turns off
    // the kernel's growing of it): the answer cannot hide in socket
    // buffers, so the server's write really stalls.
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 64 * 1024).unwrap();
    let addr: std::net::SocketAddr = sidecar.invoke.parse().unwrap();
    rustix::net::connect(&socket, &addr).unwrap();
    let mut stalled = TcpStream::from(socket);
    let head = format!("POST /v1/plugins/echo/invoke HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body).unwrap();

    let (status, _, answer) = sidecar.invoke("echo", "next");
    assert_eq!((status, answer.as_slice()), (200, b"next".as_slice()));
    let mut received = Vec::new();
    let _ = stalled.read_to_end(&mut received);
    assert!(received.len() < body.len(), "the stalled client got its whole answer");
}

#[test]
fn an_answer_a_client_reads_slowly_keeps_its_plugins_slot_until_delivered() {
    // Attack: invoke for a large answer and read none of it. The answer
    // is host memory once the invocation has ended; it must stay charged to
    // the plugin (its concurrency slot is held until the answer has been
    // handed over), not to no one. Reading it later still gets all of it.
    let policies = Policies::new();
    policies.plugin("echo", "echo", "memory = \"64 MiB\"\nconcurrency = 1");
    let sidecar = Sidecar::start(&policies, "request_timeout = \"30s\"\nmax_body = \"8 MiB\"", &[]);
    let body: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 64 * 1024).unwrap();
    let addr: std::net::SocketAddr = sidecar.invoke.parse().unwrap();
    rustix::net::connect(&socket, &addr).unwrap();
    let mut stalled = TcpStream::from(socket);
    let head = format!(
        "POST /v1/plugins/echo/invoke HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    sidecar.wait_in_flight("echo", 1, "the invocation never started");
    // The component is done in milliseconds; its unread answer keeps the slot.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecar.in_flight("echo"), 1, "an answer nobody has read is charged to no one");
    let addr = sidecar.invoke.clone();
    let next = std::thread::spawn(move || request(&addr, "POST", "/v1/plugins/echo/invoke", &[], b"next"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!next.is_finished(), "a second invocation ran beside the undelivered answer, past concurrency 1");

    let mut received = Vec::new();
    stalled.read_to_end(&mut received).unwrap_or_else(|e| panic!("{e}"));
    let at = received.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(received.len() - at, body.len(), "the answer lost bytes");
    assert!(received[at..] == body[..], "the answer changed");
    let (status, _, answer) = next.join().unwrap();
    assert_eq!((status, answer.as_slice()), (200, b"next".as_slice()));
    sidecar.wait_in_flight("echo", 0, "the slot outlived its delivered answer");
}

#[test]
fn a_slow_client_or_a_flood_of_one_plugin_does_not_hurt_another() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("slow", "sleeper", "concurrency = 2\ntimeout = \"3s\"");
    let sidecar = Sidecar::start(&policies, "request_timeout = \"1s\"", &[]);

    // A client that never finishes its request head.
    let mut slowloris = TcpStream::connect(&sidecar.invoke).unwrap();
    slowloris.write_all(b"POST /v1/plugins/echo/invoke HTTP/1.1\r\nhost: x\r\n").unwrap();
    // A flood of the slow plugin: most are turned away at once.
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let addr = sidecar.invoke.clone();
            std::thread::spawn(move || request(&addr, "POST", "/v1/plugins/slow/invoke", &[], b"500").0)
        })
        .collect();
    for i in 0..20 {
        let (status, _, body) = sidecar.invoke("echo", &format!("still here {i}"));
        assert_eq!((status, body), (200, format!("still here {i}").into_bytes()));
    }
    let statuses: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    assert!(statuses.contains(&429), "the queue is bounded: {statuses:?}");

    // The slow client is cut off after the header timeout.
    slowloris.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let started = Instant::now();
    let _ = slowloris.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(4), "the connection stayed open");
}

/// A loopback HTTP server that answers every request `200 upstream` and
/// counts them.
fn upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream");
        }
    });
    (addr, count)
}

#[test]
fn a_wasi_http_component_is_served_under_its_prefix_with_its_policies() {
    let (upstream, received) = upstream();
    let port = upstream.rsplit(':').next().unwrap();
    let policies = Policies::new();
    let component = crate::common::guest("hello_proxy");
    policies.write(
        "hello.toml",
        &format!(
            "[plugin]\nname = \"hello\"\ncomponent = {:?}\n[limits]\ntimeout = \"300ms\"\n[http]\nallow = [\"http://localhost:{port}\", \"http://0.0.0.0:{port}\"]\n",
            component.display().to_string()
        ),
    );
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let addr = &sidecar.invoke;

    let (status, headers, body) = request(addr, "GET", "/p/hello/", &[], b"");
    assert_eq!((status, body.as_slice()), (200, b"hello from a wasi:http component\n".as_slice()));
    assert!(header(&headers, "x-request-id").is_some());
    // The prefix is stripped; method, query and body come through.
    let (status, _, body) = request(addr, "POST", "/p/hello/echo?x=1", &[], b"payload");
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, "Method::Post /echo?x=1\npayload"));

    // A status that cannot end a request (1xx: 101 would hand the
    // connection over; past 599) becomes a 502 of the sidecar's own.
    for code in ["100", "101", "999"] {
        let (status, headers, body) = request(addr, "GET", &format!("/p/hello/status/{code}"), &[], b"");
        assert_eq!((status, json(&body)["kind"].as_str()), (502, Some("internal")), "{code}");
        assert!(header(&headers, "x-request-id").is_some());
    }
    assert_eq!(request(addr, "GET", "/p/hello/status/204", &[], b"").0, 204);
    // Answers past one 4 KiB write come through whole.
    let big = vec![b'z'; 10_000];
    let (_, _, body) = request(addr, "POST", "/p/hello/echo", &[], &big);
    assert_eq!(body.len(), "Method::Post /echo\n".len() + big.len());

    // Outbound calls go through its [http] policy: the granted origin is
    // reached, another is refused before any connection.
    let (_, _, body) = request(addr, "GET", &format!("/p/hello/fetch?url=http://localhost:{port}/"), &[], b"");
    assert_eq!(String::from_utf8_lossy(&body), "status 200");
    let denied = format!("/p/hello/fetch?url=http://127.0.0.1:{port}/");
    let (_, _, body) = request(addr, "GET", &denied, &[("x-request-id", "proxy-req-7")], b"");
    assert_eq!(String::from_utf8_lossy(&body), "error ErrorCode::HttpRequestDenied");
    // The refusal's log line carries the request's id.
    let started = Instant::now();
    while !sidecar.stderr().lines().any(|l| l.contains("proxy-req-7") && l.contains("gatehouse::http")) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A granted name whose address is never allowed is refused by the
    // address guard, and counted apart from the policy's refusals.
    let (_, _, body) = request(addr, "GET", &format!("/p/hello/fetch?url=http://0.0.0.0:{port}/"), &[], b"");
    assert!(String::from_utf8_lossy(&body).starts_with("error "), "{}", String::from_utf8_lossy(&body));
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1, "only the granted request was sent");
    let (_, _, metrics) = sidecar.get(addr, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for series in [
        "gatehouse_outbound_http_requests_total{plugin=\"hello\",outcome=\"response\"} 1",
        "gatehouse_outbound_http_requests_total{plugin=\"hello\",outcome=\"denied_by_policy\"} 1",
        "gatehouse_outbound_http_requests_total{plugin=\"hello\",outcome=\"denied_by_address\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} not in\n{metrics}");
    }

    // A component may work on after its answer has been delivered (within
    // its deadline): the answer's end does not stop it.
    let before = received.load(std::sync::atomic::Ordering::SeqCst);
    let (_, _, body) = request(addr, "GET", &format!("/p/hello/after?url=http://localhost:{port}/"), &[], b"");
    assert_eq!(body, b"answered\n");
    let started = Instant::now();
    while received.load(std::sync::atomic::Ordering::SeqCst) == before {
        assert!(started.elapsed() < Duration::from_secs(10), "the work after the answer never happened");
        std::thread::sleep(Duration::from_millis(10));
    }

    // A declared body over max_body is refused before the component runs.
    let big = vec![b'x'; 2 << 20];
    assert_eq!(request(addr, "POST", "/p/hello/echo", &[], &big).0, 413);

    // Its limits hold: a component that never answers gets 504.
    let (status, _, body) = request(addr, "GET", "/p/hello/spin", &[], b"");
    assert_eq!((status, json(&body)["kind"].as_str()), (504, Some("timeout")));

    // Each kind is reached only through its own door.
    let (status, _, body) = sidecar.invoke("hello", "x");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(json(&body)["message"].as_str().unwrap().contains("wasi:http/incoming-handler"));
    assert_eq!(request(addr, "GET", "/p/echo/", &[], b"").0, 404);
    let (_, _, body) = sidecar.get(addr, "/v1/plugins");
    let kinds: Vec<_> = json(&body)["plugins"].as_array().unwrap().iter().map(|p| p["kind"].clone()).collect();
    assert_eq!(kinds, [serde_json::json!("plugin"), serde_json::json!("wasi-http")]);
}

#[test]
fn an_empty_admin_token_is_refused_at_start() {
    // Attack: an empty token (an unset variable, an empty file) would
    // match any bearer header, or none.
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let (_data, config) = policies.settings(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = { env = \"EMPTY_TOKEN\" }",
    );
    let out = crate::common::gatehouse_command()
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("EMPTY_TOKEN", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin_token is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stalled_upload_does_not_hold_a_wasi_http_component_for_its_whole_timeout() {
    // Attack: declare a body, send two bytes, go silent. The component
    // reading it holds its only slot; the body deadline (request_timeout)
    // must end that well before the plugin's 8 s.
    let policies = Policies::new();
    policies.proxy("hello", "concurrency = 1\ntimeout = \"8s\"");
    let sidecar = Sidecar::start(&policies, "request_timeout = \"1s\"", &[]);
    let mut stalled = TcpStream::connect(&sidecar.invoke).unwrap();
    stalled.write_all(b"POST /p/hello/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab").unwrap();
    // Wait until the stalled request holds the slot.
    let busy = "gatehouse_plugin_in_flight{plugin=\"hello\"} 1";
    while !String::from_utf8_lossy(&sidecar.get(&sidecar.invoke, "/metrics").2).lines().any(|l| l == busy) {
        std::thread::yield_now();
    }
    let started = Instant::now();
    let (status, _, _) = request(&sidecar.invoke, "GET", "/p/hello/", &[], b"");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(4), "waited {:?} behind a stalled upload", started.elapsed());
    drop(stalled);
}

#[test]
fn a_wasi_http_component_sees_the_raw_request_target_without_its_prefix() {
    // Attacks: encoded separators that would become `..` segments, `?` or
    // `#` once decoded (`%2F..`, `%3F`, `%23`), double encoding (`%252e`
    // must not become `%2e`), and bytes that are only valid encoded
    // (`%20`, `%00`). The component must see exactly what the client sent,
    // as under `wasmtime serve` or Spin, minus `/p/{name}`.
    let policies = Policies::new();
    policies.proxy("hello", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    for (target, seen) in [
        ("/p/hello/path/a%2F..%2F..%2Fsecret", "/path/a%2F..%2F..%2Fsecret"),
        ("/p/hello/path/x%3Fadmin=1?q=1", "/path/x%3Fadmin=1?q=1"),
        ("/p/hello/path/x%23y?q=1", "/path/x%23y?q=1"),
        ("/p/hello/path/x%252e", "/path/x%252e"),
        ("/p/hello/path/my%20file", "/path/my%20file"),
        ("/p/hello/path/%00", "/path/%00"),
        ("/p/hello/path?a=%2F&b=%3F", "/path?a=%2F&b=%3F"),
        ("/p/hello/path//double//slash", "/path//double//slash"),
    ] {
        let (status, _, body) = request(&sidecar.invoke, "GET", target, &[], b"");
        assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, seen), "{target}");
    }
    // The root, with and without its slash and with a query.
    for (target, seen) in [("/p/hello", "/"), ("/p/hello/", "/"), ("/p/hello?x=1", "/?x=1"), ("/p/hello/?x=1", "/?x=1")]
    {
        let (status, _, body) = request(&sidecar.invoke, "GET", target, &[], b"");
        assert_eq!(status, 200, "{target}");
        assert_eq!(String::from_utf8_lossy(&body), "hello from a wasi:http component\n", "{target} as {seen}");
    }
    // The plugin name is matched decoded: `hell%6F` is `hello`.
    let (status, _, body) = request(&sidecar.invoke, "GET", "/p/hell%6F/path%2Fx", &[], b"");
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, "/path%2Fx"));
}

#[test]
fn a_wasi_http_component_stops_when_its_client_hangs_up() {
    // Attack: clients ask for an answer that never comes (`/spin`), more
    // of them than the plugin has slots and queue, then hang up; then
    // clients hang up in the middle of an endless answer (`/drip`). Their
    // work must end with them, not at the plugin's 20 s deadline: running
    // components are stopped and queued callers leave the queue, so the
    // next client is served at once.
    let policies = Policies::new();
    policies.proxy("hello", "concurrency = 2\ntimeout = \"20s\"");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let clients: Vec<TcpStream> = (0..2 + 2 * 4)
        .map(|_| {
            let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
            client.write_all(b"GET /p/hello/spin HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            client
        })
        .collect();
    sidecar.wait_in_flight("hello", 2, "the spinners never started");
    std::thread::sleep(Duration::from_millis(200));
    drop(clients);
    let hung_up = Instant::now();
    sidecar.wait_in_flight("hello", 0, "still running after the clients hung up");
    // Nobody is left in the queue either: a new client is served now.
    let (status, _, body) = request(&sidecar.invoke, "GET", "/p/hello/", &[], b"");
    assert_eq!((status, body.as_slice()), (200, b"hello from a wasi:http component\n".as_slice()));
    assert!(hung_up.elapsed() < Duration::from_secs(15), "served only after the deadline");

    // Attack: hang up mid-answer, from a component whose body never ends
    // and which ignores failed writes (`/drip`): it is stopped when its
    // answer is dropped, not at its deadline.
    let mut clients: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
            client.write_all(b"GET /p/hello/drip HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            client
        })
        .collect();
    for client in &mut clients {
        let mut first = [0u8; 64];
        assert!(client.read(&mut first).unwrap() > 0, "no answer head");
    }
    assert_eq!(sidecar.in_flight("hello"), 2);
    drop(clients);
    sidecar.wait_in_flight("hello", 0, "still dripping after the clients hung up");
}

#[test]
fn a_wasi_http_component_stops_when_its_client_hangs_up_with_its_body_unread() {
    // hyper notices a closed connection only by reading it, and it reads a
    // request body only for a component that asks for it. Attacks: clients
    // send a body to a component that never reads it and never answers
    // (`/spin`), then hang up; clients send half a body to one that sends
    // its answer's head and then nothing (`/hold`), read the head and hang
    // up. Both must end with their clients, not at the 20 s deadline; and a
    // client still connected with its body unread is not taken for gone.
    let policies = Policies::new();
    policies.proxy("hello", "concurrency = 2\ntimeout = \"20s\"");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let body = vec![b'b'; 100_000];
    let clients: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
            let head = format!("POST /p/hello/spin HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
            client.write_all(head.as_bytes()).unwrap();
            client.write_all(&body).unwrap();
            client
        })
        .collect();
    sidecar.wait_in_flight("hello", 2, "the spinners never started");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecar.in_flight("hello"), 2, "a client still connected was taken for gone");
    drop(clients);
    sidecar.wait_in_flight("hello", 0, "still spinning after the clients hung up with their bodies unread");

    let mut clients: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
            let head = format!("POST /p/hello/hold HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
            client.write_all(head.as_bytes()).unwrap();
            client.write_all(&body[..body.len() / 2]).unwrap();
            client
        })
        .collect();
    for client in &mut clients {
        let mut head = [0u8; 64];
        let n = client.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head[..n]));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecar.in_flight("hello"), 2, "a client still connected was taken for gone");
    drop(clients);
    sidecar.wait_in_flight("hello", 0, "still holding after the clients hung up with their bodies half sent");
}

#[test]
fn a_call_stops_when_its_client_hangs_up_behind_a_pipelined_byte() {
    // hyper stops reading a connection once a byte of a next request is in
    // its buffer, so it no longer sees the client's close. Attacks (an
    // outside review): a bodyless `GET` followed by one byte, then a reset,
    // against a component that never answers (`/spin`), with more such
    // clients than slots (the rest queued); an invoke of a plugin that
    // sleeps 20 s, followed by one byte, then a close. Each call must end
    // with its client, and the queue must empty.
    let policies = Policies::new();
    policies.proxy("hello", "concurrency = 2\ntimeout = \"20s\"");
    policies.plugin("slow", "sleeper", "concurrency = 1\ntimeout = \"30s\"");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
            client.write_all(b"GET /p/hello/spin HTTP/1.1\r\nhost: x\r\n\r\nG").unwrap();
            client
        })
        .collect();
    sidecar.wait_in_flight("hello", 2, "the spinners never started");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecar.in_flight("hello"), 2, "a client still connected was taken for gone");
    for client in &clients {
        // A reset, not a close: the pipelined byte is unread.
        rustix::net::sockopt::set_socket_linger(client, Some(Duration::ZERO)).unwrap();
    }
    drop(clients);
    sidecar.wait_in_flight("hello", 0, "still spinning after the clients hung up behind a pipelined byte");
    // The queued ones left as well: a new client is served now.
    let (status, _, body) = request(&sidecar.invoke, "GET", "/p/hello/", &[], b"");
    assert_eq!((status, body.as_slice()), (200, b"hello from a wasi:http component\n".as_slice()));

    let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
    client.write_all(b"POST /v1/plugins/slow/invoke HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n20000P").unwrap();
    sidecar.wait_in_flight("slow", 1, "the sleeper never started");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecar.in_flight("slow"), 1, "a client still connected was taken for gone");
    drop(client);
    sidecar.wait_in_flight("slow", 0, "still sleeping after the client hung up behind a pipelined byte");

    // A client that shuts only its sending half is gone too (the call
    // stops), and what it can still read is an error, never a success.
    let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
    client.write_all(b"POST /v1/plugins/slow/invoke HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n20000P").unwrap();
    sidecar.wait_in_flight("slow", 1, "the sleeper never started");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    sidecar.wait_in_flight("slow", 0, "still sleeping after the client shut its sending half");
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains("the client hung up"), "{answer}");
}

/// A plugin running a SQLite statement for a minute (`sql-demo`, the
/// embedded application database). A SQLite statement is stepped on its
/// invocation's own thread, where nothing can drop the invocation until the
/// statement ends, so these stops reach it through the invocation's stop
/// signal instead.
fn endless_sql(plugin_timeout: &str) -> (Policies, Sidecar, String) {
    endless_sql_with(plugin_timeout, "")
}

/// [`endless_sql`] with `server` settings.
fn endless_sql_with(plugin_timeout: &str, server: &str) -> (Policies, Sidecar, String) {
    let policies = Policies::new();
    policies.plugin(
        "q",
        "sql_demo",
        &format!(
            "timeout = \"{plugin_timeout}\"\n[sql.app]\nstatements = [\"select\"]\ntimeout = \"60s\"\n\
             [sql.app.tables]\nproducts = \"select\"\n"
        ),
    );
    let sidecar = Sidecar::start(&policies, server, &[]);
    let joined: Vec<String> = (0..20).map(|i| format!("products p{i}")).collect();
    let count = format!("SELECT count(*) FROM {}", joined.join(", "));
    (policies, sidecar, serde_json::json!({ "query": count }).to_string())
}

#[test]
fn a_sql_statement_stops_when_its_client_hangs_up() {
    // Attack: invoke a plugin whose statement would run for a minute, then
    // hang up. The invocation (and with it the statement, its connection
    // and its thread) must end with the client, not at the deadline.
    let (_policies, sidecar, endless) = endless_sql("50s");
    let mut client = TcpStream::connect(&sidecar.invoke).unwrap();
    let head = format!("POST /v1/plugins/q/invoke HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", endless.len());
    client.write_all(format!("{head}{endless}").as_bytes()).unwrap();
    sidecar.wait_in_flight("q", 1, "the statement never started");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecar.in_flight("q"), 1, "a client still connected was taken for gone");
    drop(client);
    sidecar.wait_in_flight("q", 0, "the statement still runs after its client hung up");
    let (status, _, body) = sidecar.invoke("q", r#"{"query": "SELECT count(*) FROM products"}"#);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_sql_statement_stops_at_its_invocations_deadline() {
    // Attack: a statement whose own deadline (60 s) is far past its
    // plugin's (1 s). The invocation must end at its own deadline, as
    // `timeout`, with the statement stopped.
    let (_policies, sidecar, endless) = endless_sql("1s");
    let started = Instant::now();
    let (status, _, body) = sidecar.invoke("q", &endless);
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(10), "ended only after {:?}", started.elapsed());
    sidecar.wait_in_flight("q", 0, "the statement still runs after its invocation's deadline");
}

#[test]
fn sigterm_stops_a_sql_statement_left_running_by_the_drain() {
    // Attack (an outside review): SIGTERM while statements run that the
    // drain does not wait out. The log said `stopped` at the drain's end,
    // but the process lived on until the statements reached their own
    // deadlines (28.7 s, near an orchestrator's kill), and a worker
    // panicked when the runtime was torn down under a running invocation
    // (red here before: the panic). It must end soon after the drain, its
    // statements stopped first.
    let (_policies, mut sidecar, endless) = endless_sql_with("50s", "drain_timeout = \"1s\"\n");
    let running = {
        let addr = sidecar.invoke.clone();
        std::thread::spawn(move || request(&addr, "POST", "/v1/plugins/q/invoke", &[], endless.as_bytes()))
    };
    sidecar.wait_in_flight("q", 1, "the statement never started");
    sidecar.signal("TERM");
    let exit = sidecar.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?}");
    assert!(sidecar.stderr().contains("stopped"), "{}", sidecar.stderr());
    assert!(!sidecar.stderr().contains("panicked"), "{}", sidecar.stderr());
    // Stopped while the server still runs, the invocation is answered (as
    // a timeout), not cut off with the process.
    let (status, _, body) = running.join().unwrap();
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
}

/// The `gatehouse __compile` workers whose parent is `parent`.
fn compile_workers(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`; comm may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if fields.get(1) == Some(&parent.to_string().as_str())
            && fields.first() != Some(&"Z")
            && String::from_utf8_lossy(&cmdline).contains("__compile")
        {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[test]
fn compile_workers_end_at_the_budget_and_with_the_sidecar() {
    // Attacks: a component that takes seconds to compile. Under a 300 ms
    // budget its worker once compiled on after the refusal (four of them,
    // 265 MiB, outlived the sidecar); it must be gone once the plugin is
    // refused. Under a long budget, the sidecar is killed (SIGKILL, no
    // cleanup at all) mid-compile: the worker must die with it.
    let policies = Policies::new();
    let slow = policies.dir.path().join("slow.wasm");
    std::fs::write(&slow, crate::sandbox::slow_to_compile()).unwrap();
    policies.write("slow.toml", &format!("[plugin]\nname = \"slow\"\ncomponent = {:?}\n", slow.display().to_string()));

    let write_budget = |budget: &str| {
        let (root, config) = policies.settings(&format!(
            "[engine]\nmax_instances = 256\ncompile_timeout = \"{budget}\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n"
        ));
        (root, config)
    };
    let (root, config) = write_budget("300ms");
    let sidecar = Sidecar::spawn(&config, &[], root);
    // Waits for the refusal itself: a second, ordinary plugin used as the
    // sign that loading is over could miss the budget too on a busy machine.
    let started = Instant::now();
    while !sidecar.stderr().contains("compile budget of 300ms") {
        assert!(started.elapsed() < Duration::from_secs(30), "not refused: {}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = Instant::now();
    while !compile_workers(sidecar.child.id()).is_empty() {
        assert!(refused.elapsed() < Duration::from_secs(1), "a compile worker outlived the plugin's refusal");
        std::thread::sleep(Duration::from_millis(10));
    }

    let (root, config) = write_budget("60s");
    let mut sidecar = Sidecar::spawn(&config, &[], root);
    let started = Instant::now();
    let worker = loop {
        if let Some(&worker) = compile_workers(sidecar.child.id()).first() {
            break worker;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no compile worker: {}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(5));
    };
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    let killed = Instant::now();
    while alive(worker) {
        assert!(killed.elapsed() < Duration::from_millis(500), "the compile worker outlived the sidecar");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_during_the_first_load_does_not_wait_for_it() {
    // Attack (of sorts): a component that takes seconds to compile, under
    // a long budget, and SIGTERM while it compiles. The sidecar once
    // finished the load first (9.3 s with drain_timeout 1 s); it must stop
    // without completing it, and take its compile worker with it.
    let policies = Policies::new();
    let slow = policies.dir.path().join("slow.wasm");
    std::fs::write(&slow, crate::sandbox::slow_to_compile()).unwrap();
    policies.write("slow.toml", &format!("[plugin]\nname = \"slow\"\ncomponent = {:?}\n", slow.display().to_string()));
    let (root, config) = policies.settings(
        "[engine]\ncompile_timeout = \"60s\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         drain_timeout = \"1s\"\n",
    );
    let mut sidecar = Sidecar::spawn(&config, &[], root);
    let started = Instant::now();
    let worker = loop {
        if let Some(&worker) = compile_workers(sidecar.child.id()).first() {
            break worker;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no compile worker: {}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(5));
    };
    sidecar.signal("TERM");
    let status = sidecar.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", sidecar.stderr());
    let log = sidecar.stderr();
    assert!(!log.contains("policies loaded"), "the load was finished first: {log}");
    let stopped = Instant::now();
    while alive(worker) {
        assert!(stopped.elapsed() < Duration::from_millis(500), "the compile worker outlived the sidecar");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_servers_own_request_lines_are_budgeted_and_the_dropped_counted() {
    // Attack: unauthenticated requests for a plugin that does not exist,
    // as fast as one client can send them (50,000 once wrote 9.7 MB of
    // INFO lines). The per-request lines are bounded per second and what
    // was dropped is reported once the next second opens.
    use gatehouse::api::MAX_REQUEST_LINES_PER_SECOND;
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let started = Instant::now();
    for _ in 0..600 {
        assert_eq!(sidecar.invoke("nope", "x").0, 404);
    }
    let flooded = started.elapsed();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(sidecar.invoke("nope", "x").0, 404);
    let report = "request log budget exceeded; lines dropped";
    let waited = Instant::now();
    while !sidecar.stderr().contains(report) {
        assert!(waited.elapsed() < Duration::from_secs(5), "no report of dropped lines: {}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = sidecar.stderr().lines().filter(|l| l.contains("invocation failed")).count() as u64;
    let windows = flooded.as_secs() + 3;
    assert!(lines <= windows * MAX_REQUEST_LINES_PER_SECOND, "{lines} lines in {flooded:?}");
    assert!(lines < 600, "{lines}");
    // And the budget is what it says: a window with 100 short lines to
    // write writes them all (a byte budget cut to ~1 KiB wrote 34).
    assert!(lines >= MAX_REQUEST_LINES_PER_SECOND, "{lines} lines in {flooded:?}");
}

#[test]
fn each_load_warns_of_a_guaranteed_plugin_no_policy_grants_the_database() {
    // A misspelt name in `guaranteed_connections` keeps its places from
    // every other plugin (an outside review): each load says so, for that
    // name only, and again after a reload.
    let policies = Policies::new();
    policies.plugin("q", "sql_demo", "[sql.app]\nstatements = [\"select\"]\n[sql.app.tables]\nproducts = \"select\"\n");
    let databases = "[databases.app]\nsqlite = \"app.db\"\nmax_connections = 6\n\
                     guaranteed_connections = { q = 1, reprots = 1 }\n";
    let sidecar = Sidecar::start(&policies, databases, &[]);
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("guaranteed_connections names a plugin"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    while warnings(&sidecar.stderr()).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no warning: {}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = warnings(&sidecar.stderr());
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("WARN") && first[0].contains("plugin=\"reprots\"") && first[0].contains("places=1"));
    sidecar.signal("HUP");
    while warnings(&sidecar.stderr()).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "not warned again: {}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(warnings(&sidecar.stderr()).iter().all(|w| w.contains("plugin=\"reprots\"")), "{}", sidecar.stderr());
}
