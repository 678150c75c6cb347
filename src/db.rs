//! Connecting to PostgreSQL the way libpq users expect, with TLS through rustls.
//!
//! [`ConnectOptions::resolve`] takes the `--database-url` / `DATABASE_URL` string if there is
//! one — a `postgres://` URL, a libpq `key=value` conninfo string, or a bare database name —
//! and fills everything it leaves unset from the libpq environment variables (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGCONNECT_TIMEOUT`, `PGAPPNAME`, …), then from libpq's defaults. [`ConnectOptions::connect`]
//! tries each host in turn and returns a ready [`tokio_postgres::Client`].
//!
//! Rules followed from libpq:
//! - hosts: comma-separated lists of names, IP addresses and socket directories (a host
//!   starting with `/`); `hostaddr` lists; one port for all hosts or one per host; default
//!   host the socket directory `/var/run/postgresql` (Debian's), else `/tmp`; port 5432.
//!   Hosts are tried in order (shuffled with `load_balance_hosts=random`), each address of a
//!   host name in turn; an authentication or other server error stops the search.
//! - user defaults to the operating-system user, database to the user; `~/.pgpass` (or
//!   `PGPASSFILE` / `passfile`) supplies a password per host when none is given, and is
//!   ignored when group or others can access it.
//! - `sslmode`: `disable`; `allow` (treated as `prefer`: TLS if offered); `prefer` (the
//!   default: TLS without verification if offered, plain otherwise); `require` (TLS without
//!   verification, or with chain verification when a root file exists: `sslrootcert` or
//!   `~/.postgresql/root.crt`); `verify-ca` (chain); `verify-full` (chain and host name).
//!   `sslrootcert=system` uses the system roots and requires `verify-full` (its default then).
//!   Unix sockets never use TLS. Client certificates come from `sslcert`/`sslkey` or
//!   `~/.postgresql/postgresql.crt`/`.key`.
//!
//! Deliberate differences: `connect_timeout` defaults to 10 s (libpq waits forever) and
//! covers the whole attempt to one address (socket, TLS and authentication); verifying modes
//! with no root file use the system roots instead of failing; unknown or unsupported keywords
//! (`service`, `sslcrl`, `require_auth`, …) are errors rather than ignored.
//!
//! No message or `Debug` output contains the password.

mod connect;
#[cfg(test)]
mod live_tests;
mod params;
mod pgpass;
mod resolve;
mod tls;

pub use tls::{https_client_config, no_roots_client_config};

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};

use self::tls::{ClientCert, RootCerts};

/// TLS policy, libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// libpq tries plain first; pgc treats it exactly like [`SslMode::Prefer`].
    Allow,
    /// TLS without certificate checks if the server offers it, plain otherwise (the default).
    Prefer,
    /// TLS mandatory; the certificate chain is checked only when a root file exists.
    Require,
    /// TLS with the chain checked against the roots; the host name is not checked.
    VerifyCa,
    /// TLS with the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses the libpq spelling.
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of thing went wrong while connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No server answered: refused, no such socket, unknown host name, no route.
    Unreachable,
    /// An attempt took longer than `connect_timeout`.
    Timeout,
    /// TLS could not be set up: no TLS on the server, certificate checks, certificate files.
    Tls,
    /// The server rejected the credentials, or wanted a password none was given for.
    Auth,
    /// The server refused for another reason (no such database, too many connections, …).
    Server,
    /// Anything else (the connection broke during startup, …).
    Other,
}

/// Why no connection could be made. Messages are one line, lower-case, and never contain
/// the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL or conninfo string is malformed or has a bad value (the string itself is
    /// never echoed).
    #[error("invalid database url: {0}")]
    InvalidUrl(String),

    /// A libpq environment variable has a bad value.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv {
        /// The variable, e.g. `PGSSLMODE`.
        var: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Settings that are fine one by one but not together (e.g. 3 ports for 2 hosts).
    #[error("invalid connection settings: {0}")]
    InvalidSettings(String),

    /// Every host was tried and failed, or one failed in a way that ends the search.
    #[error("could not connect to {target}: {cause}")]
    Failed {
        /// [`ConnectOptions::describe`]: database, host(s) and port(s), user.
        target: String,
        /// The kind of the (last) failure.
        kind: FailureKind,
        /// The server's SQLSTATE when the server refused the connection.
        code: Option<String>,
        /// What went wrong, per host when several were tried.
        cause: String,
    },

    /// `connect` was called outside a tokio runtime.
    #[error("connecting to the database needs a tokio runtime")]
    NoRuntime,
}

