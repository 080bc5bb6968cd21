//! The man pages in man/ are generated from the clap definitions; this test fails
//! when they drift. Regenerate with `PGVAULT_BLESS_MAN=1 cargo test --test man`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn pages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    collect(pgvault::cli::Cli::command(), "pgvault", &mut out);
    out
}

fn collect(cmd: clap::Command, name: &str, out: &mut Vec<(String, Vec<u8>)>) {
    let cmd = cmd.name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf).unwrap();
    out.push((format!("{name}.1"), buf));
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        collect(sub.clone(), &format!("{name}-{}", sub.get_name()), out);
    }
}

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man")
}

#[test]
fn man_pages_match_the_cli() {
    let pages = pages();
    let dir = man_dir();
    if std::env::var_os("PGVAULT_BLESS_MAN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "1") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        for (name, body) in &pages {
            std::fs::write(dir.join(name), body).unwrap();
        }
        return;
    }
    let mut stale = Vec::new();
    for (name, body) in &pages {
        match std::fs::read(dir.join(name)) {
            Ok(on_disk) if &on_disk == body => {}
            _ => stale.push(name.clone()),
        }
    }
    let expected: std::collections::BTreeSet<_> = pages.iter().map(|(n, _)| n.clone()).collect();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".1") && !expected.contains(&n) {
            stale.push(format!("{n} (no such command any more)"));
        }
    }
    assert!(
        stale.is_empty(),
        "man pages out of date: {stale:?}; run PGVAULT_BLESS_MAN=1 cargo test --test man"
    );
}
