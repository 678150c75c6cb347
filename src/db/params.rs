//! Parsing of connection strings into libpq keywords, and the libpq environment fallback.
//!
//! Three input forms are accepted, as psql does: a `postgres://` / `postgresql://` URL, a
//! libpq `key=value` conninfo string, and a bare word, which is a database name. The result is
//! a map from canonical libpq keyword to value that remembers where each value came from, so
//! errors can name the environment variable or say "url" — and never echo a password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConnectError;

/// Every libpq keyword pgc recognises, with the environment variable libpq reads for it.
///
/// Whether a keyword is used, ignored or rejected as unsupported is decided when the options
/// are built; a keyword missing here is "unknown", as it is to libpq.
pub(super) const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("options", Some("PGOPTIONS")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslcertmode", Some("PGSSLCERTMODE")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslsni", Some("PGSSLSNI")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("sslpassword", None),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("gssdelegation", Some("PGGSSDELEGATION")),
    ("require_auth", Some("PGREQUIREAUTH")),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("service", Some("PGSERVICE")),
    ("replication", None),
];

/// The canonical (static) name of a libpq keyword, if it is one.
fn canonical(key: &str) -> Option<&'static str> {
    KEYWORDS.iter().find(|(k, _)| *k == key).map(|(k, _)| *k)
}

/// Where a setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// The URL or conninfo string.
    Input,
    /// A libpq environment variable.
    Env(&'static str),
}

impl Origin {
    /// An error about a value from this origin: `invalid database url: …` or
    /// `invalid environment variable PGPORT: …`.
    pub(super) fn error(self, reason: impl Into<String>) -> ConnectError {
        match self {
            Origin::Input => ConnectError::InvalidUrl(reason.into()),
            Origin::Env(var) => ConnectError::InvalidEnv {
                var: var.to_string(),
                reason: reason.into(),
            },
        }
    }
}

/// One setting and its origin.
#[derive(Clone)]
pub(super) struct Value {
    /// The value, already unquoted / percent-decoded.
    pub(super) text: String,
    /// Where it came from.
    pub(super) origin: Origin,
}

/// The libpq keywords of one connection, before interpretation.
#[derive(Default, Clone)]
pub(super) struct Params {
    map: BTreeMap<&'static str, Value>,
}

impl Params {
    /// The value of a keyword, with its origin.
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// The text of a keyword.
    pub(super) fn text(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|v| v.text.as_str())
    }

    /// Whether a keyword is set.
    #[cfg(test)]
    pub(super) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Keywords that are set, in name order.
    pub(super) fn keys(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.map.iter().map(|(k, v)| (*k, v))
    }

    /// Sets a keyword from the input string; later settings win, as in libpq. An empty value
    /// means "not set", so the environment or the default applies.
    fn set_input(&mut self, key: &'static str, text: String) {
        if text.is_empty() {
            self.map.remove(key);
        } else {
            self.map.insert(
                key,
                Value {
                    text,
                    origin: Origin::Input,
                },
            );
        }
    }

    /// Fills every keyword the input did not set from its libpq environment variable, the
    /// way libpq does for both URLs and conninfo strings. Empty variables count as unset.
    pub(super) fn fill_from_env(&mut self, env: &dyn Env) {
        for (key, var) in KEYWORDS {
            let Some(var) = var else { continue };
            if self.map.contains_key(key) {
                continue;
            }
            if let Some(text) = env.var(var).filter(|t| !t.is_empty()) {
                self.map.insert(
                    key,
                    Value {
                        text,
                        origin: Origin::Env(var),
                    },
                );
            }
        }
    }
}

/// What the resolution logic needs from the outside world; tests pass a fake.
pub(super) trait Env {
    /// An environment variable (`None` when unset or not Unicode).
    fn var(&self, name: &str) -> Option<String>;
    /// The name of the operating-system user running this process.
    fn os_user(&self) -> Option<String>;
    /// The home directory (for `~/.pgpass` and `~/.postgresql/`).
    fn home(&self) -> Option<PathBuf>;
    /// Whether a regular file exists at `path`.
    fn is_file(&self, path: &Path) -> bool;
    /// Whether a directory exists at `path`.
    fn is_dir(&self, path: &Path) -> bool;
}

