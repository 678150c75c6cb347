//! Tests against the local server: 127.0.0.1:5432 and `/var/run/postgresql`, user
//! `postgres`, trust authentication. Expectations follow the server's own `ssl` setting.

use std::time::{Duration, Instant};

use super::params::tests::FakeEnv;
use super::{ConnectError, ConnectOptions, FailureKind, resolve};

/// Options from a conninfo string, with a controlled environment (no `~/.postgresql`).
fn opts(conninfo: &str) -> ConnectOptions {
    let mut env = FakeEnv::new(&[]);
    env.home = Some("/nonexistent-pgc-home".into());
    resolve::resolve(Some(conninfo), &env).unwrap()
}

/// The server's `ssl` and `ssl_cert_file` settings, over a plain connection.
async fn server_tls() -> (bool, String) {
    let client = opts("host=127.0.0.1 user=postgres dbname=postgres sslmode=disable")
        .connect()
        .await
        .unwrap();
    let ssl: String = client.query_one("show ssl", &[]).await.unwrap().get(0);
    let file: String = client
        .query_one("show ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    (ssl == "on", file)
}

/// Whether the session of `o` is encrypted.
async fn session_ssl(o: &ConnectOptions) -> Result<bool, ConnectError> {
    let client = o.connect().await?;
    Ok(client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0))
}

#[tokio::test]
async fn plain_prefer_and_require() {
    let (ssl_on, _) = server_tls().await;
    let base = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
    assert!(
        !session_ssl(&opts(&format!("{base} sslmode=disable")))
            .await
            .unwrap()
    );
    assert_eq!(
        session_ssl(&opts(&format!("{base} sslmode=allow")))
            .await
            .unwrap(),
        ssl_on
    );
    assert_eq!(
        session_ssl(&opts(&format!("{base} sslmode=prefer")))
            .await
            .unwrap(),
        ssl_on
    );
    let required = session_ssl(&opts(&format!("{base} sslmode=require"))).await;
    if ssl_on {
        assert!(required.unwrap());
    } else {
        let e = required.unwrap_err();
        assert_eq!(e.kind(), Some(FailureKind::Tls), "{e}");
    }
}

