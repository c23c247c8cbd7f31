//! Network namespaces for partition tests: each process gets its own namespace, joined to
//! one or two bridges by veth pairs, with its own addresses. Links are cut and healed with
//! `ip link set … down/up` on the bridge side, so the process keeps running and sees only
//! silence, as in a real partition.
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544: set aside for testing network devices),
//! one /24 per net and test process, so they clash with no real network. The test's own
//! namespace gets `.1` on each bridge to reach the processes. Everything is removed on drop
//! (and leftovers of an earlier, killed run with the same names before creating).
//! Creating namespaces needs root; without it the test fails and says so.

use std::collections::BTreeMap;
use std::process::Command;

/// The two nets: NATS traffic (servers, nodes, scheduler) and HTTP traffic (scheduler ↔
/// nodes ↔ the test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lan {
    /// NATS: 198.18.K.0/24.
    Nats,
    /// HTTP: 198.19.K.0/24.
    Http,
}

impl Lan {
    fn tag(self) -> &'static str {
        match self {
            Lan::Nats => "n",
            Lan::Http => "h",
        }
    }

    fn second_octet(self) -> u8 {
        match self {
            Lan::Nats => 18,
            Lan::Http => 19,
        }
    }
}

/// The namespaces and bridges of one test.
pub struct Net {
    k: u8,
    namespaces: Vec<String>,
    /// (member, lan) → its veth's bridge-side name.
    links: BTreeMap<(String, Lan), String>,
}

/// Runs `ip args…`; the error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Creates the two bridges, with the test's own address `.1` on each.
    pub fn create() -> Result<Net, String> {
        let k = (std::process::id() % 250) as u8;
        let net = Net {
            k,
            namespaces: Vec::new(),
            links: BTreeMap::new(),
        };
        net.cleanup_stale();
        for lan in [Lan::Nats, Lan::Http] {
            let br = net.bridge(lan);
            ip(&["link", "add", &br, "type", "bridge"]).map_err(|e| {
                format!("{e}\nthe partition tests need root (CAP_NET_ADMIN) to create network namespaces and bridges")
            })?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", net.addr(lan, 1)),
                "dev",
                &br,
            ])?;
            ip(&["link", "set", &br, "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self, lan: Lan) -> String {
        format!("sk{}b{}", self.k, lan.tag())
    }

    /// The namespace of member `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("skiff-{}-{name}", self.k)
    }

    /// Host `host`'s address on `lan`.
    pub fn addr(&self, lan: Lan, host: u8) -> String {
        format!("198.{}.{}.{host}", lan.second_octet(), self.k)
    }

    /// Adds member `name` in its own namespace, at host number `host` on each of `lans`.
    pub fn add(&mut self, name: &str, host: u8, lans: &[Lan]) -> Result<(), String> {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        for &lan in lans {
            let outside = format!("sk{}{name}{}", self.k, lan.tag());
            let inside = format!("{outside}i");
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &self.bridge(lan), "up"])?;
            let cidr = format!("{}/24", self.addr(lan, host));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            self.links.insert((name.to_string(), lan), outside);
        }
        Ok(())
    }

    /// Cuts `name` off `lan`: its packets go nowhere, and nobody tells it.
    pub fn cut(&self, name: &str, lan: Lan) {
        self.set(name, lan, "down");
    }

    /// Joins `name` to `lan` again.
    pub fn heal(&self, name: &str, lan: Lan) {
        self.set(name, lan, "up");
    }

    fn set(&self, name: &str, lan: Lan, state: &str) {
        let link = self
            .links
            .get(&(name.to_string(), lan))
            .unwrap_or_else(|| panic!("{name} has no link on {lan:?}"));
        ip(&["link", "set", link, state]).expect("set link state");
    }

    /// Removes what a killed earlier run with this process id may have left.
    fn cleanup_stale(&self) {
        let prefix = format!("skiff-{}-", self.k);
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(ns) = line.split_whitespace().next()
                    && ns.starts_with(&prefix)
                {
                    let _ = ip(&["netns", "del", ns]);
                }
            }
        }
        for lan in [Lan::Nats, Lan::Http] {
            let _ = ip(&["link", "del", &self.bridge(lan)]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pairs that end in it.
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for lan in [Lan::Nats, Lan::Http] {
            let _ = ip(&["link", "del", &self.bridge(lan)]);
        }
    }
}
