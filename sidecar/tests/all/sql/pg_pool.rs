//! The gateway's PostgreSQL pool (`services::sql::pg_pool`): connections
//! remember the session they carry, the pool lends one already in the
//! caller's session when it has one, a session is set only when it
//! differs, and a connection the server dropped is replaced (checked when
//! idle past `CHECK_AFTER`, closed when setting a session finds it dead).

use std::time::Duration;

use gatehouse::services::sql::pg_pool::{CHECK_AFTER, PgPool, PooledPg, Session, pg_pool};
use sqlx::Executor as _;

use crate::postgres::TestPostgres;

fn start() -> (TestPostgres, PgPool) {
    let server = TestPostgres::start("gateway", "gateway-pw", "shop");
    server.psql(
        "CREATE ROLE reader NOLOGIN; GRANT reader TO gateway; CREATE ROLE writer NOLOGIN; GRANT writer TO gateway",
    );
    let pool = pg_pool(server.url().parse().unwrap(), 2, Duration::from_secs(5));
    (server, pool)
}

async fn pid(conn: &mut PooledPg) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()").persistent(false).fetch_one(&mut ***conn).await.unwrap()
}

async fn current_role(conn: &mut PooledPg) -> String {
    sqlx::query_scalar("SELECT current_user::text").persistent(false).fetch_one(&mut ***conn).await.unwrap()
}

/// Two connections in two sessions: each caller gets the one already in
/// its own, whichever was returned last; a session is entered once (a
/// second `enter` sends nothing, shown by a session whose query would now
/// fail); the sidecar's own session resets the role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_the_callers_session_is_preferred_and_not_set_again() {
    let (server, pool) = start();
    let (reader, writer) = (
        Session::plugin("reader", Duration::from_secs(5), 1 << 20),
        Session::plugin("writer", Duration::from_secs(5), 1 << 20),
    );
    let mut a = reader.acquire(&pool).await.unwrap();
    let mut b = writer.acquire(&pool).await.unwrap();
    assert_eq!((current_role(&mut a).await, current_role(&mut b).await), ("reader".into(), "writer".into()));
    let (pid_a, pid_b) = (pid(&mut a).await, pid(&mut b).await);
    drop(a);
    drop(b);
    for _ in 0..3 {
        let mut a = reader.acquire(&pool).await.unwrap();
        assert_eq!(pid(&mut a).await, pid_a, "the reader's connection, though the writer's came back last");
        drop(a);
        let mut b = writer.acquire(&pool).await.unwrap();
        assert_eq!(pid(&mut b).await, pid_b);
        drop(b);
    }
    // Not sent again: with the role gone the query would fail.
    server.psql(
        "REASSIGN OWNED BY reader TO gateway; DROP OWNED BY reader; REVOKE reader FROM gateway; DROP ROLE reader",
    );
    let mut a = reader.acquire(&pool).await.unwrap();
    assert_eq!(pid(&mut a).await, pid_a);
    // Another session on it is set (and the reset of the sidecar's own
    // brings back the login).
    Session::own().enter(&mut a).await.unwrap();
    assert_eq!(current_role(&mut a).await, "gateway");
    assert_eq!(a.session(), Some(Session::own().as_str()));
    // A refused setting leaves the connection usable, in no session.
    let refused = reader.enter(&mut a).await.unwrap_err();
    assert!(refused.to_string().contains("reader"), "{refused}");
    assert_eq!(a.session(), None);
    assert_eq!(pid(&mut a).await, pid_a);
    drop(a);
    assert_eq!(pool.usage(), (2, 2), "the connection whose setting was refused was closed, though fine");
}

