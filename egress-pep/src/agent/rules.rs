//! The capture rules of an actor's network namespace (DESIGN §7.5), as one nftables table
//! `inet actorgate_agent` that an operator can install, inspect (`nft list table inet
//! actorgate_agent`) and remove:
//!
//! * TCP the actor opens is redirected to the agent's capture listener, except the agent's own
//!   connections (by uid and/or by socket mark), DNS (TCP 53) and loopback destinations;
//! * UDP is dropped, except DNS (UDP 53), loopback destinations and the agent's own.
//!
//! The redirect and drop rules carry counters (`nft list table inet actorgate_agent`).
//!
//! [`install_script`] replaces the table in one transaction (installing twice leaves one copy);
//! [`remove_script`] deletes it (also when it is absent). Both are `nft -f` input, so
//! `--dry-run` prints exactly what would be applied.

use std::fmt::Write as _;

/// The table's name (family `inet`: IPv4 and IPv6 alike).
pub const TABLE: &str = "actorgate_agent";

/// What the rules need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// The agent's capture listener port (default 15001).
    pub port: u16,
    /// The agent's uid: its connections are never redirected.
    pub exclude_uid: Option<u32>,
    /// A socket mark the agent sets on its connections: never redirected.
    pub exclude_mark: Option<u32>,
}

/// Why rules cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Neither a uid nor a mark excludes the agent's own traffic: its connections to the PEP
    /// would be redirected to itself.
    #[error(
        "name the agent's uid or mark to exclude (--exclude-uid, --exclude-mark): its own connections would be captured"
    )]
    NoExclusion,
    /// Port 0.
    #[error("the capture port must not be 0")]
    BadPort,
}

impl CaptureRules {
    /// The `nft -f` script that installs (or replaces) the table.
    ///
    /// # Errors
    /// [`RulesError`] for rules that would capture the agent itself or name port 0.
    pub fn install_script(&self) -> Result<String, RulesError> {
        if self.exclude_uid.is_none() && self.exclude_mark.is_none() {
            return Err(RulesError::NoExclusion);
        }
        if self.port == 0 {
            return Err(RulesError::BadPort);
        }
        let mut own = String::new();
        if let Some(uid) = self.exclude_uid {
            let _ = writeln!(own, "    meta skuid {uid} accept");
        }
        if let Some(mark) = self.exclude_mark {
            let _ = writeln!(own, "    meta mark {mark:#x} accept");
        }
        let port = self.port;
        Ok(format!(
            "# actorgate agent capture rules (DESIGN 7.5); replaces any previous copy
table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
  chain capture {{
    type nat hook output priority -100; policy accept;
{own}    tcp dport 53 accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    meta l4proto tcp counter redirect to :{port}
  }}
  chain udp_out {{
    type filter hook output priority filter; policy accept;
{own}    udp dport 53 accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    meta l4proto udp counter drop
  }}
}}
"
        ))
    }
}

/// The `nft -f` script that removes the table (a no-op when it is absent).
pub fn remove_script() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_must_be_excluded() {
        let rules = CaptureRules {
            port: 15001,
            exclude_uid: None,
            exclude_mark: None,
        };
        assert_eq!(rules.install_script(), Err(RulesError::NoExclusion));
        let rules = CaptureRules {
            port: 0,
            exclude_uid: Some(1337),
            exclude_mark: None,
        };
        assert_eq!(rules.install_script(), Err(RulesError::BadPort));
    }

    #[test]
    fn the_script_replaces_the_table_and_excludes_the_agent_and_dns() {
        let script = CaptureRules {
            port: 15001,
            exclude_uid: Some(1337),
            exclude_mark: Some(0x539),
        }
        .install_script()
        .unwrap();
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("no {l:?} in\n{script}"))
        };
        assert!(at("delete table inet actorgate_agent") < at("table inet actorgate_agent {"));
        assert!(at("meta skuid 1337 accept") < at("meta l4proto tcp counter redirect to :15001"));
        assert!(at("meta mark 0x539 accept") < at("meta l4proto tcp counter redirect to :15001"));
        assert!(at("tcp dport 53 accept") < at("meta l4proto tcp counter redirect to :15001"));
        assert!(at("udp dport 53 accept") < at("meta l4proto udp counter drop"));
    }
}