impl ConnectError {
    /// The failure kind, for [`ConnectError::Failed`].
    pub fn kind(&self) -> Option<FailureKind> {
        match self {
            ConnectError::Failed { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether retrying later may succeed: the server was unreachable, timed out, is
    /// starting up or shutting down, or has too many connections.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Failed { kind, code, .. } => match kind {
                FailureKind::Unreachable | FailureKind::Timeout => true,
                FailureKind::Server => matches!(
                    code.as_deref(),
                    Some("57P01" | "57P02" | "57P03" | "53300" | "53000")
                ),
                _ => false,
            },
            _ => false,
        }
    }
}

/// One place to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// TCP: `host` is the name as given (used for TLS and `~/.pgpass`; may be empty when
    /// `addr` is set); `addr` is libpq's `hostaddr`, which skips name resolution.
    Tcp {
        host: String,
        addr: Option<IpAddr>,
        port: u16,
    },
    /// A Unix-domain socket directory.
    Unix { dir: PathBuf, port: u16 },
}

impl Target {
    /// The port.
    fn port(&self) -> u16 {
        match self {
            Target::Tcp { port, .. } | Target::Unix { port, .. } => *port,
        }
    }

    /// The host name for TLS verification: the name, else the address.
    fn tls_name(&self) -> String {
        match self {
            Target::Tcp { host, addr, .. } => match addr {
                Some(a) if host.is_empty() => a.to_string(),
                _ => host.clone(),
            },
            Target::Unix { dir, .. } => dir.display().to_string(),
        }
    }
}