/// The server restarted under idle connections: one idle past
/// `CHECK_AFTER` is checked and replaced before it is lent (the caller
/// sees nothing); one idle for less fails the setting of a session, and
/// is closed rather than handed to the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_dropped_are_replaced() {
    let (server, pool) = start();
    let reader = Session::plugin("reader", Duration::from_secs(5), 1 << 20);
    let writer = Session::plugin("writer", Duration::from_secs(5), 1 << 20);
    drop(reader.acquire(&pool).await.unwrap());
    assert_eq!(pool.usage(), (1, 1));

    server.pause();
    server.resume();
    // Idle for less than CHECK_AFTER: lent unchecked, and a session change
    // finds it dead.
    let mut conn = pool.acquire(Some(writer.as_str())).await.unwrap();
    assert!(writer.enter(&mut conn).await.is_err());
    drop(conn);
    let waited = std::time::Instant::now();
    while pool.usage() != (0, 0) {
        assert!(waited.elapsed() < Duration::from_secs(10), "the dead connection was kept: {:?}", pool.usage());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conn = writer.acquire(&pool).await.unwrap();
    assert_eq!(current_role(&mut conn).await, "writer");
    drop(conn);

    // Idle for longer: checked, and replaced without an error.
    server.pause();
    server.resume();
    tokio::time::sleep(CHECK_AFTER + Duration::from_millis(200)).await;
    let mut conn = writer.acquire(&pool).await.unwrap();
    assert_eq!(current_role(&mut conn).await, "writer");
    conn.execute("SELECT 1").await.unwrap();
}

