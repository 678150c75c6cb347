//! `pgc completions` and `pgc man`: shell completions and man pages generated from the
//! one clap definition. Neither needs a database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;
use super::output::write_stdout;

/// Print a completion script for SHELL on stdout.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Print pgc(1) on stdout, or with --dir write pgc.1 and one page per subcommand.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write every page into this directory instead of printing pgc.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The completion script for `shell`, as committed under `completions/`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgc", &mut out);
    out
}

/// Every man page: (file name, roff text), `pgc.1` first, then `pgc-SUBCOMMAND.1`.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = Vec::new();
    let mut root = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut root)
        .context("rendering pgc.1")?;
    pages.push(("pgc.1".to_string(), root));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("pgc-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub)
            .render(&mut page)
            .with_context(|| format!("rendering {name}.1"))?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// Runs `pgc completions`.
pub fn completions(args: &CompletionsArgs) -> Result<ExitCode> {
    let script = completion_script(args.shell);
    write_stdout(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `pgc man`.
pub fn man(args: &ManArgs) -> Result<ExitCode> {
    let pages = man_pages()?;
    match &args.dir {
        None => {
            let (_, root) = pages.first().context("no man page was rendered")?;
            write_stdout(&String::from_utf8_lossy(root))?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in &pages {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
