//! Turning libpq keywords (input string + environment) into [`ConnectOptions`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};

use super::params::{self, Env, Origin, Params, Value};
use super::tls::{ClientCert, RootCerts};
use super::{ConnectError, ConnectOptions, SslMode, Target, Tuning};

/// The connect timeout when none is given (libpq has none; a CLI must not hang).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Debian's libpq default socket directory, used when it exists.
const DEBIAN_SOCKET_DIR: &str = "/var/run/postgresql";

/// Parses the input (if any), fills gaps from `env`, and interprets the result.
pub(super) fn resolve(input: Option<&str>, env: &dyn Env) -> Result<ConnectOptions, ConnectError> {
    let mut p = match input {
        Some(s) => params::parse_input(s)?,
        None => Params::default(),
    };
    p.fill_from_env(env);
    build(&p, env)
}

/// The error for a bad value of `key`.
fn invalid(v: &Value, key: &str, what: impl std::fmt::Display) -> ConnectError {
    match v.origin {
        Origin::Input => v.origin.error(format!("{key}: {what}")),
        Origin::Env(_) => v.origin.error(what.to_string()),
    }
}

/// Parses an integer setting (libpq accepts surrounding whitespace).
fn int(p: &Params, key: &str) -> Result<Option<i64>, ConnectError> {
    let Some(v) = p.get(key) else { return Ok(None) };
    v.text
        .trim()
        .parse::<i64>()
        .map(Some)
        .map_err(|_| invalid(v, key, format!("invalid integer value \"{}\"", v.text)))
}

/// A setting with a fixed set of values.
fn choice<T: Copy>(
    p: &Params,
    key: &str,
    default: T,
    values: &[(&str, T)],
) -> Result<T, ConnectError> {
    let Some(v) = p.get(key) else {
        return Ok(default);
    };
    values
        .iter()
        .find(|(name, _)| *name == v.text)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
            invalid(
                v,
                key,
                format!(
                    "invalid value \"{}\" (expected {})",
                    v.text,
                    names.join(", ")
                ),
            )
        })
}

/// Rejects keywords pgc recognises but cannot honour, and checks the ones it ignores.
fn check_unsupported(p: &Params) -> Result<(), ConnectError> {
    for (key, v) in p.keys() {
        let t = v.text.as_str();
        let reason = match key {
            "service" => "connection service files are not supported; give the settings directly",
            "sslpassword" => "encrypted client keys (sslpassword) are not supported",
            "sslcrl" | "sslcrldir" => "certificate revocation lists are not supported",
            "require_auth" => "require_auth is not supported",
            "requirepeer" => "requirepeer is not supported",
            "replication" => "replication connections are not supported",
            "gssencmode" if t == "require" => {
                "gssencmode=require is not supported (pgc has no GSSAPI support)"
            }
            "gssencmode" if t != "disable" && t != "prefer" => {
                "invalid value (expected disable, prefer or require)"
            }
            "sslcertmode" if t == "require" => "sslcertmode=require is not supported",
            "sslcertmode" if t != "disable" && t != "allow" => {
                "invalid value (expected disable, allow or require)"
            }
            "client_encoding"
                if !["utf8", "utf-8", "unicode", "auto"]
                    .contains(&t.to_ascii_lowercase().as_str()) =>
            {
                "only UTF8 is supported"
            }
            "ssl_min_protocol_version" if t == "TLSv1.3" => {
                "a minimum of TLSv1.3 is not supported (TLSv1.2 is the minimum)"
            }
            "ssl_min_protocol_version" if !["TLSv1", "TLSv1.1", "TLSv1.2"].contains(&t) => {
                "invalid value (expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3)"
            }
            "ssl_max_protocol_version" if t != "TLSv1.3" => {
                "only TLSv1.3 is supported as the maximum"
            }
            _ => continue,
        };
        return Err(invalid(v, key, reason));
    }
    Ok(())
}

/// The default socket directory: Debian's if it exists, else libpq's upstream `/tmp`.
fn default_socket_dir(env: &dyn Env) -> PathBuf {
    let debian = PathBuf::from(DEBIAN_SOCKET_DIR);
    if env.is_dir(&debian) {
        debian
    } else {
        PathBuf::from("/tmp")
    }
}

