//! The command line without a database: help, version, connection errors, secrets.

use crate::support::{pgc_cmd, run};

#[test]
fn help_and_version_need_no_database() {
    let out = run(
        pgc_cmd().env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        &["--help"],
    );
    out.ok();
    assert!(out.stdout.contains("enqueue"));
    let out = run(&mut pgc_cmd(), &["enqueue", "--help"]);
    out.ok();
    assert!(out.stdout.contains("--traceparent"));
    let out = run(&mut pgc_cmd(), &["--version"]);
    out.ok();
    assert!(out.stdout.starts_with("pgc "));
}

#[test]
fn help_never_shows_the_database_url_from_the_environment() {
    let out = run(
        pgc_cmd().env("DATABASE_URL", "postgres://u:s3cret-pw@127.0.0.1:1/db"),
        &["migrate", "--help"],
    );
    out.ok();
    assert!(!out.stdout.contains("s3cret-pw"), "{}", out.stdout);
}

#[test]
fn an_unreachable_database_is_one_line_naming_host_port_and_database() {
    let out = run(
        &mut pgc_cmd(),
        &[
            "--database-url",
            "postgres://alice:s3cret-pw@127.0.0.1:1/appdb",
            "enqueue",
            "t",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("pgc: error: "), "{}", out.stderr);
    assert!(out.stderr.contains("127.0.0.1"), "{}", out.stderr);
    assert!(out.stderr.contains("127.0.0.1:1"), "{}", out.stderr);
    assert!(out.stderr.contains("appdb"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // The same through the libpq variables.
    let out = run(
        pgc_cmd()
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "1")
            .env("PGDATABASE", "envdb")
            .env("PGPASSWORD", "s3cret-pw"),
        &["migrate"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("envdb"), "{}", out.stderr);
    assert!(out.stderr.contains("127.0.0.1:1"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
}

#[test]
fn a_malformed_database_url_is_reported_without_its_password() {
    let out = run(
        &mut pgc_cmd(),
        &[
            "--database-url",
            "postgres://alice:s3cret-pw@127.0.0.1:5432/db?sslmode=bogus",
            "migrate",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("sslmode"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
}

#[test]
fn bad_input_is_refused_before_connecting() {
    // No database is reachable, yet the usage error wins: exit 2, not 1.
    let out = run(
        pgc_cmd().env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        &["enqueue", "t", "--payload", "{"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("payload is not valid JSON"));
}

#[test]
fn a_worker_command_that_cannot_run_is_refused_before_connecting() {
    let unreachable = "postgres://nobody@127.0.0.1:1/none";
    for (args, expected) in [
        (
            &["work", "--", "pgc-no-such-command"][..],
            "cannot run the command after --: pgc-no-such-command: not found in PATH",
        ),
        (
            &["work", "--", "./no/such/file"][..],
            "cannot run the command after --: ./no/such/file: no such executable file",
        ),
        (&["work", "--", ""][..], "the command after -- is empty"),
        (
            &["work", "--timeout", "0s", "--", "true"][..],
            "\"0s\" is too short (at least 10ms)",
        ),
    ] {
        let out = run(pgc_cmd().env("DATABASE_URL", unreachable), args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    use std::process::Stdio;
    let mut child = pgc_cmd()
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn every_duration_flag_shares_one_parser_and_its_bound() {
    // A duration past the bound would overflow a deadline computed from it.
    for args in [
        &["work", "--shutdown-timeout", "300000y", "--", "true"][..],
        &[
            "cancel",
            "01a2231b-0df6-708b-bbf7-b6a2172f1de4",
            "--wait",
            "300000y",
        ],
        &["enqueue", "t", "--wait", "--wait-timeout", "300000y"],
    ] {
        let out = run(
            pgc_cmd().env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            args,
        );
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("limit of 1000 years"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = run(&mut pgc_cmd(), &["work", "--lease", "soon", "--", "true"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("invalid duration \"soon\""),
        "{}",
        out.stderr
    );
}
