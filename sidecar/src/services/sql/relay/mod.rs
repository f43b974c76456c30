//! The gateway's PostgreSQL connections pass through this relay, so that a
//! row longer than the call may return is never read into the sidecar.
//!
//! sqlx reads each message of the PostgreSQL protocol whole before the
//! executor sees it, and has no hook to refuse one by its length: a single
//! value the server builds (`replace()`, `||`, `string_agg`, up to 1 GB)
//! would be held, and decoded twice more, before `max_result_bytes`
//! applied. So sqlx connects to the relay (a Unix socket in a private
//! directory of its own) and the relay to the server. The relay reads each
//! server message's five-byte header before its body: a data row longer
//! than the limit of the transaction it belongs to is answered by an error
//! in its place (SQLSTATE [`OVERSIZED`]), and the connection is closed
//! without reading the rest.
//!
//! The limit comes from the executor, which sets a plugin's session on a
//! connection (its role and settings, [`super::pg_pool`]) with a simple
//! query that begins with [`marker`]. The relay reads it from that `Query`
//! message only: plugins' statements travel in `Parse` messages and never
//! reach a `Query`. It holds until the next marker: the sidecar's own
//! queries (such as the role sync) first set [`marker`]`(`[`UNMARKED`]`)`,
//! under which rows and every other message are read up to
//! [`UNMARKED_LIMIT`], as on a new connection.
//!
//! TLS: sqlx speaks plaintext to the relay (inside this process), and the
//! relay makes the TLS session with the server that sqlx would have made
//! ([`tls`]): same `sslmode` rules, roots, certificate checks and client
//! certificate.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixStream};

mod tls;

pub use tls::Upgrade;

/// The SQLSTATE of the relay's refusal (a class PostgreSQL does not use).
pub const OVERSIZED: &str = "GH001";

/// The limit on a connection no plugin's session is set on, and the least
/// one for any message but a row (an error text that quotes a huge value, say).
pub const UNMARKED_LIMIT: u64 = 1 << 20;

/// The limit's value on a connection no plugin's session is set on.
pub const UNMARKED: u64 = u64::MAX;

/// Room for a row's framing beyond its values' sizes ([`super::Value::size`]):
/// a two-byte column count, and per column a four-byte length plus what the
/// binary form may take beyond the decoded value (at most 9 bytes, a
/// `numeric`), for PostgreSQL's most columns, 1,664.
pub const ROW_SLACK: u64 = 2 + 1664 * 16;

/// How the relayed connection reaches sqlx: `<dir>/.s.PGSQL.<port>`.
const PORT: u16 = 5432;

/// Buffer of each direction.
const BUFFER: usize = 64 << 10;

/// Longest startup message read from sqlx (user, database and options).
const MAX_STARTUP: u64 = 64 << 10;

const MARKER: &str = "/*gatehouse:max-result-bytes=";

/// What the executor puts before a session's settings: the plugin's
/// `max_result_bytes`, which bounds each row until the next marker.
pub fn marker(max_result_bytes: u64) -> String {
    format!("{MARKER}{max_result_bytes}*/ ")
}

/// The `max_result_bytes` a `Query` message's text sets, if it begins
/// with [`marker`].
fn marked(text: &[u8]) -> Option<u64> {
    let rest = text.strip_prefix(MARKER.as_bytes())?;
    let end = rest.iter().position(|&b| b == b'*')?;
    let digits = std::str::from_utf8(&rest[..end]).ok()?;
    digits.parse::<u64>().ok()
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A TCP host and port.
    Tcp(String, u16),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl Upstream {
    /// Where `options` point.
    pub fn of(options: &PgConnectOptions) -> Upstream {
        let socket = |dir: &std::path::Path| Upstream::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port())));
        match options.get_socket() {
            Some(dir) => socket(dir),
            None if options.get_host().starts_with('/') => socket(std::path::Path::new(options.get_host())),
            None => Upstream::Tcp(options.get_host().to_string(), options.get_port()),
        }
    }
}

