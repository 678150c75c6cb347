//! The connection attempt loop: hosts, addresses, password file, TLS, timeouts, and
//! one-line error messages.

use std::error::Error as StdError;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::config::SslNegotiation;
use tokio_postgres::{Client, Config, NoTls};

use super::pgpass::{self, Lookup};
use super::tls::{self, TlsKey, Verify};
use super::{ConnectError, ConnectOptions, FailureKind, SslMode, Target, io_text, lower_first};

/// One failed attempt.
struct Failure {
    kind: FailureKind,
    code: Option<String>,
    cause: String,
    /// Stop trying other hosts (libpq stops once a server has answered with an error).
    fatal: bool,
}

impl Failure {
    fn new(kind: FailureKind, cause: impl Into<String>) -> Self {
        Failure {
            kind,
            code: None,
            cause: cause.into(),
            fatal: false,
        }
    }
}

/// The TLS plan for TCP attempts: tokio-postgres's mode and our rustls configuration key.
fn tls_plan(o: &ConnectOptions) -> Option<(tokio_postgres::config::SslMode, TlsKey)> {
    use tokio_postgres::config::SslMode as Pg;
    let key = |verify: Verify| TlsKey {
        verify,
        roots: match verify {
            Verify::Nothing => None,
            _ => o.root_certs.clone(),
        },
        client: o.client_cert.clone(),
        sni: o.tuning.sni,
    };
    Some(match o.ssl_mode {
        SslMode::Disable => return None,
        SslMode::Allow | SslMode::Prefer => (Pg::Prefer, key(Verify::Nothing)),
        SslMode::Require if o.root_certs.is_some() => (Pg::Require, key(Verify::Chain)),
        SslMode::Require => (Pg::Require, key(Verify::Nothing)),
        SslMode::VerifyCa => (Pg::Require, key(Verify::Chain)),
        SslMode::VerifyFull => (Pg::Require, key(Verify::Full)),
    })
}

/// A random permutation (for `load_balance_hosts=random`), seeded from std's hasher keys.
fn shuffle<T>(items: &mut [T]) {
    let mut state = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

/// Runs `fut` within the connect timeout, if there is one.
async fn within<T>(
    timeout: Option<Duration>,
    fut: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match timeout {
        None => fut.await,
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            Err(Failure::new(
                FailureKind::Timeout,
                format!("timed out after {}", humantime::format_duration(t)),
            ))
        }),
    }
}

/// See [`ConnectOptions::connect`].
pub(super) async fn connect(
    o: &ConnectOptions,
    notify: Option<&Notifications>,
) -> Result<Client, ConnectError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ConnectError::NoRuntime);
    }
    let fail = |f: Failure| ConnectError::Failed {
        target: o.describe(),
        kind: f.kind,
        code: f.code,
        cause: f.cause,
    };

    let plan = tls_plan(o);
    let mut connector = None;
    let mut order: Vec<usize> = (0..o.hosts.len()).collect();
    if o.tuning.load_balance {
        shuffle(&mut order);
    }
    let mut failures: Vec<(String, Failure)> = Vec::new();
    for i in order {
        let target = &o.hosts[i];
        let addresses = match target {
            Target::Unix { .. } => vec![None],
            Target::Tcp {
                addr: Some(addr), ..
            } => vec![Some(*addr)],
            Target::Tcp { host, port, .. } => match host.parse::<IpAddr>() {
                Ok(ip) => vec![Some(ip)],
                Err(_) => match within(o.connect_timeout, lookup(host, *port)).await {
                    Ok(mut ips) => {
                        if o.tuning.load_balance {
                            shuffle(&mut ips);
                        }
                        ips.into_iter().map(Some).collect()
                    }
                    Err(f) => {
                        failures.push((target.to_string(), f));
                        continue;
                    }
                },
            },
        };
        let several = addresses.len() > 1;
        for ip in addresses {
            // TLS is set up on first need only, so plain and socket connections never pay.
            let tls = match (target, &plan) {
                (Target::Tcp { .. }, Some((mode, key))) => {
                    if connector.is_none() {
                        let made = tls::connector(key).await.map_err(|reason| {
                            fail(Failure::new(FailureKind::Tls, format!("tls: {reason}")))
                        })?;
                        connector = Some(made);
                    }
                    connector.clone().map(|c| (*mode, c))
                }
                _ => None,
            };
            match attempt(o, target, ip, tls, notify).await {
                Ok(client) => return Ok(client),
                Err(f) => {
                    let label = match ip {
                        Some(ip) if several => format!("{target} ({ip})"),
                        _ => target.to_string(),
                    };
                    let fatal = f.fatal;
                    failures.push((label, f));
                    if fatal {
                        return Err(fail(summarize(failures)));
                    }
                }
            }
        }
    }
    Err(fail(summarize(failures)))
}

