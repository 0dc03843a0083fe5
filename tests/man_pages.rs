//! Drift check between the command line (`src/cli.rs`, `src/client.rs`) and the man page
//! `man/pyfpm.8`: every long flag clap knows must be documented, and every flag the man
//! page documents as an option item must exist.

use clap::CommandFactory;
use std::collections::BTreeSet;

/// The man page with roff's escaped dashes (`\-`) turned into plain ones.
fn man_page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/man/pyfpm.8");
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        .replace("\\-", "-")
}

/// `--long` flags (and visible aliases) of a built command, help and version included.
fn long_flags(cmd: &clap::Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_visible_aliases().unwrap_or_default())
                .map(|l| format!("--{l}"))
        })
        .collect()
}

/// The `--long` flags named on the tag line of `.TP` items (the option lists).
fn documented_flags(man: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = man.lines().collect();
    let mut out = BTreeSet::new();
    for pair in lines.windows(2) {
        if pair[0].trim() != ".TP" {
            continue;
        }
        let tag = pair[1];
        let mut rest = tag;
        while let Some(i) = rest.find("--") {
            let name: String = rest[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                out.insert(format!("--{name}"));
            }
            rest = &rest[i + 2 + name.len()..];
        }
    }
    out
}

fn built() -> clap::Command {
    let mut cmd = pyfpm::cli::Cli::command();
    cmd.build();
    cmd
}

#[test]
fn every_long_flag_is_in_the_man_page() {
    let man = man_page();
    let cmd = built();
    let request = cmd
        .find_subcommand("request")
        .expect("the `request` subcommand exists");
    let mut missing = Vec::new();
    for (who, flags) in [
        ("pyfpm", long_flags(&cmd)),
        ("pyfpm request", long_flags(request)),
    ] {
        assert!(flags.contains("--help"), "{who}: clap was not built");
        for flag in flags {
            // A flag counts as documented when it appears as a word, not as a prefix of
            // a longer flag (`--pid` inside `--pidfile`).
            let found = man.match_indices(&flag).any(|(i, _)| {
                !man[i + flag.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if !found {
                missing.push(format!("{who} {flag}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from man/pyfpm.8: {missing:?}"
    );
}

#[test]
fn every_documented_option_exists() {
    let cmd = built();
    let request = cmd.find_subcommand("request").expect("request exists");
    let mut known = long_flags(&cmd);
    known.extend(long_flags(request));
    let documented = documented_flags(&man_page());
    assert!(
        documented.contains("--config") && documented.contains("--timeout"),
        "the option lists were not found in man/pyfpm.8: {documented:?}"
    );
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "man/pyfpm.8 documents options the command line does not have: {unknown:?}"
    );
}

#[test]
fn the_request_command_is_documented() {
    let man = man_page();
    for needle in [
        ".SS \"pyfpm request",
        "Exit status of",
        ".SH SIGNALS",
        ".SH EXIT STATUS",
    ] {
        assert!(man.contains(needle), "man/pyfpm.8 lacks {needle:?}");
    }
}