/// Builds the host list from `host`, `hostaddr` and `port`.
fn targets(p: &Params, default_dir: &std::path::Path) -> Result<Vec<Target>, ConnectError> {
    let split = |key| -> Vec<&str> {
        p.text(key)
            .map(|s| s.split(',').collect())
            .unwrap_or_default()
    };
    let hosts = split("host");
    let addrs = split("hostaddr");
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(ConnectError::InvalidSettings(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            addrs.len()
        )));
    }
    let n = hosts.len().max(addrs.len()).max(1);

    let mut ports = Vec::new();
    if let Some(v) = p.get("port") {
        for port in v.text.split(',') {
            let port = port.trim();
            if port.is_empty() {
                ports.push(5432);
                continue;
            }
            match port.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(invalid(
                        v,
                        "port",
                        format!("invalid port number \"{port}\""),
                    ));
                }
            }
        }
    }
    match ports.len() {
        0 => ports = vec![5432; n],
        1 => ports = vec![ports[0]; n],
        len if len != n => {
            return Err(ConnectError::InvalidSettings(format!(
                "could not match {len} port numbers to {n} hosts"
            )));
        }
        _ => {}
    }

    let mut out = Vec::with_capacity(n);
    for (i, port) in ports.into_iter().enumerate() {
        let host = hosts.get(i).copied().unwrap_or("");
        let addr = match addrs.get(i).map(|a| a.trim()).filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => match a.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    let v = p
                        .get("hostaddr")
                        .ok_or_else(|| ConnectError::InvalidSettings("invalid hostaddr".into()))?;
                    return Err(invalid(
                        v,
                        "hostaddr",
                        format!("invalid IP address \"{a}\""),
                    ));
                }
            },
        };
        out.push(if addr.is_some() {
            Target::Tcp {
                host: if host.starts_with('/') { "" } else { host }.to_string(),
                addr,
                port,
            }
        } else if host.is_empty() {
            Target::Unix {
                dir: default_dir.to_path_buf(),
                port,
            }
        } else if host.starts_with('/') {
            Target::Unix {
                dir: PathBuf::from(host),
                port,
            }
        } else {
            Target::Tcp {
                host: host.to_string(),
                addr: None,
                port,
            }
        });
    }
    Ok(out)
}

