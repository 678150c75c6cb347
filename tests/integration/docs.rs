//! Completions and man pages: generated from the clap definition, committed, and
//! checked here against what the code generates now. Regenerate with
//! `PGC_UPDATE_DOCS=1 cargo test --test integration docs`.

use std::path::Path;

use crate::support::{pgc_cmd, run};

const SHELLS: [&str; 5] = ["bash", "zsh", "fish", "elvish", "powershell"];

fn file_name(shell: &str) -> &'static str {
    match shell {
        "bash" => "pgc.bash",
        "zsh" => "_pgc",
        "fish" => "pgc.fish",
        "elvish" => "pgc.elv",
        _ => "_pgc.ps1",
    }
}

fn check(path: &Path, generated: &str) {
    if std::env::var_os("PGC_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: run PGC_UPDATE_DOCS=1 cargo test --test integration docs",
        path.display()
    );
}

#[test]
fn committed_completions_match_the_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    for shell in SHELLS {
        // Through the real binary, with no database configured at all.
        let out = run(
            pgc_cmd().env("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
            &["completions", shell],
        );
        out.ok();
        assert!(!out.stdout.is_empty());
        check(&root.join(file_name(shell)), &out.stdout);
    }
}

#[test]
fn committed_man_pages_match_the_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let dir = std::env::temp_dir().join(format!("pgc-man-{}", std::process::id()));
    let out = run(&mut pgc_cmd(), &["man", "--dir", dir.to_str().unwrap()]);
    out.ok();
    let mut generated: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    for expected in [
        "pgc.1",
        "pgc-migrate.1",
        "pgc-enqueue.1",
        "pgc-completions.1",
        "pgc-man.1",
    ] {
        assert!(
            generated.iter().any(|g| g == expected),
            "{expected} missing: {generated:?}"
        );
    }
    for name in &generated {
        check(
            &root.join(name),
            &std::fs::read_to_string(dir.join(name)).unwrap(),
        );
    }
    if std::env::var_os("PGC_UPDATE_DOCS").is_none() {
        let mut committed: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        committed.sort();
        assert_eq!(
            committed, generated,
            "man/ holds pages the CLI no longer generates"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let page = run(&mut pgc_cmd(), &["man"]);
    page.ok();
    assert!(
        page.stdout.contains(".TH pgc 1"),
        "{}",
        &page.stdout[..page.stdout.len().min(200)]
    );
}