/// Folds the per-attempt failures into one: the cause alone when there was one attempt,
/// else `label: cause; label: cause`. The kind and code are the last attempt's.
fn summarize(failures: Vec<(String, Failure)>) -> Failure {
    let several = failures.len() > 1;
    let mut parts = Vec::with_capacity(failures.len());
    let mut last = None;
    for (label, f) in failures {
        parts.push(if several {
            format!("{label}: {}", f.cause)
        } else {
            f.cause.clone()
        });
        last = Some(f);
    }
    match last {
        Some(mut f) => {
            f.cause = parts.join("; ");
            f
        }
        None => Failure::new(FailureKind::Other, "no host to connect to"),
    }
}

/// Resolves a host name (inside the caller's timeout).
async fn lookup(host: &str, port: u16) -> Result<Vec<IpAddr>, Failure> {
    let what = format!("could not translate host name \"{host}\" to address");
    let addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| {
        let text = io_text(&e);
        let text = text
            .strip_prefix("failed to lookup address information: ")
            .map_or(text.clone(), lower_first);
        Failure::new(FailureKind::Unreachable, format!("{what}: {text}"))
    })?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if !ips.contains(&a.ip()) {
            ips.push(a.ip());
        }
    }
    if ips.is_empty() {
        return Err(Failure::new(
            FailureKind::Unreachable,
            format!("{what}: no addresses"),
        ));
    }
    Ok(ips)
}

/// One attempt at one address (or socket), within the connect timeout.
async fn attempt(
    o: &ConnectOptions,
    target: &Target,
    ip: Option<IpAddr>,
    tls: Option<(
        tokio_postgres::config::SslMode,
        tokio_postgres_rustls::MakeRustlsConnect,
    )>,
    notify: Option<&Notifications>,
) -> Result<Client, Failure> {
    let mut cfg = Config::new();
    cfg.user(&o.user)
        .dbname(&o.dbname)
        .application_name(&o.application_name)
        .keepalives(o.tuning.keepalives)
        .target_session_attrs(o.tuning.target_session_attrs)
        .channel_binding(o.tuning.channel_binding);
    if let Some(options) = &o.options {
        cfg.options(options);
    }
    if let Some(d) = o.tuning.keepalives_idle {
        cfg.keepalives_idle(d);
    }
    if let Some(d) = o.tuning.keepalives_interval {
        cfg.keepalives_interval(d);
    }
    if let Some(n) = o.tuning.keepalives_count {
        cfg.keepalives_retries(n);
    }
    if let Some(d) = o.tuning.tcp_user_timeout {
        cfg.tcp_user_timeout(d);
    }
    match target {
        Target::Unix { dir, port } => {
            cfg.host_path(dir).port(*port);
        }
        Target::Tcp { port, .. } => {
            cfg.host(target.tls_name()).port(*port);
            if let Some(ip) = ip {
                cfg.hostaddr(ip);
            }
        }
    }

    let mut from_file = None;
    let mut file_note = None;
    match &o.password {
        Some(pw) => {
            cfg.password(pw.as_bytes());
        }
        None => {
            if let Some(path) = &o.passfile {
                let host = match target {
                    Target::Unix { dir, .. } if *dir == o.default_socket_dir => {
                        "localhost".to_string()
                    }
                    _ => target.tls_name(),
                };
                match pgpass::lookup(path, &host, target.port(), &o.dbname, &o.user) {
                    Lookup::Found(pw) => {
                        cfg.password(pw.into_bytes());
                        from_file = Some(path.display().to_string());
                    }
                    Lookup::NotFound => {}
                    Lookup::Ignored(why) => file_note = Some(why),
                }
            }
        }
    }

    let run = async {
        let result = match tls {
            None => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                cfg.connect(NoTls).await.map(|(client, connection)| {
                    drive(connection, notify.cloned());
                    client
                })
            }
            Some((mode, connector)) => {
                cfg.ssl_mode(mode);
                if o.tuning.direct_tls {
                    cfg.ssl_negotiation(SslNegotiation::Direct);
                }
                cfg.connect(connector).await.map(|(client, connection)| {
                    drive(connection, notify.cloned());
                    client
                })
            }
        };
        result.map_err(|e| classify(&e, target, o))
    };
    within(o.connect_timeout, run).await.map_err(|mut f| {
        if f.kind == FailureKind::Auth {
            if let Some(path) = &from_file {
                f.cause.push_str(&format!(" (password from \"{path}\")"));
            } else if let Some(note) = &file_note {
                f.cause.push_str(&format!("; {note}"));
            }
        }
        f
    })
}