/// The real process environment and file system.
pub(super) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn os_user(&self) -> Option<String> {
        passwd_entry().map(|(name, _)| name).or_else(|| {
            ["USER", "LOGNAME"]
                .iter()
                .find_map(|v| self.var(v).filter(|s| !s.is_empty()))
        })
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| passwd_entry().map(|(_, home)| PathBuf::from(home)))
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

/// The user name and home directory of the effective user id, from `/etc/passwd` (what
/// libpq gets from `getpwuid(geteuid())`, minus NSS sources such as LDAP).
fn passwd_entry() -> Option<(String, String)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2] == euid && !fields[0].is_empty())
            .then(|| (fields[0].to_string(), fields[5].to_string()))
    })
}

/// Parses the user's connection string: a URL, a conninfo string, or a bare database name.
pub(super) fn parse_input(input: &str) -> Result<Params, ConnectError> {
    let s = input.trim();
    if let Some(rest) = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
    {
        return parse_url(rest).map_err(ConnectError::InvalidUrl);
    }
    if let Some(scheme) = url_scheme(s) {
        return Err(ConnectError::InvalidUrl(format!(
            "unsupported scheme \"{scheme}\" (use postgres:// or postgresql://)"
        )));
    }
    if s.contains('=') {
        return parse_conninfo(s).map_err(ConnectError::InvalidUrl);
    }
    let mut params = Params::default();
    if !s.is_empty() {
        // A bare word is a database name, as for `psql -d`.
        params.set_input("dbname", s.to_string());
    }
    Ok(params)
}

/// The scheme of something that looks like a URL (`scheme://…`).
fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some(scheme)
}

/// The message for a syntax problem right after a `password` value: the password was
/// probably not quoted/encoded, and the offending text may be part of it, so it is not shown.
const AFTER_PASSWORD: &str = "unexpected text after the password value (quote it in conninfo strings: password='…', or percent-encode it in urls)";

/// Parses a libpq URL, the part after `postgres://`.
fn parse_url(rest: &str) -> Result<Params, String> {
    let mut params = Params::default();

    // The user info ends at the last '@' before the first '/': this tolerates an unencoded
    // '@' in a password (libpq takes the first '@', which then fails).
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (userinfo, rest) = match rest[..authority_end].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        params.set_input("user", decode(user, "user name")?);
        if let Some(password) = password {
            params.set_input("password", decode(password, "password")?);
        }
    }

    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hostspec, rest) = rest.split_at(host_end);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if userinfo.is_none() && path.contains('@') {
        return Err("unexpected \"@\" after the host part: percent-encode special characters in the user name and password (\"/\" as %2F, \"@\" as %40, \"%\" as %25)".into());
    }

    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for chunk in hostspec.split(',') {
            let (host, port) = if let Some(inner) = chunk.strip_prefix('[') {
                let close = inner
                    .find(']')
                    .ok_or("missing \"]\" after an IPv6 host address")?;
                let after = &inner[close + 1..];
                let port = if after.is_empty() {
                    None
                } else if let Some(p) = after.strip_prefix(':') {
                    Some(p)
                } else {
                    return Err(
                        "unexpected text after \"]\" in an IPv6 host address (expected \":port\")"
                            .into(),
                    );
                };
                (&inner[..close], port)
            } else {
                match chunk.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (chunk, None),
                }
            };
            hosts.push(decode(host, "host")?);
            ports.push(match port {
                Some(p) => decode(p, "port")?,
                None => String::new(),
            });
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            params.set_input("host", hosts.join(","));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            params.set_input("port", ports.join(","));
        }
    }

    if let Some(db) = path.strip_prefix('/') {
        params.set_input("dbname", decode(db, "database name")?);
    }

    if let Some(query) = query {
        let mut after_password = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                if after_password {
                    return Err(AFTER_PASSWORD.into());
                }
                return Err(format!(
                    "missing \"=\" in query parameter \"{}\"",
                    decode(pair, "query parameter")?
                ));
            };
            let key = decode(key, "query parameter")?;
            let value = decode(value, "query parameter value")?;
            let key = match key.as_str() {
                // JDBC spelling, accepted by libpq.
                "ssl" if value == "true" => {
                    params.set_input("sslmode", "require".into());
                    after_password = false;
                    continue;
                }
                k => match canonical(k) {
                    Some(k) => k,
                    None if after_password => return Err(AFTER_PASSWORD.into()),
                    None => return Err(format!("unknown query parameter \"{k}\"")),
                },
            };
            after_password = key == "password";
            params.set_input(key, value);
        }
    }
    Ok(params)
}

