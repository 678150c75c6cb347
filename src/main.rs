//! The `pgc` binary: everything lives in the library; this only hands over the process.

/// mimalloc rather than the system allocator (the `mimalloc` feature, on by default): a
/// worker allocates and frees many small objects for every execution, in bursts of a
/// claim's or a settle's size, and glibc's malloc spent about a fifth of the worker's own
/// instructions on them (README, "Performance").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pgc::cli::main()
}
