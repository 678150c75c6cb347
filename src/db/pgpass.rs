//! The libpq password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`).
//!
//! Each line is `hostname:port:database:username:password`; a field that is exactly `*`
//! matches anything; `\` escapes `:` and `\`; lines starting with `#` are comments. The first
//! matching line wins. As in libpq, the file is ignored when it is not a regular file or
//! when group or others have any access to it.

use std::path::Path;

/// The outcome of a password-file lookup.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A matching line.
    Found(String),
    /// No file, or no matching line.
    NotFound,
    /// The file exists but was not used; the reason says why (no secrets in it).
    Ignored(String),
}

/// Looks up the password for one connection target. `host` is the host name as given, a
/// socket directory, or an IP address; the caller maps the default socket to `localhost`.
pub(super) fn lookup(path: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Lookup {
    let Ok(meta) = std::fs::metadata(path) else {
        return Lookup::NotFound;
    };
    if !meta.is_file() {
        return Lookup::Ignored(format!(
            "password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Lookup::Ignored(format!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            ));
        }
    }
    match std::fs::read_to_string(path) {
        Ok(text) => match find(&text, host, &port.to_string(), dbname, user) {
            Some(pw) => Lookup::Found(pw),
            None => Lookup::NotFound,
        },
        Err(e) => Lookup::Ignored(format!(
            "password file \"{}\" could not be read: {}",
            path.display(),
            super::io_text(&e)
        )),
    }
}

/// The password of the first line of `text` matching the four keys.
pub(super) fn find(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let fields = split(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = |i: usize, want: &str| {
                let (text, wildcard) = &fields[i];
                *wildcard || text == want
            };
            (matches(0, host) && matches(1, port) && matches(2, dbname) && matches(3, user))
                .then(|| fields[4].0.clone())
        })
}

/// Splits a line into its `:`-separated fields, each marked when it is exactly the `*`
/// wildcard. Backslash escapes the next character; as in libpq, the password ends at the next
/// unescaped `:` too.
fn split(line: &str) -> Vec<(String, bool)> {
    let mut fields = Vec::with_capacity(5);
    let mut current = String::new();
    let mut raw_star = true;
    let mut raw_len = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == ':' {
            fields.push((std::mem::take(&mut current), raw_star && raw_len == 1));
            raw_star = true;
            raw_len = 0;
            continue;
        }
        raw_len += 1;
        if c == '\\' {
            raw_star = false;
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else {
            raw_star &= c == '*';
            current.push(c);
        }
    }
    fields.push((current, raw_star && raw_len == 1));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_with_wildcards_and_escapes() {
        let text = "\
# comment
db.example.com:5432:app:bob:first
*:*:*:bob:p\\:w\\\\d
localhost:5432:*:*:local
";
        assert_eq!(
            find(text, "db.example.com", "5432", "app", "bob").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(text, "other", "1", "x", "bob").as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            find(text, "localhost", "5432", "x", "carol").as_deref(),
            Some("local")
        );
        assert_eq!(find(text, "localhost", "5433", "x", "carol"), None);
    }

    #[test]
    fn escaped_star_is_literal() {
        let text = "\\*:*:*:*:pw\n";
        assert_eq!(find(text, "h", "1", "d", "u"), None);
        assert_eq!(find(text, "*", "1", "d", "u").as_deref(), Some("pw"));
    }

    #[test]
    fn escaped_colon_in_host() {
        let text = "\\:\\:1:5432:*:*:v6\n";
        assert_eq!(find(text, "::1", "5432", "d", "u").as_deref(), Some("v6"));
    }

    #[test]
    fn short_lines_are_skipped() {
        assert_eq!(
            find("a:b:c\n*:*:*:*:ok\n", "a", "b", "c", "d").as_deref(),
            Some("ok")
        );
    }

    #[test]
    fn file_permissions_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pgc-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&path, "h", 5432, "d", "u"),
            Lookup::Found("secret".into())
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        match lookup(&path, "h", 5432, "d", "u") {
            Lookup::Ignored(why) => assert!(why.contains("0600") && !why.contains("secret")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            lookup(&dir.join("missing"), "h", 5432, "d", "u"),
            Lookup::NotFound
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