/// Interprets resolved keywords.
fn build(p: &Params, env: &dyn Env) -> Result<ConnectOptions, ConnectError> {
    check_unsupported(p)?;
    let owned = |key| p.text(key).map(str::to_string);
    let home = env.home();

    let user = owned("user")
        .or_else(|| env.os_user())
        .unwrap_or_else(|| "postgres".to_string());
    let dbname = owned("dbname").unwrap_or_else(|| user.clone());
    let default_socket_dir = default_socket_dir(env);
    let hosts = targets(p, &default_socket_dir)?;

    // TLS mode and roots, with libpq 16's rule for sslrootcert=system.
    let root_cert_set = owned("sslrootcert");
    let system_roots = root_cert_set.as_deref() == Some("system");
    let ssl_mode = match p.get("sslmode") {
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some(v) => SslMode::parse(&v.text).ok_or_else(|| {
            invalid(
                v,
                "sslmode",
                format!(
                    "invalid sslmode \"{}\" (expected disable, allow, prefer, require, verify-ca or verify-full)",
                    v.text
                ),
            )
        })?,
    };
    if system_roots && ssl_mode != SslMode::VerifyFull {
        if let Some(v) = p.get("sslmode") {
            return Err(invalid(
                v,
                "sslmode",
                format!(
                    "weak sslmode \"{ssl_mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
                ),
            ));
        }
    }
    let verifying = matches!(
        ssl_mode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    );
    let root_certs = match root_cert_set.as_deref() {
        Some("system") => Some(RootCerts::System),
        Some(path) => Some(RootCerts::File(PathBuf::from(path))),
        // The default file only matters (and is only looked for) where it changes behaviour.
        None if verifying => home
            .as_ref()
            .map(|h| h.join(".postgresql/root.crt"))
            .filter(|f| env.is_file(f))
            .map(RootCerts::File),
        None => None,
    };

    let client_cert_set = (owned("sslcert"), owned("sslkey"));
    let client_cert = if ssl_mode == SslMode::Disable || p.text("sslcertmode") == Some("disable") {
        None
    } else {
        let default = |name: &str| home.as_ref().map(|h| h.join(".postgresql").join(name));
        let cert = match &client_cert_set.0 {
            Some(c) => Some(PathBuf::from(c)),
            None => default("postgresql.crt").filter(|f| env.is_file(f)),
        };
        match cert {
            None => None,
            Some(cert) => {
                let key = match &client_cert_set.1 {
                    Some(k) => Some(PathBuf::from(k)),
                    None => default("postgresql.key"),
                };
                let Some(key) = key else {
                    return Err(ConnectError::InvalidSettings(
                        "a client certificate needs sslkey (no home directory for the default)"
                            .into(),
                    ));
                };
                Some(ClientCert { cert, key })
            }
        }
    };

    let direct_tls = choice(
        p,
        "sslnegotiation",
        false,
        &[("postgres", false), ("direct", true)],
    )?;
    if direct_tls && !verifying {
        if let Some(v) = p.get("sslnegotiation") {
            return Err(invalid(
                v,
                "sslnegotiation",
                format!(
                    "sslnegotiation=direct needs sslmode=require or stronger, not \"{ssl_mode}\""
                ),
            ));
        }
    }
    let sni = choice(p, "sslsni", true, &[("1", true), ("0", false)])?;

    let connect_timeout = match int(p, "connect_timeout")? {
        None => Some(DEFAULT_CONNECT_TIMEOUT),
        Some(s) if s <= 0 => None,
        // libpq's minimum is 2 s.
        Some(s) => Some(Duration::from_secs(s.max(2).unsigned_abs())),
    };
    let secs = |key| -> Result<Option<Duration>, ConnectError> {
        Ok(int(p, key)?
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s.unsigned_abs())))
    };
    let keepalives_count = match int(p, "keepalives_count")? {
        None => None,
        Some(n) if n <= 0 => None,
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let tuning = Tuning {
        keepalives: int(p, "keepalives")?.is_none_or(|k| k != 0),
        keepalives_idle: secs("keepalives_idle")?,
        keepalives_interval: secs("keepalives_interval")?,
        keepalives_count,
        // libpq's tcp_user_timeout is in milliseconds.
        tcp_user_timeout: int(p, "tcp_user_timeout")?
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms.unsigned_abs())),
        target_session_attrs: match p.get("target_session_attrs") {
            Some(v) if ["primary", "standby", "prefer-standby"].contains(&v.text.as_str()) => {
                return Err(invalid(
                    v,
                    "target_session_attrs",
                    format!(
                        "\"{}\" is not supported (use any, read-write or read-only)",
                        v.text
                    ),
                ));
            }
            _ => choice(
                p,
                "target_session_attrs",
                TargetSessionAttrs::Any,
                &[
                    ("any", TargetSessionAttrs::Any),
                    ("read-write", TargetSessionAttrs::ReadWrite),
                    ("read-only", TargetSessionAttrs::ReadOnly),
                ],
            )?,
        },
        channel_binding: choice(
            p,
            "channel_binding",
            ChannelBinding::Prefer,
            &[
                ("disable", ChannelBinding::Disable),
                ("prefer", ChannelBinding::Prefer),
                ("require", ChannelBinding::Require),
            ],
        )?,
        load_balance: choice(
            p,
            "load_balance_hosts",
            false,
            &[("disable", false), ("random", true)],
        )?,
        direct_tls,
        sni,
    };

    let application_name_set = owned("application_name");
    let application_name = application_name_set
        .clone()
        .or_else(|| owned("fallback_application_name"))
        .unwrap_or_else(|| "pgc".to_string());

    let passfile_set = owned("passfile");
    let passfile = passfile_set
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));

    Ok(ConnectOptions {
        hosts,
        default_socket_dir,
        user,
        password: owned("password"),
        passfile,
        passfile_set,
        dbname,
        application_name,
        application_name_set,
        options: owned("options"),
        ssl_mode,
        root_certs,
        root_cert_set,
        client_cert,
        client_cert_set,
        connect_timeout,
        tuning,
    })
}

#[cfg(test)]
mod tests {
    use super::super::params::tests::FakeEnv;
    use super::*;

    fn opts(input: Option<&str>, vars: &[(&str, &str)]) -> ConnectOptions {
        resolve(input, &FakeEnv::new(vars)).unwrap()
    }

    fn err(input: Option<&str>, vars: &[(&str, &str)]) -> String {
        resolve(input, &FakeEnv::new(vars)).unwrap_err().to_string()
    }

