//! Network namespaces a test creates for itself (root is required; CI runs as root): addresses
//! outside 127.0.0.0/8 and `::1` (the metadata service, NAT64, private ranges) exist only on the
//! namespace's loopback, so a regression that dials them never sends a packet off the machine.
//!
//! [`TestNetns::create`] makes a namespace with `lo` up; [`TestNetns::add_address`] puts an
//! address on its `lo`; [`TestNetns::command`] runs a process inside (`ip netns exec`);
//! [`TestNetns::run`] runs async test code on a thread that entered the namespace, so every
//! socket that code creates (clients, counting listeners) lives there. Dropping it deletes the
//! namespace (processes started inside must be stopped first).

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace owned by one test.
pub struct TestNetns {
    name: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl TestNetns {
    /// A new namespace `ag-<pid>-<n>` with `lo` up.
    pub fn create() -> Self {
        let name = format!(
            "ag-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name };
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace; panics with its stderr when it fails.
    pub fn exec_ip(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name, "ip"];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Adds `cidr` (e.g. `169.254.169.254/32`, `64:ff9b::a9fe:a9fe/128`) to the namespace's `lo`.
    pub fn add_address(&self, cidr: &str) {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        let mut args = vec![family, "addr", "add", cidr, "dev", "lo"];
        if family == "-6" {
            args.push("nodad");
        }
        self.exec_ip(&args);
    }

    /// Joins this namespace and `other` with a veth pair, `cidr` on this side and `other_cidr`
    /// on the other (e.g. `10.200.0.1/24`), both up; returns the two interface names.
    pub fn veth_to(&self, other: &TestNetns, cidr: &str, other_cidr: &str) -> (String, String) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (mine, theirs) = (
            format!("va{}x{n}", std::process::id() % 100_000),
            format!("vb{}x{n}", std::process::id() % 100_000),
        );
        ip(&[
            "link", "add", &mine, "type", "veth", "peer", "name", &theirs,
        ]);
        ip(&["link", "set", &mine, "netns", &self.name]);
        ip(&["link", "set", &theirs, "netns", &other.name]);
        self.exec_ip(&["addr", "add", cidr, "dev", &mine]);
        self.exec_ip(&["link", "set", &mine, "up"]);
        other.exec_ip(&["addr", "add", other_cidr, "dev", &theirs]);
        other.exec_ip(&["link", "set", &theirs, "up"]);
        (mine, theirs)
    }

    /// Adds a route in the namespace (`ip route add ARGS`), e.g. `default via 10.200.0.2`.
    pub fn route(&self, args: &[&str]) {
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        self.exec_ip(&full);
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` to completion on a new thread inside the namespace (a current-thread tokio
    /// runtime there); sockets it creates belong to the namespace.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
