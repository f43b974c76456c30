//! The gateway's PostgreSQL relay (`services::sql::relay`) over TLS: it
//! makes the TLS session sqlx would have made, so relaying changes nothing
//! about how a connection is secured, and rows are bounded inside TLS too.
//!
//! The server takes TCP logins over TLS only (`hostssl`), with a
//! certificate for `localhost` from a test CA. Tried, each on a gateway of
//! its own (sqlx's rules, which the relay follows):
//! - `verify-full` with the CA: served; with another CA, or by the address
//!   `127.0.0.1` (not the certificate's name): refused, naming the
//!   certificate;
//! - `verify-ca` by the address, with the CA: served (the name is not
//!   checked); with another CA: refused;
//! - `require` and `prefer` with another CA: served (sqlx checks no
//!   certificate in these modes);
//! - `disable`: refused by the server (no encryption);
//! - a 64 MB value under `max_result_bytes = 64 KiB` over `verify-full`:
//!   `quota-exceeded`, without the sidecar holding it.

use gatehouse::ErrorKind;
use gatehouse::databases::{DatabaseSettings, UrlSource};
use gatehouse::services::sql::exec::{Guard, Limits, checked};
use gatehouse::services::sql::{Dialect, Door, SqlConnection, SqlError, SqlGateway, SqlPolicy, Value};
use gatehouse::stop::Stop;

use super::support::{TestDb, peak_rss_bytes, policy, pool};
use crate::postgres::test_ca;

async fn query(url: &str, policy: &SqlPolicy, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SqlError> {
    let mut settings = DatabaseSettings::postgres(UrlSource::Inline(url.to_string()));
    settings.pool = pool(2, 2);
    let gateway = SqlGateway::new(&std::collections::BTreeMap::from([("db".to_string(), settings)]));
    let alias = gateway.alias("db").unwrap();
    let checked = checked(Door::Gatehouse, Dialect::Postgres, policy, sql, params)?;
    let guard = Guard::new(Dialect::Postgres, policy, Door::Gatehouse);
    let mut connection = SqlConnection::open(alias, "p", &guard, &Stop::new()).await?;
    connection.query(&checked, sql, params, Limits::from(policy)).await.map(|rows| rows.rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_makes_the_tls_session_sqlx_would() {
    let (trusted, other) = (test_ca("gatehouse test CA"), test_ca("another CA"));

    let db = TestDb::start(Dialect::Postgres).await;
    let TestDb::Postgres(server) = &db else { unreachable!() };
    server.require_tls(&trusted);
    let dir = tempfile::tempdir().unwrap();
    let (trusted_pem, other_pem) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&trusted_pem, trusted.pem()).unwrap();
    std::fs::write(&other_pem, other.pem()).unwrap();
    let url = |host: &str, mode: &str, ca: &std::path::Path| {
        format!("postgres://gateway:gateway-pw@{host}:{}/shop?sslmode={mode}&sslrootcert={}", server.port, ca.display())
    };
    let policy = policy("max_result_bytes = \"64 KiB\"");
    let point = "SELECT name FROM products WHERE id = $1";
    let widget = vec![vec![Value::Text("widget".into())]];

    for (host, mode, ca) in [
        ("localhost", "verify-full", &trusted_pem),
        ("127.0.0.1", "verify-ca", &trusted_pem),
        ("localhost", "require", &other_pem),
        ("localhost", "prefer", &other_pem),
    ] {
        let rows = query(&url(host, mode, ca), &policy, point, &[Value::Int(1)]).await;
        assert_eq!(rows.unwrap_or_else(|e| panic!("{mode} {host}: {e}")), widget, "{mode} {host}");
    }
    for (host, mode, ca, why) in [
        ("localhost", "verify-full", &other_pem, "certificate"),
        ("127.0.0.1", "verify-full", &trusted_pem, "certificate"),
        ("127.0.0.1", "verify-ca", &other_pem, "certificate"),
        ("localhost", "disable", &trusted_pem, "no encryption"),
    ] {
        let error = query(&url(host, mode, ca), &policy, point, &[Value::Int(1)]).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{mode} {host}: {error}");
        assert!(error.to_string().contains(why), "{mode} {host}: {error}");
    }

    // Inside TLS the relay still reads each row's length first.
    let verified = url("localhost", "verify-full", &trusted_pem);
    let sql = "SELECT replace($1, 'a', $1) AS v";
    let before = peak_rss_bytes(true);
    let error = query(&verified, &policy, sql, &[Value::Text("a".repeat(8000))]).await.unwrap_err();
    let grown = peak_rss_bytes(false).saturating_sub(before);
    assert_eq!(error.kind(), ErrorKind::QuotaExceeded, "{error}");
    assert!(grown < 16 << 20, "the peak memory grew by {grown} bytes for a refused 64 MB value over TLS");
}