/// A running relay: its socket's directory (owner-only, removed on drop)
/// and the task that accepts connections.
pub struct Relay {
    dir: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Relay {
    /// Starts relaying to `upstream`, with TLS as `upgrade` says (on the
    /// current tokio runtime).
    pub fn start(upstream: Upstream, upgrade: Upgrade) -> io::Result<Relay> {
        // Owner-only whatever the umask (which can only take bits away):
        // no other user reaches the socket, or can replace it with one of
        // their own that sqlx would send the password to.
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-pg-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let listener = tokio::net::UnixListener::bind(dir.path().join(format!(".s.PGSQL.{PORT}")))?;
        let upstream = Arc::new((upstream, upgrade));
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => drop(tokio::spawn(serve(client, Arc::clone(&upstream)))),
                    Err(error) => {
                        // Out of file descriptors, most likely: sqlx's
                        // connect fails and is retried.
                        tracing::warn!(%error, "the PostgreSQL relay cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Relay { dir, accept })
    }

    /// `options` pointed at the relay (TLS off: the relay is in this
    /// process, and makes the TLS session with the server itself).
    pub fn options(&self, options: &PgConnectOptions) -> PgConnectOptions {
        options.clone().socket(self.dir.path()).port(PORT).ssl_mode(PgSslMode::Disable)
    }
}

/// sqlx's side of a relayed connection, its startup message already read.
struct Client {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    startup: Vec<u8>,
}

/// One relayed connection, until either side closes it or the relay
/// refuses a message.
async fn serve(client: UnixStream, upstream: Arc<(Upstream, Upgrade)>) {
    let (mut read, write) = client.into_split();
    // Read before anything can be refused: closing a socket whose peer is
    // still writing fails that write (EPIPE) and sqlx never sees the
    // refusal. It also keeps the relay from dialling the server for a
    // client that never says who it is.
    let startup = match startup_message(&mut read).await {
        Ok(startup) => startup,
        Err(error) => return tracing::debug!(%error, "a relayed PostgreSQL connection sent no startup message"),
    };
    let client = Client { read, write, startup };
    let (place, upgrade) = &*upstream;
    let outcome = match place {
        Upstream::Tcp(host, port) => match TcpStream::connect((host.as_str(), *port)).await {
            Ok(server) => {
                // As sqlx sets on its own connections: messages are small
                // and each is waited for.
                let _ = server.set_nodelay(true);
                secured(server, upgrade, client).await
            }
            Err(error) => unreachable_server(client.write, &error).await,
        },
        Upstream::Unix(path) => match UnixStream::connect(path).await {
            Ok(server) => secured(server, upgrade, client).await,
            Err(error) => unreachable_server(client.write, &error).await,
        },
    };
    if let Err(error) = outcome {
        tracing::debug!(%error, "a relayed PostgreSQL connection ended");
    }
}

/// sqlx's first message, whole (it has a length but no type byte).
async fn startup_message<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await?;
    let declared = u32::from_be_bytes(length);
    if !(8..=MAX_STARTUP).contains(&u64::from(declared)) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a startup message of {declared} bytes")));
    }
    let mut startup = vec![0u8; declared as usize];
    startup[..4].copy_from_slice(&length);
    from.read_exact(&mut startup[4..]).await?;
    Ok(startup)
}

async fn unreachable_server<W: AsyncWrite + Unpin>(client: W, error: &io::Error) -> io::Result<()> {
    refuse(client, "08001", &format!("the relay cannot reach the database: {error}")).await
}

/// Relays over `server`, first asking it for TLS if `upgrade` says so.
async fn secured<S>(mut server: S, upgrade: &Upgrade, client: Client) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (connector, required) = match upgrade {
        Upgrade::Never => return relay_over(server, client).await,
        Upgrade::Prefer(connector) => (connector, false),
        Upgrade::Require(connector) => (connector, true),
    };
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    server.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8];
    server.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => match connector.connect(server).await {
            Ok(tls) => relay_over(tls, client).await,
            Err(error) => refuse(client.write, "08001", &format!("TLS with the database: {error}")).await,
        },
        b'N' if !required => relay_over(server, client).await,
        b'N' => refuse(client.write, "08001", "the database does not offer TLS, which sslmode requires").await,
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("an answer 0x{other:02x} to SSLRequest"))),
    }
}