/// Percent-decodes one URL component; `what` names it in errors (the text is never shown,
/// since it may be a password).
fn decode(s: &str, what: &str) -> Result<String, String> {
    let out = crate::percent::decode(s)
        .ok_or_else(|| format!("invalid percent-encoding in the {what}"))?;
    if out.contains(&0) {
        return Err(format!("forbidden %00 in the {what}"));
    }
    String::from_utf8(out).map_err(|_| format!("the {what} is not valid UTF-8 once decoded"))
}

/// Parses a libpq `key=value …` conninfo string: whitespace-separated pairs, spaces allowed
/// around `=`, values either bare (backslash escapes the next character) or single-quoted
/// (backslash escapes `'` and `\`).
fn parse_conninfo(s: &str) -> Result<Params, String> {
    let mut params = Params::default();
    let mut chars = s.chars().peekable();
    let mut after_password = false;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            if after_password {
                return Err(AFTER_PASSWORD.into());
            }
            return Err(match canonical(&key) {
                Some(k) => format!("missing \"=\" after \"{k}\""),
                None => "expected key=value pairs separated by spaces".into(),
            });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted value".into()),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err("unterminated quoted value".into()),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let key = match canonical(&key) {
            Some(k) => k,
            None if after_password => return Err(AFTER_PASSWORD.into()),
            None => return Err(format!("unknown connection option \"{key}\"")),
        };
        after_password = key == "password";
        params.set_input(key, value);
    }
    Ok(params)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A fake environment for tests.
    #[derive(Default)]
    pub(in crate::db) struct FakeEnv {
        pub(in crate::db) vars: HashMap<String, String>,
        pub(in crate::db) user: Option<String>,
        pub(in crate::db) home: Option<PathBuf>,
        pub(in crate::db) files: HashSet<PathBuf>,
        pub(in crate::db) dirs: HashSet<PathBuf>,
    }

    impl FakeEnv {
        pub(in crate::db) fn new(vars: &[(&str, &str)]) -> Self {
            FakeEnv {
                vars: vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                user: Some("alice".into()),
                home: Some("/home/alice".into()),
                files: HashSet::new(),
                dirs: ["/var/run/postgresql".into()].into_iter().collect(),
            }
        }
    }

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn os_user(&self) -> Option<String> {
            self.user.clone()
        }
        fn home(&self) -> Option<PathBuf> {
            self.home.clone()
        }
        fn is_file(&self, path: &Path) -> bool {
            self.files.contains(path)
        }
        fn is_dir(&self, path: &Path) -> bool {
            self.dirs.contains(path)
        }
    }

    fn parse(s: &str) -> Params {
        parse_input(s).unwrap()
    }

    fn err(s: &str) -> String {
        match parse_input(s) {
            Ok(_) => panic!("{s:?} parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn url_percent_encoded_password() {
        let p = parse("postgres://bob:p%40ss%2Fw%25rd%3A@db.example.com:6543/app");
        assert_eq!(p.text("user"), Some("bob"));
        assert_eq!(p.text("password"), Some("p@ss/w%rd:"));
        assert_eq!(p.text("host"), Some("db.example.com"));
        assert_eq!(p.text("port"), Some("6543"));
        assert_eq!(p.text("dbname"), Some("app"));
    }

    #[test]
    fn url_unencoded_at_in_password_uses_last_at() {
        let p = parse("postgresql://bob:p@ss@localhost/app");
        assert_eq!(p.text("password"), Some("p@ss"));
        assert_eq!(p.text("host"), Some("localhost"));
    }

    #[test]
    fn url_unencoded_slash_in_password_is_rejected_without_echo() {
        let e = err("postgres://bob:se/cret@localhost/app");
        assert!(e.starts_with("invalid database url: "), "{e}");
        assert!(!e.contains("cret"), "{e}");
    }

    #[test]
    fn url_ipv6_hosts() {
        let p = parse("postgres://[::1]:5433,[fe80::1]/db");
        assert_eq!(p.text("host"), Some("::1,fe80::1"));
        assert_eq!(p.text("port"), Some("5433,"));
        assert!(err("postgres://[::1/db").contains("\"]\""));
        assert!(err("postgres://[::1]x/db").contains("IPv6"));
    }

    #[test]
    fn url_socket_directories() {
        let p = parse("postgres:///db?host=/tmp");
        assert_eq!(p.text("host"), Some("/tmp"));
        assert_eq!(p.text("dbname"), Some("db"));
        let p = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/app");
        assert_eq!(p.text("host"), Some("/var/run/postgresql"));
        let p = parse("postgresql://u@/app?host=/var/run/postgresql&port=5433");
        assert_eq!(p.text("host"), Some("/var/run/postgresql"));
        assert_eq!(p.text("port"), Some("5433"));
        assert_eq!(p.text("user"), Some("u"));
    }

    #[test]
    fn url_multiple_hosts_and_query() {
        let p = parse(
            "postgres://a:1,b,c:3/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=my%20app",
        );
        assert_eq!(p.text("host"), Some("a,b,c"));
        assert_eq!(p.text("port"), Some("1,,3"));
        assert_eq!(p.text("sslmode"), Some("verify-full"));
        assert_eq!(p.text("sslrootcert"), Some("/etc/ca.pem"));
        assert_eq!(p.text("application_name"), Some("my app"));
    }

    #[test]
    fn url_errors() {
        assert!(err("mysql://localhost/db").contains("unsupported scheme \"mysql\""));
        assert!(
            err("postgres://localhost/db?bogus=1").contains("unknown query parameter \"bogus\"")
        );
        assert!(err("postgres://localhost/db?sslmode").contains("missing \"=\""));
        assert!(
            err("postgres://u:%zz@localhost/db")
                .contains("invalid percent-encoding in the password")
        );
        assert!(err("postgres://u:%00@localhost/db").contains("%00"));
        let e = err("postgres://localhost/db?password=a&b&c");
        assert!(!e.contains("\"b\""), "{e}");
        assert!(e.contains("after the password"), "{e}");
    }

    #[test]
    fn url_ssl_true_means_require() {
        assert_eq!(
            parse("postgres://h/db?ssl=true").text("sslmode"),
            Some("require")
        );
    }

    #[test]
    fn empty_url_parts_are_unset() {
        let p = parse("postgres://");
        assert!(!p.has("host") && !p.has("dbname") && !p.has("user"));
        let p = parse("postgres:///");
        assert!(!p.has("dbname"));
    }

    #[test]
    fn conninfo_quotes_and_escapes() {
        let p = parse(
            r"host=localhost port = 5433 dbname='my db' password='it\'s \\ secret' user=a\ b",
        );
        assert_eq!(p.text("host"), Some("localhost"));
        assert_eq!(p.text("port"), Some("5433"));
        assert_eq!(p.text("dbname"), Some("my db"));
        assert_eq!(p.text("password"), Some(r"it's \ secret"));
        assert_eq!(p.text("user"), Some("a b"));
    }

    #[test]
    fn conninfo_errors() {
        assert!(err("host=x bogus=1").contains("unknown connection option \"bogus\""));
        assert!(err("host=x dbname='oops").contains("unterminated"));
        assert!(err("host=x port").contains("missing \"=\" after \"port\""));
        let e = err("host=x password=abc def");
        assert!(!e.contains("def"), "{e}");
        let e = err("host=x password=abc def=1");
        assert!(!e.contains("def"), "{e}");
    }

    #[test]
    fn bare_word_is_a_database_name() {
        assert_eq!(parse("app").text("dbname"), Some("app"));
        assert!(!parse("").has("dbname"));
    }

    #[test]
    fn env_fills_only_gaps() {
        let env = FakeEnv::new(&[
            ("PGHOST", "envhost"),
            ("PGPASSWORD", "envpw"),
            ("PGUSER", "envuser"),
            ("PGPORT", ""),
        ]);
        let mut p = parse("postgres://urluser@urlhost/db");
        p.fill_from_env(&env);
        assert_eq!(p.text("host"), Some("urlhost"));
        assert_eq!(p.text("user"), Some("urluser"));
        assert_eq!(p.text("password"), Some("envpw"));
        assert_eq!(
            p.get("password").map(|v| v.origin),
            Some(Origin::Env("PGPASSWORD"))
        );
        assert!(!p.has("port"));
    }
}