/// A session's settings run under the previous session's
/// `statement_timeout`, which may be a plugin's 1 ms: cancelled by it,
/// they are sent again once it is cleared, so one plugin's tiny timeout
/// never fails another's call. Attack (an outside review): a 1 ms plugin
/// alternating with others on one connection failed ~1 switch in 700.
/// The switch's own `RESET ALL` clears the timeout, so it can only cut
/// the two statements before it, too short for a test to slow down; a
/// cancel request (the same `query_canceled`) sent while the switch
/// waits on a lock its `SET ROLE` needs stands in for it, twice (the
/// retries go on), and then the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_cancelled_under_a_tiny_timeout_left_on_a_connection_is_sent_again() {
    use sqlx::Connection as _;
    let (server, pool) = start();
    server.psql("ALTER ROLE gateway SUPERUSER");
    let tiny = Session::plugin("reader", Duration::from_millis(1), 1 << 20);
    let writer = Session::plugin("writer", Duration::from_secs(5), 1 << 20);
    let mut conn = tiny.acquire(&pool).await.unwrap();
    let switching = pid(&mut conn).await;
    // Connected before the lock, which a login waits on.
    let mut locker = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker.execute("LOCK TABLE pg_catalog.pg_authid IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let entering = tokio::spawn(async move { writer.enter(&mut conn).await.map(|()| conn) });
    // Each attempt is told apart by its start.
    let mut cancelled_start = None;
    for attempt in 0..2 {
        let waited = std::time::Instant::now();
        loop {
            let waiting: Option<String> = sqlx::query_scalar(
                // Not the view `pg_stat_activity`, which reads `pg_authid`.
                "SELECT query_start::text FROM pg_stat_get_activity($1) WHERE wait_event_type = 'Lock'",
            )
            .bind(switching)
            .fetch_optional(&mut watcher)
            .await
            .unwrap();
            if waiting.is_some() && waiting != cancelled_start {
                cancelled_start = waiting;
                break;
            }
            assert!(!entering.is_finished(), "attempt {attempt}: the switch gave up instead of waiting on the lock");
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "attempt {attempt}: the switch never waited on the lock"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sqlx::query("SELECT pg_cancel_backend($1)").bind(switching).execute(&mut watcher).await.unwrap();
    }
    // The third attempt waits too; the lock goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    locker.execute("ROLLBACK").await.unwrap();
    let mut conn = entering.await.unwrap().expect("the settings, once the lock is gone");
    assert_eq!(current_role(&mut conn).await, "writer");
    let timeout: String =
        sqlx::query_scalar("SHOW statement_timeout").persistent(false).fetch_one(&mut **conn).await.unwrap();
    assert_eq!(timeout, "5s");
}

/// What a plugin's calls leave in the server process beyond settings,
/// which `SET ROLE` keeps, is undone when another session takes the
/// connection (two outside reviews reached these through the checker:
/// `lastval()` read another plugin's insert ids, `setseed()` chose its
/// `random()`; an advisory lock outlived the call). Attacks, each run
/// straight on the connection as the first session's role (the checker
/// would refuse them): a sequence used, then `lastval()`/`currval()` in
/// the next session; `setseed(0.42)`, then the next session's `random()`
/// against the value that seed gives; an advisory lock taken, then looked
/// for in `pg_locks`; settings changed with `set_config`, then `SHOW`n.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn another_session_finds_no_sequence_seed_or_lock_of_the_one_before() {
    let (server, _) = start();
    let pool = pg_pool(server.url().parse().unwrap(), 1, Duration::from_secs(5));
    {
        let mut own = Session::own().acquire(&pool).await.unwrap();
        let create = "CREATE SEQUENCE ids; GRANT USAGE ON SEQUENCE ids TO reader, writer";
        (**own).execute(sqlx::raw_sql(create)).await.unwrap();
    }
    let (reader, writer) = (
        Session::plugin("reader", Duration::from_secs(5), 1 << 20),
        Session::plugin("writer", Duration::from_secs(5), 1 << 20),
    );
    let run = |sql: &'static str| sqlx::query(sql).persistent(false);
    let value = |sql: &'static str| sqlx::query_scalar::<_, f64>(sql).persistent(false);
    // What `random()` gives right after `setseed(0.42)` on this server.
    let seeded = {
        let mut c = reader.acquire(&pool).await.unwrap();
        run("SELECT setseed(0.42)").execute(&mut **c).await.unwrap();
        value("SELECT random()").fetch_one(&mut **c).await.unwrap()
    };
    for _ in 0..2 {
        let mut a = reader.acquire(&pool).await.unwrap();
        let process = pid(&mut a).await;
        run("SELECT nextval('ids')").execute(&mut **a).await.unwrap();
        run("SELECT pg_advisory_lock(7)").execute(&mut **a).await.unwrap();
        run("SELECT setseed(0.42)").execute(&mut **a).await.unwrap();
        // Settings a plugin reached `set_config` for (a third review: other
        // plugins' writes made read-only, their strings read with escapes).
        run("SELECT set_config('default_transaction_read_only', 'on', false)").execute(&mut **a).await.unwrap();
        run("SELECT set_config('standard_conforming_strings', 'off', false)").execute(&mut **a).await.unwrap();
        drop(a);
        let mut b = writer.acquire(&pool).await.unwrap();
        assert_eq!(pid(&mut b).await, process, "one connection");
        for sql in ["SELECT lastval()", "SELECT currval('ids')"] {
            let error = run(sql).execute(&mut **b).await.unwrap_err().to_string();
            assert!(error.contains("not yet defined in this session"), "{sql}: {error}");
        }
        let random = value("SELECT random()").fetch_one(&mut **b).await.unwrap();
        assert_ne!(random, seeded, "the next session's random() was chosen by the one before");
        let locks: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1")
            .bind(process)
            .persistent(false)
            .fetch_one(&mut **b)
            .await
            .unwrap();
        assert_eq!(locks, 0, "an advisory lock outlived its session");
        let setting = |name: &'static str| sqlx::query_scalar::<_, String>(name).persistent(false);
        let read_only = setting("SHOW default_transaction_read_only").fetch_one(&mut **b).await.unwrap();
        let strings = setting("SHOW standard_conforming_strings").fetch_one(&mut **b).await.unwrap();
        assert_eq!((read_only.as_str(), strings.as_str()), ("off", "on"), "a setting outlived its session");
    }
}
