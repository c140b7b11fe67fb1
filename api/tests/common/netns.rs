//! Network namespaces for tests that need several hosts: each joined to this one by a veth
//! pair, made by the test and removed on drop. Suites that use it run under external.rs's
//! harness, which checks the rights (`CAP_NET_ADMIN`) before any test runs.
#![allow(unsafe_code)]

use std::{os::fd::AsRawFd, process::Command};

/// A network namespace joined to this one by a veth pair: `10.213.N.1` here, `10.213.N.2`
/// inside. Removed (with the pair) on drop.
pub struct Netns {
    name: String,
    host_if: String,
    pub inside: std::net::IpAddr,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

impl Netns {
    /// Makes namespace number `n` (distinct per test, so tests can run at once).
    pub fn create(n: u8) -> Self {
        let pid = std::process::id() % 100_000;
        let name = format!("flumen-{pid}-{n}");
        assert!(ip(&["netns", "add", &name]), "making namespace {name}");
        let host_if = format!("fh{pid}x{n}");
        let inner_if = format!("fi{pid}x{n}");
        let netns = Self {
            name,
            host_if,
            inside: format!("10.213.{n}.2").parse().expect("an address"),
        };
        let (host, inside) = (format!("10.213.{n}.1/24"), format!("10.213.{n}.2/24"));
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &netns.name, "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        let ok = ip(&[
            "link",
            "add",
            &netns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ]) && ip(&["link", "set", &inner_if, "netns", &netns.name])
            && ip(&["addr", "add", &host, "dev", &netns.host_if])
            && ip(&["link", "set", &netns.host_if, "up"])
            && exec(&["addr", "add", &inside, "dev", &inner_if])
            && exec(&["link", "set", &inner_if, "up"])
            && exec(&["link", "set", "lo", "up"]);
        assert!(ok, "setting up namespace {} failed", netns.name);
        netns
    }

    /// Cuts the link: from now on nothing crosses it either way, and nobody is told.
    pub fn link_down(&self) {
        assert!(ip(&["link", "set", &self.host_if, "down"]));
    }

    /// Mends the link.
    pub fn link_up(&self) {
        assert!(ip(&["link", "set", &self.host_if, "up"]));
    }

    /// Runs `f` on a thread that joined the namespace: sockets it opens live there.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: `setns` with a valid namespace file descriptor only changes this
            // thread's network namespace; the thread is ours and ends after `f`.
            let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}