impl fmt::Display for Target {
    /// `db.example.com:5432`, `[::1]:5432`, `db:5432 (hostaddr 10.0.0.1)`,
    /// `/var/run/postgresql/.s.PGSQL.5432`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
            Target::Tcp { host, addr, port } => {
                let name = self.tls_name();
                if name.contains(':') {
                    write!(f, "[{name}]:{port}")?;
                } else {
                    write!(f, "{name}:{port}")?;
                }
                match addr {
                    Some(a) if !host.is_empty() && host != &a.to_string() => {
                        write!(f, " (hostaddr {a})")
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// TCP-level and protocol settings passed through to tokio-postgres.
#[derive(Clone, Debug)]
struct Tuning {
    keepalives: bool,
    keepalives_idle: Option<Duration>,
    keepalives_interval: Option<Duration>,
    keepalives_count: Option<u32>,
    tcp_user_timeout: Option<Duration>,
    target_session_attrs: TargetSessionAttrs,
    channel_binding: ChannelBinding,
    load_balance: bool,
    direct_tls: bool,
    sni: bool,
}

/// Resolved connection settings.
///
/// `Debug` shows everything but the password.
#[derive(Clone)]
pub struct ConnectOptions {
    hosts: Vec<Target>,
    /// The default socket directory, which `~/.pgpass` calls `localhost`.
    default_socket_dir: PathBuf,
    user: String,
    password: Option<String>,
    /// The password file to consult when there is no password.
    passfile: Option<PathBuf>,
    /// `passfile` as set by the user, for [`ConnectOptions::child_env`].
    passfile_set: Option<String>,
    dbname: String,
    application_name: String,
    /// `application_name` as set by the user (URL or `PGAPPNAME`).
    application_name_set: Option<String>,
    options: Option<String>,
    ssl_mode: SslMode,
    /// Trusted roots: explicit `sslrootcert`, or `~/.postgresql/root.crt` when it exists.
    root_certs: Option<RootCerts>,
    /// `sslrootcert` as set by the user.
    root_cert_set: Option<String>,
    client_cert: Option<ClientCert>,
    /// `sslcert` / `sslkey` as set by the user.
    client_cert_set: (Option<String>, Option<String>),
    connect_timeout: Option<Duration>,
    tuning: Tuning,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field(
                "hosts",
                &self.hosts.iter().map(Target::to_string).collect::<Vec<_>>(),
            )
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_certs", &self.root_certs)
            .field("client_cert", &self.client_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("tuning", &self.tuning)
            .finish()
    }
}

impl ConnectOptions {
    /// From an explicit URL or conninfo string if given, else from the libpq environment.
    /// Either way the libpq environment variables fill whatever the string leaves unset.
    pub fn resolve(database_url: Option<&str>) -> Result<Self, ConnectError> {
        resolve::resolve(database_url, &params::ProcessEnv)
    }

    /// From a `postgres://` URL, a `key=value` conninfo string or a bare database name; the
    /// libpq environment still fills gaps, as libpq does (a URL without a password uses
    /// `PGPASSWORD`).
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        resolve::resolve(Some(url), &params::ProcessEnv)
    }

    /// From the libpq environment variables and defaults alone.
    pub fn from_env() -> Result<Self, ConnectError> {
        resolve::resolve(None, &params::ProcessEnv)
    }

    /// `database "app" at 127.0.0.1:5432 as user "postgres"`, for messages; no password.
    pub fn describe(&self) -> String {
        let hosts = self
            .hosts
            .iter()
            .map(Target::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "database \"{}\" at {hosts} as user \"{}\"",
            self.dbname, self.user
        )
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The `application_name` sent to the server (`pgc` unless the user set one).
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// The TLS mode as given (`allow` is kept as such, though it behaves like `prefer`).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The per-attempt connect timeout; `None` waits forever (`connect_timeout=0`).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// Same settings, another database name (tests create one database per test).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut other = self.clone();
        other.dbname = dbname.to_string();
        other
    }

    /// Same settings, another `application_name` unless the user chose one (e.g. for a
    /// worker to show up as `pgc worker`).
    pub fn with_default_application_name(&self, name: &str) -> Self {
        let mut other = self.clone();
        if other.application_name_set.is_none() {
            other.application_name = name.to_string();
        }
        other
    }

    /// Environment variables that make a child `pgc`/`psql` process reach the same database:
    /// `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGPASSFILE`, `PGCONNECT_TIMEOUT`,
    /// `PGAPPNAME`, `PGOPTIONS`, `PGTARGETSESSIONATTRS`, `PGCHANNELBINDING`,
    /// `PGLOADBALANCEHOSTS`, `PGSSLNEGOTIATION`, `PGSSLSNI`.
    ///
    /// Set them over the inherited environment. Settings that are unset here come as empty
    /// strings (libpq reads an empty `PGHOSTADDR`, `PGPASSWORD`, `PGSSLROOTCERT`, … as unset),
    /// so an inherited variable cannot send the child elsewhere. `PGPASSWORD` carries the
    /// password when there is one: hand this list only to processes you trust with it.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let join =
            |f: &dyn Fn(&Target) -> String| self.hosts.iter().map(f).collect::<Vec<_>>().join(",");
        let host = join(&|t| match t {
            Target::Tcp { host, .. } => host.clone(),
            Target::Unix { dir, .. } => dir.display().to_string(),
        });
        let hostaddr = if self
            .hosts
            .iter()
            .any(|t| matches!(t, Target::Tcp { addr: Some(_), .. }))
        {
            join(&|t| match t {
                Target::Tcp { addr: Some(a), .. } => a.to_string(),
                _ => String::new(),
            })
        } else {
            String::new()
        };
        let first_port = self.hosts.first().map_or(5432, Target::port);
        let port = if self.hosts.iter().all(|t| t.port() == first_port) {
            first_port.to_string()
        } else {
            join(&|t| t.port().to_string())
        };
        let timeout = self.connect_timeout.map_or(0, |t| t.as_secs()).to_string();
        let t = &self.tuning;
        let target_session_attrs = match t.target_session_attrs {
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            _ => "any",
        };
        let channel_binding = match t.channel_binding {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Require => "require",
            _ => "prefer",
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            ("PGHOST", host),
            ("PGHOSTADDR", hostaddr),
            ("PGPORT", port),
            ("PGUSER", self.user.clone()),
            ("PGPASSWORD", opt(&self.password)),
            ("PGPASSFILE", opt(&self.passfile_set)),
            ("PGDATABASE", self.dbname.clone()),
            ("PGSSLMODE", self.ssl_mode.as_str().to_string()),
            ("PGSSLROOTCERT", opt(&self.root_cert_set)),
            ("PGSSLCERT", opt(&self.client_cert_set.0)),
            ("PGSSLKEY", opt(&self.client_cert_set.1)),
            ("PGCONNECT_TIMEOUT", timeout),
            ("PGAPPNAME", opt(&self.application_name_set)),
            ("PGOPTIONS", opt(&self.options)),
            ("PGTARGETSESSIONATTRS", target_session_attrs.to_string()),
            ("PGCHANNELBINDING", channel_binding.to_string()),
            (
                "PGLOADBALANCEHOSTS",
                if t.load_balance { "random" } else { "disable" }.to_string(),
            ),
            (
                "PGSSLNEGOTIATION",
                if t.direct_tls { "direct" } else { "postgres" }.to_string(),
            ),
            ("PGSSLSNI", if t.sni { "1" } else { "0" }.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Connects: tries each host (and each address of a host name) in turn, with TLS as
    /// `sslmode` says, within `connect_timeout` per attempt. The connection task is spawned
    /// on the current tokio runtime; its errors surface later as errors of the returned
    /// client (which then reports itself closed).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectError> {
        connect::connect(self, None).await
    }

    /// Connects like [`connect`](Self::connect), and delivers the connection's
    /// notifications (`LISTEN`) on the returned channel, which closes when the
    /// connection does.
    pub async fn connect_listener(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
        ),
        ConnectError,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = connect::connect(self, Some(&tx)).await?;
        Ok((client, rx))
    }
}

/// An I/O error's text without the `(os error N)` suffix, starting lower-case.
fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    lower_first(&text)
}

/// `Connection refused` → `connection refused`; leaves `TLS…`-style acronyms alone.
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => {
            a.to_lowercase().chain(s[a.len_utf8()..].chars()).collect()
        }
        _ => s.to_string(),
    }
}
