//! The test harness: per-test databases from a migrated template, and running the binary.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

/// The server and role tests use; `scripts/test` sets it when the default does not work.
pub fn admin_url() -> String {
    std::env::var("PGC_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// `url` with its database name replaced by `db`.
pub fn url_with_db(url: &str, db: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .expect("admin url must be a postgres:// URL");
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{db}{query}")
}

async fn admin() -> Client {
    let url = admin_url();
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {} ({e}); run the tests with scripts/test, \
             which starts or installs one, or set PGC_TEST_ADMIN_URL",
                redact(&url)
            )
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

fn template_name() -> String {
    let mut sums = String::new();
    for m in pgc::migrate::MIGRATIONS {
        sums.push_str(&m.checksum());
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(sums.as_bytes()));
    format!("pgc_tpl_{}", &digest[..12])
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// Creates the migrated template once (across processes, under an advisory lock) and
/// sweeps databases left by test processes that are gone.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            // Each #[tokio::test] has its own runtime; do the work on a runtime of our
            // own so no connection outlives the runtime it was spawned on.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(build_template())
            })
            .join()
            .unwrap()
        })
        .await
        .as_str()
}

async fn build_template() -> String {
    let name = template_name();
    let admin = admin().await;
    admin
        .execute("select pg_advisory_lock(7061676374657374)", &[])
        .await
        .unwrap();
    sweep(&admin, &name).await;
    let exists = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{name}_building");
        for stmt in [
            format!("drop database if exists {building} with (force)"),
            format!("create database {building}"),
        ] {
            admin.batch_execute(&stmt).await.unwrap();
        }
        {
            let opts =
                pgc::db::ConnectOptions::from_url(&url_with_db(&admin_url(), &building)).unwrap();
            let mut client = opts.connect().await.unwrap();
            pgc::migrate::run(&mut client).await.unwrap();
        }
        for stmt in [
            format!("alter database {building} with allow_connections false"),
            format!(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{building}'"
            ),
            format!("alter database {building} rename to {name}"),
            format!("alter database {name} with allow_connections true"),
        ] {
            admin.batch_execute(&stmt).await.unwrap();
        }
    }
    admin
        .execute("select pg_advisory_unlock(7061676374657374)", &[])
        .await
        .unwrap();
    name
}

/// Drops per-test databases of processes that no longer run, and stale templates.
async fn sweep(admin: &Client, current_template: &str) {
    let rows = admin
        .query(
            "select datname from pg_database where datname like 'pgc\\_t\\_%' or datname like 'pgc\\_tpl\\_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let db: String = row.get(0);
        let stale = if let Some(rest) = db.strip_prefix("pgc_t_") {
            let pid = rest.split('_').next().unwrap_or("");
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        } else {
            db != current_template
        };
        if stale {
            let _ = admin
                .batch_execute(&format!("drop database if exists {db} with (force)"))
                .await;
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A database of one test's own.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// A URL reaching it.
    pub url: String,
}

impl TestDb {
    /// A database with the current schema, cloned from the template.
    pub async fn migrated() -> TestDb {
        let template = template().await;
        Self::create(&format!("template {template}")).await
    }

    /// An empty database (no pgconductor schema).
    pub async fn empty() -> TestDb {
        Self::create("template template0").await
    }

    async fn create(clause: &str) -> TestDb {
        let name = format!(
            "pgc_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .await
            .batch_execute(&format!("create database {name} {clause}"))
            .await
            .unwrap();
        let url = url_with_db(&admin_url(), &name);
        TestDb { name, url }
    }

    /// A plain connection to the test database.
    pub async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// The `pgc` binary with this database in DATABASE_URL and a clean environment.
    pub fn pgc(&self) -> Command {
        let mut cmd = pgc_cmd();
        cmd.env("DATABASE_URL", &self.url);
        cmd
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping database {} for inspection", self.name);
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    admin()
                        .await
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await
                })
        })
        .join();
    }
}

/// The `pgc` binary with no database or trace settings inherited from this process.
pub fn pgc_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgc"));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PG")
            || k.starts_with("OTEL_")
            || k == "DATABASE_URL"
            || k == "TRACEPARENT"
            || k == "TRACESTATE"
            || k == "NO_COLOR"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What a finished `pgc` run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "pgc failed: {}", self.stderr);
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` with `args` and captures what it printed.
pub fn run(cmd: &mut Command, args: &[&str]) -> Run {
    cmd.args(args).output().expect("running pgc").into()
}

/// Runs `cmd` with `args`, feeding `input` on stdin.
pub fn run_with_stdin(cmd: &mut Command, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pgc");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for pgc");
    writer.join().unwrap();
    out.into()
}

/// Runs SQL that writes execution rows by hand, then indexes their traceparents as pgc's
/// own enqueues do in the same statement or transaction.
pub async fn write_by_hand(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(sql).await?;
    client
        .batch_execute(
            "insert into pgconductor._private_traceparents (traceparent, execution_id)
             select e.trace_context ->> 'traceparent', e.id
             from pgconductor._private_executions e
             where e.trace_context ->> 'traceparent' is not null
               and not exists (select 1 from pgconductor._private_traceparents t
                               where t.execution_id = e.id)",
        )
        .await
}
