//! The harness of the suites that need something outside the test binary: a DNS server
//! (Debian's `dnsmasq`), an etcd server (Debian's `etcd-server`), or the rights to make
//! network namespaces (`CAP_NET_ADMIN` and iproute2's `ip`).
//!
//! Such a suite is built with `harness = false` and its `main` hands its tests, each with what
//! it needs, to [`run`]. What a test needs is probed once, before any test runs:
//! - present: the test runs;
//! - missing: the test is reported `ignored` (libtest's own summary counts it), and the end of
//!   the run says which tests were skipped and why;
//! - missing with `FLUMEN_REQUIRE_EXTERNAL=1` (`.ci/run` sets it): the test fails, so a CI
//!   machine without the program cannot pass by skipping.
// Shared by several suites, each using part of it.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    process::{Command, ExitCode},
};

use libtest_mimic::{Arguments, Failed, Trial};

/// The environment switch that turns every skip into a failure.
pub const REQUIRE: &str = "FLUMEN_REQUIRE_EXTERNAL";

/// What a test needs besides the test binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Nothing: it always runs.
    Nothing,
    /// A `dnsmasq` binary.
    Dnsmasq,
    /// An `etcd` binary.
    Etcd,
    /// The rights to make network namespaces and veth pairs.
    Netns,
}

impl Needs {
    /// Why it is not there, or `None` when it is.
    fn missing(self) -> Option<&'static str> {
        let present = match self {
            Needs::Nothing => true,
            Needs::Dnsmasq => dnsmasq_binary().is_some(),
            Needs::Etcd => runs("etcd", &["--version"]),
            Needs::Netns => can_make_a_namespace(),
        };
        if present {
            return None;
        }
        Some(match self {
            Needs::Nothing => unreachable!("nothing is always present"),
            Needs::Dnsmasq => "dnsmasq is not installed (apt-get install dnsmasq-base)",
            Needs::Etcd => "etcd is not installed (apt-get install etcd-server)",
            Needs::Netns => {
                "cannot make a network namespace (needs CAP_NET_ADMIN and iproute2's `ip`)"
            }
        })
    }
}

/// The dnsmasq binary to start, if one runs.
pub fn dnsmasq_binary() -> Option<&'static str> {
    ["/usr/sbin/dnsmasq", "dnsmasq"]
        .into_iter()
        .find(|binary| runs(binary, &["--version"]))
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Makes a namespace and removes it again.
fn can_make_a_namespace() -> bool {
    let name = format!("flumen-probe-{}", std::process::id());
    let made = runs("ip", &["netns", "add", &name]);
    if made {
        runs("ip", &["netns", "delete", &name]);
    }
    made
}

/// Whether `FLUMEN_REQUIRE_EXTERNAL` asks for every external program.
pub fn required() -> bool {
    std::env::var(REQUIRE).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs `tests` (name, what it needs, the test) as libtest would, with the rule of the
/// [module](self) for what is missing; returns the process's exit code.
pub fn run(tests: Vec<(&str, Needs, fn())>) -> ExitCode {
    let args = Arguments::from_args();
    let required = required();
    let mut probed: BTreeMap<Needs, Option<&'static str>> = BTreeMap::new();
    let mut skipped: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut trials = Vec::new();
    for (name, needs, test) in tests {
        // A filtered-out test probes nothing (a child process started with `--exact NAME`
        // makes no namespace of its own).
        let wanted = args.filter.as_deref().is_none_or(|filter| {
            if args.exact {
                name == filter
            } else {
                name.contains(filter)
            }
        });
        let missing = if wanted && !args.list {
            *probed.entry(needs).or_insert_with(|| needs.missing())
        } else {
            None
        };
        let trial = match missing {
            None => Trial::test(name, move || {
                test();
                Ok(())
            }),
            Some(why) if required => Trial::test(name, move || {
                Err(Failed::from(format!("{REQUIRE} is set, but {why}")))
            }),
            Some(why) => {
                skipped.entry(why).or_default().push(name.to_string());
                // Run anyway (`--include-ignored`), it fails with the reason.
                Trial::test(name, move || Err(Failed::from(why))).with_ignored_flag(true)
            }
        };
        trials.push(trial);
    }
    let conclusion = libtest_mimic::run(&args, trials);
    for (why, names) in &skipped {
        eprintln!(
            "SKIPPED {} test(s): {why}; set {REQUIRE}=1 to make this a failure:",
            names.len()
        );
        for name in names {
            eprintln!("    {name}");
        }
    }
    conclusion.exit_code()
}
