//! `actorgate agent …`: the tunnel agent's tooling (DESIGN §7.5, issue 13). `install-rules` and
//! `remove-rules` apply the capture rules (`egress_pep::agent::rules`) with `nft -f`, in the
//! current network namespace or in a named one (`ip netns exec`); `--dry-run` prints the script.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use egress_pep::agent::rules::{CaptureRules, remove_script};

/// `actorgate agent` subcommands.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Install (or replace) the capture rules: the actor's TCP to the agent, DNS and the
    /// agent's own traffic excluded, other UDP dropped. Idempotent.
    InstallRules(InstallArgs),
    /// Remove the capture rules (nothing to do when absent).
    RemoveRules(Target),
}

/// Where the rules go.
#[derive(Args)]
pub struct Target {
    /// The network namespace (`ip netns` name); default: the current one.
    #[arg(long)]
    netns: Option<String>,
    /// Print the nft script instead of applying it.
    #[arg(long)]
    dry_run: bool,
}

/// `install-rules` arguments.
#[derive(Args)]
pub struct InstallArgs {
    /// The agent's capture listener port.
    #[arg(long, default_value_t = 15001)]
    port: u16,
    /// The agent's uid: its connections are not captured.
    #[arg(long)]
    exclude_uid: Option<u32>,
    /// A socket mark the agent sets: marked connections are not captured.
    #[arg(long, value_parser = parse_mark)]
    exclude_mark: Option<u32>,
    #[command(flatten)]
    target: Target,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a mark (a number, decimal or 0x hex)"))
}

/// Runs `actorgate agent …`.
pub fn run(cmd: AgentCommand) -> Result<()> {
    let (script, target) = match cmd {
        AgentCommand::InstallRules(a) => {
            let rules = CaptureRules {
                port: a.port,
                exclude_uid: a.exclude_uid,
                exclude_mark: a.exclude_mark,
            };
            (rules.install_script()?, a.target)
        }
        AgentCommand::RemoveRules(t) => (remove_script(), t),
    };
    if target.dry_run {
        print!("{script}");
        return Ok(());
    }
    let mut cmd = match &target.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install the nftables package)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("writing the rules to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        match &target.netns {
            Some(ns) => bail!("nft in network namespace {ns:?} refused the rules: {first}"),
            None => bail!("nft refused the rules: {first}"),
        }
    }
    Ok(())
}
