#!/bin/sh
# The tunnel agent's capture rules with iptables instead of nftables (what
# `actorgate agent install-rules` installs as the nftables table `inet actorgate_agent`; see
# docs/egress.md, "Tunnel agent"). Run inside the actor's network namespace
# (`ip netns exec <ns> sh deploy/agent/iptables.sh`). AGENT_UID is the agent's uid, PORT its
# capture port. Idempotent: the chains are flushed and refilled.
set -eu
AGENT_UID=${AGENT_UID:-1337}
PORT=${PORT:-15001}

for ipt in iptables ip6tables; do
  if [ "$ipt" = iptables ]; then loopback=127.0.0.0/8; else loopback=::1/128; fi
  # TCP: redirect everything but the agent's own, DNS and loopback to the capture port.
  $ipt -t nat -N ACTORGATE_CAPTURE 2>/dev/null || $ipt -t nat -F ACTORGATE_CAPTURE
  $ipt -t nat -A ACTORGATE_CAPTURE -m owner --uid-owner "$AGENT_UID" -j RETURN
  $ipt -t nat -A ACTORGATE_CAPTURE -p tcp --dport 53 -j RETURN
  $ipt -t nat -A ACTORGATE_CAPTURE -d "$loopback" -j RETURN
  $ipt -t nat -A ACTORGATE_CAPTURE -p tcp -j REDIRECT --to-ports "$PORT"
  $ipt -t nat -C OUTPUT -p tcp -j ACTORGATE_CAPTURE 2>/dev/null || $ipt -t nat -A OUTPUT -p tcp -j ACTORGATE_CAPTURE
  # UDP: DNS, loopback and the agent's own pass; anything else is dropped.
  $ipt -t filter -N ACTORGATE_UDP 2>/dev/null || $ipt -t filter -F ACTORGATE_UDP
  $ipt -t filter -A ACTORGATE_UDP -m owner --uid-owner "$AGENT_UID" -j RETURN
  $ipt -t filter -A ACTORGATE_UDP -p udp --dport 53 -j RETURN
  $ipt -t filter -A ACTORGATE_UDP -d "$loopback" -j RETURN
  $ipt -t filter -A ACTORGATE_UDP -p udp -j DROP
  $ipt -t filter -C OUTPUT -p udp -j ACTORGATE_UDP 2>/dev/null || $ipt -t filter -A OUTPUT -p udp -j ACTORGATE_UDP
done
