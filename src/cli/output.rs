//! Writing to the terminal: stdout for data, stderr for warnings and errors, and the
//! broken-pipe rule (a reader that went away is not an error).

use std::io::{self, Write};

/// Stdout's reader went away (`pgc … | head -1`): not an error, exit 0 quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes `text` to stdout and flushes it.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(()),
    }
}

/// Writes `value` as JSON (pretty or on one line) and a newline to stdout, streaming
/// through a buffer rather than building the whole text first.
pub fn write_stdout_json<T: serde::Serialize>(value: &T, pretty: bool) -> anyhow::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = if pretty {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    match written
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(()),
    }
}

/// Prints `pgc: warning: …` on stderr.
pub fn warn(text: &str) {
    eprintln!("pgc: warning: {text}");
}

/// Prints `pgc: …` on stderr (information, not data).
pub fn info(text: &str) {
    eprintln!("pgc: {text}");
}

/// Prints `pgc: error: …` on stderr.
pub fn error_line(text: &str) {
    eprintln!("pgc: error: {}", text.replace('\n', " "));
}

/// True when the error is stdout's reader having gone away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutClosed>().is_some()
}

/// True when stdout is a terminal and `NO_COLOR` is unset: use box-drawing characters
/// and colour. Otherwise plain ASCII.
pub fn fancy() -> bool {
    use std::io::IsTerminal;
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
