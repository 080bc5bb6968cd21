//! The pgvault binary: everything is in the library; this only hands over the exit code.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(pgvault::cli::main());
}