/// Relays between sqlx and `server` until either ends: the startup
/// message first, then each message within its bound.
async fn relay_over<S>(server: S, client: Client) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (server_read, mut server_write) = tokio::io::split(server);
    let limit = AtomicU64::new(UNMARKED);
    server_write.write_all(&client.startup).await?;
    let up = to_server(client.read, server_write, &limit);
    let down = to_client(server_read, client.write, &limit);
    // Whichever side ends first ends the connection: both halves drop.
    tokio::select! {
        done = up => done,
        done = down => done,
    }
}

/// sqlx's messages after its startup, unchanged; a `Query` that begins
/// with [`marker`] sets the limit.
async fn to_server<R, W>(from: R, to: W, limit: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let head = |kind, body: u64| if kind == b'Q' { body.min(MARKER_HEAD) as usize } else { 0 };
    let refusal = forward(from, to, head, |_, _, head| {
        if let Some(marked) = marked(head) {
            limit.store(marked, Ordering::SeqCst);
        }
        None
    });
    refusal.await.map(drop)
}

/// The server's messages to sqlx, each within the limit.
async fn to_client<R, W>(from: R, mut to: W, limit: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let over = forward(from, &mut to, |_, _| 0, |kind, body, _| over_limit(kind, body, limit.load(Ordering::SeqCst)));
    let over = over.await?;
    refuse(to, OVERSIZED, &over).await
}

/// How much of a `Query`'s text is read before it is passed on: enough for
/// [`marker`] and its number.
const MARKER_HEAD: u64 = 64;

/// Passes `from`'s messages on to `to` as they come, each whole read at
/// once, until one is refused (its reason is returned, and nothing of it
/// was passed on) or either side fails. `inspect` sees each message's
/// kind, body length and the first `head(kind, body)` bytes of its body
/// before any of it is passed on, and refuses it by answering a reason.
///
/// One read's messages are checked in place and written in one piece: a
/// result's rows are many small messages, and a read and a write per
/// message (or an await per message) would cost more than the rows.
async fn forward<R, W>(
    mut from: R,
    mut to: W,
    head: impl Fn(u8, u64) -> usize,
    mut inspect: impl FnMut(u8, u64, &[u8]) -> Option<String>,
) -> io::Result<String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER];
    // The start of the buffer not yet passed on: the incomplete header (and
    // head) of the next message, left over from the last read.
    let mut held = 0;
    // What is left of the current message's body once its header is passed.
    let mut body_left: u64 = 0;
    loop {
        let read = from.read(&mut buffer[held..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let end = held + read;
        let mut at = 0;
        loop {
            let skipped = body_left.min((end - at) as u64);
            at += skipped as usize;
            body_left -= skipped;
            if at == end || end - at < 5 {
                break;
            }
            let header: [u8; 5] = buffer[at..at + 5].try_into().expect("five bytes");
            let body = body_length(&header)?;
            let wanted = head(header[0], body);
            if end - at - 5 < wanted {
                break;
            }
            if let Some(refused) = inspect(header[0], body, &buffer[at + 5..at + 5 + wanted]) {
                to.write_all(&buffer[..at]).await?;
                return Ok(refused);
            }
            at += 5;
            body_left = body;
        }
        to.write_all(&buffer[..at]).await?;
        // A TLS stream keeps what it was given until flushed.
        to.flush().await?;
        buffer.copy_within(at..end, 0);
        held = end - at;
    }
}

/// Why a server message of `kind` whose body is `body` bytes is not read,
/// under the limit `max` ([`UNMARKED`] or a call's `max_result_bytes`).
fn over_limit(kind: u8, body: u64, max: u64) -> Option<String> {
    let row = kind == b'D';
    let allowed = match max {
        UNMARKED => UNMARKED_LIMIT,
        max if row => max.saturating_add(ROW_SLACK),
        max => max.saturating_add(ROW_SLACK).max(UNMARKED_LIMIT),
    };
    (body > allowed).then(|| match max {
        UNMARKED => {
            format!("a message of {body} bytes: more than the {UNMARKED_LIMIT} the gateway reads outside a call")
        }
        max if row => {
            format!("a row of {body} bytes: more than max_result_bytes = {max} (and {ROW_SLACK} for its framing)")
        }
        _ => format!("a message of {body} bytes from the database: more than the gateway reads ({allowed})"),
    })
}

/// The body length a typed message's header declares.
fn body_length(header: &[u8; 5]) -> io::Result<u64> {
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    length
        .checked_sub(4)
        .map(u64::from)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("a message length of {length}")))
}