    #[test]
    fn libpq_defaults() {
        let o = opts(None, &[]);
        assert_eq!(o.user(), "alice");
        assert_eq!(o.dbname(), "alice");
        assert_eq!(
            o.hosts,
            vec![Target::Unix {
                dir: "/var/run/postgresql".into(),
                port: 5432
            }]
        );
        assert_eq!(o.ssl_mode(), SslMode::Prefer);
        assert_eq!(o.application_name(), "pgc");
        assert_eq!(o.connect_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(o.passfile, Some(PathBuf::from("/home/alice/.pgpass")));
        assert_eq!(
            o.describe(),
            "database \"alice\" at /var/run/postgresql/.s.PGSQL.5432 as user \"alice\""
        );
    }

    #[test]
    fn socket_dir_falls_back_to_tmp() {
        let mut env = FakeEnv::new(&[]);
        env.dirs.clear();
        let o = resolve(None, &env).unwrap();
        assert_eq!(
            o.hosts,
            vec![Target::Unix {
                dir: "/tmp".into(),
                port: 5432
            }]
        );
    }

    #[test]
    fn user_falls_back_to_postgres_without_os_user() {
        let mut env = FakeEnv::new(&[]);
        env.user = None;
        let o = resolve(None, &env).unwrap();
        assert_eq!((o.user(), o.dbname()), ("postgres", "postgres"));
    }

    #[test]
    fn environment_variables() {
        let o = opts(
            None,
            &[
                ("PGHOST", "db1,/tmp,db3"),
                ("PGPORT", "6000"),
                ("PGUSER", "bob"),
                ("PGPASSWORD", "hunter2"),
                ("PGDATABASE", "app"),
                ("PGSSLMODE", "require"),
                ("PGCONNECT_TIMEOUT", "3"),
                ("PGAPPNAME", "mine"),
            ],
        );
        assert_eq!(o.user(), "bob");
        assert_eq!(o.dbname(), "app");
        assert_eq!(o.password.as_deref(), Some("hunter2"));
        assert_eq!(o.ssl_mode(), SslMode::Require);
        assert_eq!(o.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(o.application_name(), "mine");
        assert_eq!(
            o.describe(),
            "database \"app\" at db1:6000,/tmp/.s.PGSQL.6000,db3:6000 as user \"bob\""
        );
        let env = o.child_env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db1,/tmp,db3"));
        assert_eq!(get("PGPORT"), Some("6000"));
        assert_eq!(get("PGPASSWORD"), Some("hunter2"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
        assert_eq!(get("PGAPPNAME"), Some("mine"));
        assert_eq!(get("PGHOSTADDR"), Some(""));
        assert_eq!(get("PGCONNECT_TIMEOUT"), Some("3"));
    }

    #[test]
    fn url_wins_over_environment_which_fills_gaps() {
        let o = opts(
            Some("postgres://carol@urlhost:7000/urldb"),
            &[
                ("PGHOST", "envhost"),
                ("PGUSER", "envuser"),
                ("PGPASSWORD", "envpw"),
                ("PGSSLMODE", "disable"),
            ],
        );
        assert_eq!(o.user(), "carol");
        assert_eq!(o.dbname(), "urldb");
        assert_eq!(o.password.as_deref(), Some("envpw"));
        assert_eq!(o.ssl_mode(), SslMode::Disable);
        assert_eq!(
            o.describe(),
            "database \"urldb\" at urlhost:7000 as user \"carol\""
        );
    }

    #[test]
    fn ipv6_hostaddr_and_multiple_ports() {
        let o = opts(Some("postgres://[::1]:5433,db:5434/x"), &[]);
        assert_eq!(
            o.describe(),
            "database \"x\" at [::1]:5433,db:5434 as user \"alice\""
        );
        let o = opts(Some("host=db hostaddr=10.0.0.1 port=6543"), &[]);
        assert_eq!(
            o.hosts,
            vec![Target::Tcp {
                host: "db".into(),
                addr: Some("10.0.0.1".parse().unwrap()),
                port: 6543
            }]
        );
        assert!(o.describe().contains("db:6543 (hostaddr 10.0.0.1)"));
        let o = opts(Some("hostaddr=127.0.0.1"), &[]);
        assert_eq!(
            o.describe(),
            "database \"alice\" at 127.0.0.1:5432 as user \"alice\""
        );
    }

    #[test]
    fn socket_directory_forms() {
        for url in [
            "postgres:///db?host=/tmp",
            "postgresql://%2Ftmp/db",
            "host=/tmp dbname=db",
        ] {
            let o = opts(Some(url), &[("PGHOST", "ignored")]);
            assert_eq!(
                o.hosts,
                vec![Target::Unix {
                    dir: "/tmp".into(),
                    port: 5432
                }],
                "{url}"
            );
            assert_eq!(o.dbname(), "db");
        }
    }

    #[test]
    fn setting_errors_name_their_source() {
        assert_eq!(
            err(Some("postgres://h/db?sslmode=bogus"), &[]),
            "invalid database url: sslmode: invalid sslmode \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
        );
        assert_eq!(
            err(None, &[("PGSSLMODE", "bogus")]),
            "invalid environment variable PGSSLMODE: invalid sslmode \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
        );
        assert!(err(None, &[("PGPORT", "x")]).starts_with("invalid environment variable PGPORT: "));
        assert!(err(Some("postgres://h:99999/db"), &[]).contains("invalid port number \"99999\""));
        assert!(
            err(Some("host=a,b port=1,2,3"), &[])
                .contains("could not match 3 port numbers to 2 hosts")
        );
        assert!(
            err(Some("host=a,b hostaddr=1.2.3.4"), &[]).contains("could not match 2 host names")
        );
        assert!(err(Some("hostaddr=nope"), &[]).contains("invalid IP address"));
        assert!(err(None, &[("PGSERVICE", "x")]).contains("service files are not supported"));
        assert!(err(Some("sslcrl=/x"), &[]).contains("not supported"));
        assert!(err(Some("target_session_attrs=primary"), &[]).contains("not supported"));
        assert!(err(Some("client_encoding=LATIN1"), &[]).contains("UTF8"));
        assert!(opts(Some("client_encoding=UTF8 gssencmode=disable"), &[]).dbname() == "alice");
    }

    #[test]
    fn sslmode_values() {
        for (v, m) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let o = opts(Some(&format!("postgres://h/db?sslmode={v}")), &[]);
            assert_eq!(o.ssl_mode(), m);
            assert_eq!(o.ssl_mode().as_str(), v);
        }
    }

    #[test]
    fn root_certificates() {
        // No root file: require does not verify.
        let o = opts(Some("host=h sslmode=require"), &[]);
        assert_eq!(o.root_certs, None);
        // ~/.postgresql/root.crt exists: require verifies the chain (libpq rule).
        let mut env = FakeEnv::new(&[]);
        env.files.insert("/home/alice/.postgresql/root.crt".into());
        let o = resolve(Some("host=h sslmode=require"), &env).unwrap();
        assert_eq!(
            o.root_certs,
            Some(RootCerts::File("/home/alice/.postgresql/root.crt".into()))
        );
        // ... but is not even looked at for prefer.
        let o = resolve(Some("host=h"), &env).unwrap();
        assert_eq!(o.root_certs, None);
        // Explicit file.
        let o = opts(Some("host=h sslmode=verify-ca sslrootcert=/ca.pem"), &[]);
        assert_eq!(o.root_certs, Some(RootCerts::File("/ca.pem".into())));
        // system: verify-full by default, weaker modes rejected.
        let o = opts(Some("host=h sslrootcert=system"), &[]);
        assert_eq!(o.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(o.root_certs, Some(RootCerts::System));
        assert!(
            err(Some("host=h sslrootcert=system sslmode=require"), &[]).contains("weak sslmode")
        );
        let o = opts(
            None,
            &[("PGSSLROOTCERT", "/x.pem"), ("PGSSLMODE", "verify-full")],
        );
        assert_eq!(o.root_certs, Some(RootCerts::File("/x.pem".into())));
    }

    #[test]
    fn client_certificates() {
        let o = opts(Some("host=h sslcert=/c.pem sslkey=/k.pem"), &[]);
        assert_eq!(
            o.client_cert,
            Some(ClientCert {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let mut env = FakeEnv::new(&[]);
        env.files
            .insert("/home/alice/.postgresql/postgresql.crt".into());
        let o = resolve(Some("host=h"), &env).unwrap();
        assert_eq!(
            o.client_cert,
            Some(ClientCert {
                cert: "/home/alice/.postgresql/postgresql.crt".into(),
                key: "/home/alice/.postgresql/postgresql.key".into()
            })
        );
        let o = resolve(Some("host=h sslcertmode=disable"), &env).unwrap();
        assert_eq!(o.client_cert, None);
        assert_eq!(opts(Some("host=h"), &[]).client_cert, None);
    }

    #[test]
    fn application_name_and_timeouts() {
        assert_eq!(opts(Some("host=h"), &[]).application_name(), "pgc");
        assert_eq!(
            opts(
                Some("postgres://h/db?application_name=x"),
                &[("PGAPPNAME", "y")]
            )
            .application_name(),
            "x"
        );
        assert_eq!(
            opts(Some("host=h fallback_application_name=fb"), &[]).application_name(),
            "fb"
        );
        let o = opts(Some("host=h"), &[]).with_default_application_name("pgc worker");
        assert_eq!(o.application_name(), "pgc worker");
        let o = opts(Some("host=h application_name=mine"), &[])
            .with_default_application_name("pgc worker");
        assert_eq!(o.application_name(), "mine");
        assert_eq!(opts(Some("connect_timeout=0"), &[]).connect_timeout(), None);
        assert_eq!(
            opts(Some("connect_timeout=1"), &[]).connect_timeout(),
            Some(Duration::from_secs(2))
        );
        assert!(err(Some("connect_timeout=soon"), &[]).contains("invalid integer value"));
    }

    #[test]
    fn password_never_shown() {
        let secret = "s3cr3t-p@ss/word";
        let url = "postgres://bob:s3cr3t-p%40ss%2Fword@db.example.com/app";
        let o = opts(Some(url), &[]);
        assert_eq!(o.password.as_deref(), Some(secret));
        assert!(!o.describe().contains("s3cr3t"));
        assert!(!format!("{o:?}").contains("s3cr3t"));
        assert!(format!("{o:?}").contains("<redacted>"));
        let o = opts(None, &[("PGPASSWORD", secret)]);
        assert!(!format!("{o:?}").contains("s3cr3t"));
        // Errors caused by other parts of a URL with a password do not echo it.
        for bad in [
            "postgres://bob:s3cr3t@h/db?sslmode=nope",
            "postgres://bob:s3cr3t@h:nope/db",
            "postgres://bob:s3cr3t@h/db?bogus=1",
            "postgres://bob:s3/cr3t@h/db",
            "host=h password=s3cr3t sslmode=nope",
        ] {
            let e = err(Some(bad), &[]);
            assert!(!e.contains("s3cr3t") && !e.contains("cr3t"), "{e}");
            assert!(!format!("{:?}", resolve(Some(bad), &FakeEnv::new(&[]))).contains("cr3t"));
        }
    }

    #[test]
    fn with_dbname_keeps_everything_else() {
        let o = opts(Some("postgres://u:pw@h:1/a?sslmode=require"), &[]);
        let o2 = o.with_dbname("b");
        assert_eq!(o2.dbname(), "b");
        assert_eq!(o2.user(), "u");
        assert_eq!(o2.ssl_mode(), SslMode::Require);
        assert_eq!(o2.password.as_deref(), Some("pw"));
    }

    #[test]
    fn child_env_reproduces_the_settings() {
        for input in [
            "postgres://bob:p%40ss@db1:6000,db2/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
            "host=db hostaddr=10.0.0.1 port=7000 user=u dbname=d sslmode=require connect_timeout=0",
            "user=u dbname=d",
            "host=a,b port=1,2 target_session_attrs=read-write load_balance_hosts=random sslmode=disable",
        ] {
            let o = opts(Some(input), &[]);
            let vars = o.child_env();
            // An inherited variable is overridden, also by an empty value.
            let mut env =
                FakeEnv::new(&[("PGHOSTADDR", "192.0.2.1"), ("PGSSLROOTCERT", "/other.pem")]);
            for (k, v) in &vars {
                env.vars.insert(k.clone(), v.clone());
            }
            let child = resolve(None, &env).unwrap();
            assert_eq!(child.describe(), o.describe(), "{input}");
            assert_eq!(child.password, o.password, "{input}");
            assert_eq!(child.ssl_mode(), o.ssl_mode(), "{input}");
            assert_eq!(child.root_certs, o.root_certs, "{input}");
            assert_eq!(child.application_name(), o.application_name(), "{input}");
            assert_eq!(child.connect_timeout(), o.connect_timeout(), "{input}");
            assert_eq!(child.hosts, o.hosts, "{input}");
            assert_eq!(
                format!("{:?}", child.tuning),
                format!("{:?}", o.tuning),
                "{input}"
            );
        }
    }
}