/// Where a listening connection sends its notifications.
pub(super) type Notifications = tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>;

/// Runs the connection on the current runtime. Errors surface through the client (it
/// reports itself closed); notifications go to `notify` when there is one.
fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, notify: Option<Notifications>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Some(notify) = notify else {
            let _ = connection.await;
            return;
        };
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = notify.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
}

/// The errors in `e`'s source chain, looking inside `io::Error`s too (their `source()`
/// skips the wrapped error).
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        out.push(err);
        next = match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
        if out.len() > 16 {
            break;
        }
    }
    out
}

/// Turns a tokio-postgres connect error into a one-line cause.
fn classify(e: &tokio_postgres::Error, target: &Target, o: &ConnectOptions) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_string();
        let kind = if code.starts_with("28") {
            FailureKind::Auth
        } else {
            FailureKind::Server
        };
        return Failure {
            kind,
            code: Some(code),
            cause: db.message().to_string(),
            fatal: true,
        };
    }
    let errors = chain(e);
    if let Some(r) = errors
        .iter()
        .find_map(|x| x.downcast_ref::<rustls::Error>())
    {
        let roots = match o.root_certs.clone() {
            Some(r) => Some(r),
            None if matches!(o.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                Some(tls::RootCerts::System)
            }
            None => None,
        };
        return Failure::new(
            FailureKind::Tls,
            format!("tls: {}", tls::describe_error(r, roots.as_ref())),
        );
    }
    let texts: Vec<String> = errors.iter().map(|x| x.to_string()).collect();
    if texts.first().map(String::as_str) == Some("error performing TLS handshake") {
        let rest = texts.get(1..).unwrap_or_default().join(": ");
        return Failure::new(FailureKind::Tls, format!("tls: {}", lower_first(&rest)));
    }
    if texts.iter().any(|t| t == "password missing") {
        let mut f = Failure::new(
            FailureKind::Auth,
            "the server asked for a password but none was given (set PGPASSWORD, add a ~/.pgpass entry, or put it in the url)",
        );
        f.fatal = true;
        return f;
    }
    if let Some(io) = errors.iter().find_map(|x| x.downcast_ref::<io::Error>()) {
        use io::ErrorKind as K;
        let (kind, cause) = match io.kind() {
            K::ConnectionRefused => (FailureKind::Unreachable, "connection refused".to_string()),
            K::NotFound if matches!(target, Target::Unix { .. }) => (
                FailureKind::Unreachable,
                "no such socket (is the server running locally and accepting connections on it?)"
                    .to_string(),
            ),
            K::TimedOut => (FailureKind::Timeout, "timed out".to_string()),
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                (FailureKind::Unreachable, io_text(io))
            }
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => (
                FailureKind::Other,
                "the server closed the connection unexpectedly".to_string(),
            ),
            _ => (FailureKind::Other, io_text(io)),
        };
        return Failure::new(kind, cause);
    }
    Failure::new(FailureKind::Other, lower_first(&texts.join(": ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_joins_attempts() {
        let f = summarize(vec![
            (
                "a:1".into(),
                Failure::new(FailureKind::Unreachable, "connection refused"),
            ),
            (
                "b:2".into(),
                Failure::new(FailureKind::Timeout, "timed out after 10s"),
            ),
        ]);
        assert_eq!(f.cause, "a:1: connection refused; b:2: timed out after 10s");
        assert_eq!(f.kind, FailureKind::Timeout);
        let f = summarize(vec![(
            "a:1".into(),
            Failure::new(FailureKind::Unreachable, "connection refused"),
        )]);
        assert_eq!(f.cause, "connection refused");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..20).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }
}