/// Answers sqlx with an `ErrorResponse` and ends the connection.
async fn refuse<W: AsyncWrite + Unpin>(mut to: W, code: &str, message: &str) -> io::Result<()> {
    let mut fields = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', message)] {
        fields.push(field);
        fields.extend_from_slice(value.replace('\0', "").as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let length = u32::try_from(fields.len() + 4).map_err(|_| io::Error::other("an error message too long"))?;
    let mut answer = vec![b'E'];
    answer.extend_from_slice(&length.to_be_bytes());
    answer.extend_from_slice(&fields);
    to.write_all(&answer).await?;
    to.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::databases::TlsFiles;

    #[test]
    fn the_marker_sets_the_call_limit_and_nothing_else_does() {
        assert_eq!(marked(marker(1024).as_bytes()), Some(1024));
        assert_eq!(marked(format!("{}BEGIN; SET LOCAL", marker(7)).as_bytes()), Some(7));
        for other in ["BEGIN", " /*gatehouse:max-result-bytes=5*/", "/*gatehouse:max-result-bytes=x*/", ""] {
            assert_eq!(marked(other.as_bytes()), None, "{other:?}");
        }
    }

    /// A socket directory reaches sqlx's options in two ways: a URL's
    /// `host=/dir` sets it as the socket, while `PGHOST=/dir` (or sqlx's
    /// default, the first of its directories holding the server's socket)
    /// leaves it as a host that begins with `/`. Both are Unix sockets.
    #[test]
    fn a_socket_directory_given_as_the_host_is_a_unix_socket() {
        let unix = Upstream::Unix(PathBuf::from("/run/pg/.s.PGSQL.5433"));
        let url: PgConnectOptions = "postgres://u@localhost/db?host=/run/pg&port=5433".parse().unwrap();
        assert_eq!(Upstream::of(&url), unix);
        assert_eq!(Upstream::of(&PgConnectOptions::new().host("/run/pg").port(5433)), unix);
        assert_eq!(
            Upstream::of(&PgConnectOptions::new().host("db.internal").port(5433)),
            Upstream::Tcp("db.internal".into(), 5433)
        );
    }

    /// Each bound at its edge: a row within `max_result_bytes` and its
    /// framing is read, one byte more is not; other messages get at least
    /// the unmarked limit; outside a call, everything gets that.
    #[test]
    fn each_message_is_bounded_at_its_edge() {
        let max = 1000;
        assert_eq!(over_limit(b'D', max + ROW_SLACK, max), None);
        assert!(over_limit(b'D', max + ROW_SLACK + 1, max).unwrap().contains("max_result_bytes = 1000"));
        assert_eq!(over_limit(b'E', UNMARKED_LIMIT, max), None);
        assert!(over_limit(b'E', UNMARKED_LIMIT + 1, max).is_some());
        let big = 64 << 20;
        assert_eq!(over_limit(b'E', big + ROW_SLACK, big), None);
        // Not called a row.
        let other = over_limit(b'E', big + ROW_SLACK + 1, big).unwrap();
        assert!(other.starts_with(&format!("a message of {} bytes from the database", big + ROW_SLACK + 1)), "{other}");
        for kind in [b'D', b'E', b'T'] {
            assert_eq!(over_limit(kind, UNMARKED_LIMIT, UNMARKED), None);
            assert!(over_limit(kind, UNMARKED_LIMIT + 1, UNMARKED).unwrap().contains("outside a call"));
        }
    }

    /// The shortest startup message: its length and protocol 3.0.
    const STARTUP: [u8; 8] = [0, 0, 0, 8, 0, 3, 0, 0];

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    async fn read_message(from: &mut UnixStream) -> (u8, Vec<u8>) {
        let mut header = [0u8; 5];
        from.read_exact(&mut header).await.unwrap();
        let mut body = vec![0u8; body_length(&header).unwrap() as usize];
        from.read_exact(&mut body).await.unwrap();
        (header[0], body)
    }

    /// What a client reads after a row over `max_result_bytes = 100`: the
    /// relay's refusal, then nothing, the connection closed.
    async fn refused_and_closed(client: &mut UnixStream) {
        // Passed on instead, a message cut short would keep the client waiting.
        let (kind, body) =
            tokio::time::timeout(Duration::from_secs(10), read_message(client)).await.expect("no refusal within 10 s");
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(kind, b'E', "{text}");
        assert!(text.contains(OVERSIZED) && text.contains("max_result_bytes = 100"), "{text}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{} more bytes after the refusal", rest.len());
    }

    /// The relay between a client speaking as sqlx does and a hostile
    /// server on loopback. Attacks: a row one byte past the call's bound
    /// (and one at it), a row declaring 1 GiB that the server never sends
    /// (the refusal comes from the header alone, without waiting for the
    /// body), a limit expected to end with its transaction, and a marker
    /// sent inside an extended-protocol `Parse` (as a plugin's statement
    /// would be), which must set nothing.
    #[tokio::test]
    async fn rows_past_the_marked_limit_are_refused_from_their_header() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let relay = Relay::start(Upstream::Tcp("127.0.0.1".into(), port), Upgrade::Never).unwrap();
        let socket = relay.dir.path().join(format!(".s.PGSQL.{PORT}"));
        let max = 100u64;
        let row = |n: u64| message(b'D', &vec![b'x'; n as usize]);
        let idle = message(b'Z', b"I");
        let in_transaction = message(b'Z', b"T");

        // One connection: each step is what the client sends, then what the
        // server answers, then whether the client gets it whole.
        // The relay dials the server once it has the startup message.
        let mut client = UnixStream::connect(&socket).await.unwrap();
        client.write_all(&STARTUP).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        let mut got = [0u8; 8];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, STARTUP);

        let begin = message(b'Q', format!("{}BEGIN\0", marker(max)).as_bytes());
        client.write_all(&begin).await.unwrap();
        let mut got = vec![0u8; begin.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, begin, "the query reaches the server unchanged");
        // At the bound: passed on. (Then the transaction goes on: 'T'.)
        upstream.write_all(&[row(max + ROW_SLACK), in_transaction.clone()].concat()).await.unwrap();
        assert_eq!(read_message(&mut client).await, (b'D', vec![b'x'; (max + ROW_SLACK) as usize]));
        assert_eq!(read_message(&mut client).await.0, b'Z');
        // The limit is the session's until the next marker: the sidecar's
        // own (unmarked) brings back 1 MiB, so a 200 KiB row passes that
        // would not have in the plugin's session.
        let own = message(b'Q', format!("{}RESET ROLE\0", marker(UNMARKED)).as_bytes());
        client.write_all(&own).await.unwrap();
        let mut got = vec![0u8; own.len()];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(&[idle.clone(), row(200 << 10)].concat()).await.unwrap();
        assert_eq!(read_message(&mut client).await.0, b'Z');
        assert_eq!(read_message(&mut client).await.1.len(), 200 << 10);
        // A marker in a `Parse` sets nothing.
        let parse = message(b'P', format!("\0{}SELECT 1\0\0\0", marker(1 << 40)).as_bytes());
        client.write_all(&parse).await.unwrap();
        let mut got = vec![0u8; parse.len()];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(&row(UNMARKED_LIMIT + 1)[..5]).await.unwrap();
        let (kind, body) = read_message(&mut client).await;
        assert_eq!(kind, b'E');
        assert!(String::from_utf8_lossy(&body).contains(OVERSIZED));
        drop((client, upstream));

        // A marked session's row one byte too long (after its transaction
        // ended: the limit outlives it), and a row declaring 1 GiB of which
        // nothing is sent: refused from the header, and the connection is
        // closed both ways.
        for (declared, status) in [(max + ROW_SLACK + 1, &idle), (1 << 30, &in_transaction)] {
            let mut client = UnixStream::connect(&socket).await.unwrap();
            client.write_all(&[&STARTUP[..], &begin].concat()).await.unwrap();
            let (mut upstream, _) = server.accept().await.unwrap();
            let mut got = vec![0u8; STARTUP.len() + begin.len()];
            upstream.read_exact(&mut got).await.unwrap();
            let mut header = row(0)[..5].to_vec();
            header[1..5].copy_from_slice(&(declared as u32 + 4).to_be_bytes());
            upstream.write_all(&[status.clone(), header].concat()).await.unwrap();
            assert_eq!(read_message(&mut client).await.0, b'Z');
            tokio::time::timeout(Duration::from_secs(10), refused_and_closed(&mut client)).await.unwrap();
            assert_eq!(upstream.read(&mut [0u8; 1]).await.unwrap(), 0, "the server side stays open");
        }
    }

    /// Writes `bytes` in pieces cut at `cuts` (offsets), pausing between
    /// them so that each arrives in a read of its own.
    async fn dribble<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8], cuts: &[usize]) {
        let mut from = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            to.write_all(&bytes[from..cut]).await.unwrap();
            to.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            from = cut;
        }
    }

    /// The relay reads whatever arrives and checks each message in it, so
    /// a message cut anywhere must be judged as the whole it is. Attacks:
    /// the marker's `Query` cut inside its text, up to a few bytes short of
    /// its head (the limit must still be set), rows cut inside their
    /// header or body and several in one piece (all passed on whole), and
    /// an oversized row whose header arrives in two pieces after a good
    /// row in the same piece (the good row is passed on, nothing of the
    /// oversized one is).
    #[tokio::test]
    async fn messages_cut_anywhere_are_judged_whole() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let relay = Relay::start(Upstream::Tcp("127.0.0.1".into(), port), Upgrade::Never).unwrap();
        let mut client = UnixStream::connect(relay.dir.path().join(format!(".s.PGSQL.{PORT}"))).await.unwrap();
        client.write_all(&STARTUP).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        upstream.read_exact(&mut [0u8; 8]).await.unwrap();

        let max = 100u64;
        let begin = message(b'Q', format!("{}BEGIN\0", marker(max)).as_bytes());
        // The last cut leaves the head three bytes short, inside the limit's
        // digits: judged on what has come, it would set no limit.
        dribble(&mut client, &begin, &[2, 5, 6, 20, 30, 36]).await;
        let mut got = vec![0u8; begin.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, begin, "the query reaches the server whole");

        let row = |n: u64, fill: u8| message(b'D', &vec![fill; n as usize]);
        let rows = [row(max, b'a'), row(3, b'b'), row(max + ROW_SLACK, b'c'), row(0, b'd')].concat();
        dribble(&mut upstream, &rows, &[1, 4, 5, 50, 110, 115, 120]).await;
        for (n, fill) in [(max, b'a'), (3, b'b'), (max + ROW_SLACK, b'c'), (0, b'd')] {
            assert_eq!(read_message(&mut client).await, (b'D', vec![fill; n as usize]));
        }

        let over = row(max + ROW_SLACK + 1, b'x');
        let good = row(7, b'g');
        let piece = [&good[..], &over[..2]].concat();
        dribble(&mut upstream, &[piece, over[2..5].to_vec()].concat(), &[good.len() + 2]).await;
        assert_eq!(read_message(&mut client).await, (b'D', vec![b'g'; 7]));
        refused_and_closed(&mut client).await;
    }

    /// A server that cannot be reached is said so in PostgreSQL's words,
    /// not as a bare closed socket, even to a client slow to send its
    /// startup message (a loaded sqlx: were the relay to refuse first and
    /// close, the client's write would fail with EPIPE and the refusal
    /// would be lost).
    #[tokio::test]
    async fn a_server_that_cannot_be_reached_is_an_error_message() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let relay = Relay::start(Upstream::Tcp("127.0.0.1".into(), port), Upgrade::Never).unwrap();
        let mut client = UnixStream::connect(relay.dir.path().join(format!(".s.PGSQL.{PORT}"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(&STARTUP).await.expect("the relay waits for the startup message");
        let (kind, body) = read_message(&mut client).await;
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(kind, b'E');
        assert!(text.contains("08001") && text.contains("cannot reach the database"), "{text}");
    }

    /// `sslmode` as sqlx reads it: `disable` and `allow` never ask for
    /// TLS, `prefer` goes on in plaintext when the server says `N`, the
    /// others are refused then; a client certificate needs its key.
    #[tokio::test]
    async fn a_server_without_tls_is_plaintext_only_where_sqlx_allows_it() {
        let options = |mode| PgConnectOptions::new().host("127.0.0.1").ssl_mode(mode);
        let none = TlsFiles::default();
        for (mode, expected) in [
            (PgSslMode::Disable, "never"),
            (PgSslMode::Allow, "never"),
            (PgSslMode::Prefer, "prefer"),
            (PgSslMode::Require, "require"),
            (PgSslMode::VerifyCa, "require"),
            (PgSslMode::VerifyFull, "require"),
        ] {
            assert_eq!(format!("{:?}", Upgrade::of(&options(mode), &none).unwrap()), expected);
        }
        let lone =
            TlsFiles { client: Some(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_vec()), ..none };
        assert!(Upgrade::of(&options(PgSslMode::Require), &lone).is_err());

        // A server that answers `N`, then echoes what it gets.
        for (mode, plaintext) in
            [(PgSslMode::Prefer, true), (PgSslMode::Require, false), (PgSslMode::VerifyFull, false)]
        {
            let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = server.local_addr().unwrap().port();
            let upgrade = Upgrade::of(&options(mode), &TlsFiles::default()).unwrap();
            let relay = Relay::start(Upstream::Tcp("127.0.0.1".into(), port), upgrade).unwrap();
            let mut client = UnixStream::connect(relay.dir.path().join(format!(".s.PGSQL.{PORT}"))).await.unwrap();
            client.write_all(&STARTUP).await.unwrap();
            let (mut upstream, _) = server.accept().await.unwrap();
            let mut request = [0u8; 8];
            upstream.read_exact(&mut request).await.unwrap();
            assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "{mode:?} asks for TLS");
            upstream.write_all(b"N").await.unwrap();
            if plaintext {
                let mut got = [0u8; 8];
                upstream.read_exact(&mut got).await.unwrap();
                assert_eq!(got, STARTUP);
            } else {
                let (kind, body) = read_message(&mut client).await;
                let text = String::from_utf8_lossy(&body).to_string();
                assert_eq!(kind, b'E');
                assert!(text.contains("does not offer TLS"), "{text}");
            }
        }
    }

    /// Attack (the relay's outside review): under umask 000 the directory
    /// was 0777, so another local user could replace the socket with a
    /// listener of their own and receive the login's password. It is
    /// owner-only whatever the umask.
    #[tokio::test]
    async fn the_socket_directory_is_owner_only_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let old = rustix::process::umask(rustix::fs::Mode::empty());
        let relay = Relay::start(Upstream::Tcp("127.0.0.1".into(), 1), Upgrade::Never);
        rustix::process::umask(old);
        let relay = relay.unwrap();
        let mode = std::fs::metadata(relay.dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        let dir = relay.dir.path().to_path_buf();
        drop(relay);
        assert!(!dir.exists(), "removed with the relay");
    }
}