#[tokio::test]
async fn url_form_connects() {
    let o = opts("postgres://postgres@127.0.0.1:5432/postgres?application_name=pgc-test");
    let client = o.connect().await.unwrap();
    let name: String = client
        .query_one("show application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "pgc-test");
    let o = opts("postgres://postgres@127.0.0.1/postgres");
    let client = o.connect().await.unwrap();
    let name: String = client
        .query_one("show application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "pgc");
}

#[tokio::test]
async fn verify_full_with_system_roots_fails_cleanly() {
    let (ssl_on, _) = server_tls().await;
    let o = opts("host=127.0.0.1 user=postgres dbname=postgres sslrootcert=system");
    let e = o.connect().await.unwrap_err();
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.starts_with(
            "could not connect to database \"postgres\" at 127.0.0.1:5432 as user \"postgres\": tls: "
        ),
        "{text}"
    );
    assert_eq!(e.kind(), Some(FailureKind::Tls));
    assert!(!e.is_transient());
    if ssl_on {
        assert!(text.contains("certificate verify failed"), "{text}");
    } else {
        assert!(text.contains("does not support TLS"), "{text}");
    }
}

#[tokio::test]
async fn verify_ca_and_full_with_the_servers_certificate() {
    let (ssl_on, cert_file) = server_tls().await;
    let readable = std::fs::metadata(&cert_file).is_ok();
    let base = format!("user=postgres dbname=postgres sslrootcert='{cert_file}'");

    let ca = opts(&format!("host=127.0.0.1 sslmode=verify-ca {base}"));
    // The same cert as root, but 127.0.0.1 is not a name in it (Debian's snakeoil names the
    // machine's host name / localhost).
    let full_ip = opts(&format!("host=127.0.0.1 sslmode=verify-full {base}"));
    match (ssl_on, readable) {
        (true, true) => {
            assert!(session_ssl(&ca).await.unwrap());
            // require + a root file behaves as verify-ca (libpq rule).
            let require = opts(&format!("host=127.0.0.1 sslmode=require {base}"));
            assert!(session_ssl(&require).await.unwrap());
            let e = full_ip.connect().await.unwrap_err().to_string();
            assert!(e.contains("certificate verify failed"), "{e}");
            assert!(e.contains("127.0.0.1"), "{e}");
            // By name: fine when the certificate names localhost (Debian's snakeoil names the
            // machine's host name); otherwise the chain passed and only the name failed.
            let full_name = opts(&format!("host=localhost sslmode=verify-full {base}"));
            match session_ssl(&full_name).await {
                Ok(ssl) => assert!(ssl),
                Err(e) => assert!(e.to_string().contains("not valid for name"), "{e}"),
            }
        }
        (true, false) => {
            let e = ca.connect().await.unwrap_err().to_string();
            assert!(e.contains(&cert_file), "{e}");
        }
        (false, _) => {
            let e = ca.connect().await.unwrap_err();
            assert_eq!(e.kind(), Some(FailureKind::Tls), "{e}");
        }
    }
}

#[tokio::test]
async fn missing_root_file_is_named_in_the_error() {
    let o = opts(
        "host=127.0.0.1 user=postgres dbname=postgres sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
    );
    let e = o.connect().await.unwrap_err().to_string();
    assert!(
        e.ends_with(": tls: root certificate file \"/nonexistent/ca.pem\" does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn closed_port_fails_fast() {
    let started = Instant::now();
    let e = opts("host=127.0.0.1 port=1 user=postgres dbname=postgres")
        .connect()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        e.to_string(),
        "could not connect to database \"postgres\" at 127.0.0.1:1 as user \"postgres\": connection refused"
    );
    assert_eq!(e.kind(), Some(FailureKind::Unreachable));
    assert!(e.is_transient());
}

#[tokio::test]
async fn second_host_is_tried() {
    let o = opts("host=127.0.0.1,127.0.0.1 port=1,5432 user=postgres dbname=postgres");
    let client = o.connect().await.unwrap();
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let e = opts("host=127.0.0.1,127.0.0.1 port=1,2 user=postgres dbname=postgres")
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(": 127.0.0.1:1: connection refused; 127.0.0.1:2: connection refused"),
        "{e}"
    );
}

#[tokio::test]
async fn unix_socket_ignores_tls_like_libpq() {
    if !std::path::Path::new("/var/run/postgresql/.s.PGSQL.5432").exists() {
        // No local socket on this machine: the error must say so, naming the socket.
        let e = opts("host=/var/run/postgresql user=postgres dbname=postgres")
            .connect()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/var/run/postgresql/.s.PGSQL.5432"), "{e}");
        return;
    }
    for mode in ["prefer", "require", "verify-full"] {
        let o = opts(&format!(
            "host=/var/run/postgresql user=postgres dbname=postgres sslmode={mode}"
        ));
        assert!(!session_ssl(&o).await.unwrap(), "{mode}");
    }
    // The default host is the socket directory.
    let o = opts("user=postgres dbname=postgres");
    assert!(!session_ssl(&o).await.unwrap());
    let o = opts("postgres:///postgres?host=/var/run/postgresql&user=postgres");
    assert!(!session_ssl(&o).await.unwrap());
}

#[tokio::test]
async fn missing_socket_is_reported() {
    let e = opts("host=/nonexistent-dir user=postgres dbname=postgres")
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "could not connect to database \"postgres\" at /nonexistent-dir/.s.PGSQL.5432 as user \"postgres\": no such socket"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_database_is_a_server_error() {
    let e = opts("host=127.0.0.1 user=postgres dbname=pgc_no_such_database")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Some(FailureKind::Server));
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .ends_with(": database \"pgc_no_such_database\" does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let e = opts(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2"
    ))
    .connect()
    .await
    .unwrap_err();
    hold.abort();
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(e.kind(), Some(FailureKind::Timeout));
    assert!(e.to_string().ends_with(": timed out after 2s"), "{e}");
}

#[tokio::test]
async fn unknown_host_name() {
    let e = opts("host=pgc-no-such-host.invalid user=postgres dbname=postgres connect_timeout=5")
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("could not translate host name \"pgc-no-such-host.invalid\" to address"),
        "{e}"
    );
}

#[test]
fn connect_outside_a_runtime_is_an_error() {
    let o = opts("host=127.0.0.1");
    let e = futures_util::FutureExt::now_or_never(o.connect())
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, ConnectError::NoRuntime));
}
