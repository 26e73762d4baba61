#!/usr/bin/env bash
# A multi-host testbed on one machine: N host network namespaces and an origin namespace joined by a bridge
# that lives in its own namespace, so nothing touches the root namespace's networking. Addresses come from a
# private range that exists only inside these namespaces. Each host's upload and download are capped with
# tc tbf (upload: egress of the host's eth0; download: egress of its peer end on the bridge); the origin has
# its own cap.
#
#   scripts/testbed.sh up     [--hosts N] [--rate RATE] [--origin-rate RATE] [--prefix P] [--subnet A.B.C]
#   scripts/testbed.sh down   [--prefix P]           removes every namespace named P-*; safe to repeat
#   scripts/testbed.sh status [--prefix P] [--json]
#
# Names (prefix P, default vmtb): P-br (bridge br0), P-origin, P-h1..P-hN; in each node namespace the link
# is eth0. Addresses: SUBNET.1 the origin, SUBNET.(10+i) host i (default subnet 10.213.0). RATE is a tc rate
# (1gbit, 100mbit, 500mbit...); the origin's defaults to RATE. `up` tears down a half-built testbed if it
# fails or is interrupted. Run inside a node: ip netns exec P-h1 CMD. State: /run/vmthunder-testbed/P.json.
set -euo pipefail

CMD="${1:-}"; [ $# -gt 0 ] && shift
HOSTS=8
RATE=1gbit
ORIGIN_RATE=""
PREFIX="${VMTB_PREFIX:-vmtb}"
SUBNET=10.213.0
JSON=0
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) HOSTS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --origin-rate) ORIGIN_RATE="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --subnet) SUBNET="$2"; shift 2 ;;
    --json) JSON=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "testbed: unknown argument: $1" >&2; exit 2 ;;
  esac
done
ORIGIN_RATE="${ORIGIN_RATE:-$RATE}"
STATE_DIR=/run/vmthunder-testbed
STATE="$STATE_DIR/$PREFIX.json"

die() { echo "testbed: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "prefix must be 1-8 lowercase letters/digits (interface names are short)"
[[ "$HOSTS" =~ ^[0-9]+$ ]] && [ "$HOSTS" -ge 1 ] && [ "$HOSTS" -le 200 ] || die "--hosts must be 1..200"
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet must look like 10.213.0"

# Bytes per second of a tc rate string (kbit/mbit/gbit, bit, or bps units).
rate_bytes() {
  local r="${1,,}" n unit
  n="${r%%[a-z]*}"; unit="${r#"$n"}"
  case "$unit" in
    gbit) echo $(( n * 125000000 )) ;; mbit) echo $(( n * 125000 )) ;; kbit) echo $(( n * 125 )) ;;
    bit|"") echo $(( n / 8 )) ;; gbps) echo $(( n * 1000000000 )) ;; mbps) echo $(( n * 1000000 )) ;;
    kbps) echo $(( n * 1000 )) ;; bps) echo "$n" ;;
    *) die "cannot parse rate '$1' (use e.g. 1gbit, 100mbit)" ;;
  esac
}

# tbf on the egress of DEV in namespace NS. Burst covers one 250 Hz tick at the rate (the kernel's HZ), at
# least 64 KiB so GSO-sized packets pass; the queue holds 20 ms at the rate, enough for TCP to fill the link.
shape() {
  local ns="$1" dev="$2" rate="$3" bps burst
  bps="$(rate_bytes "$rate")"
  burst=$(( bps / 250 )); [ "$burst" -lt 65536 ] && burst=65536
  ip -n "$ns" link set "$dev" txqueuelen 1000
  tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 20ms
}

list_ns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}-" || true; }

down() {
  local ns pids i
  for ns in $(list_ns); do
    # Processes left inside keep a namespace (and its links) alive after `ip netns delete`: end them first.
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [ -n "$pids" ]; then
      kill -TERM $pids 2>/dev/null || true
      for i in $(seq 1 50); do
        pids="$(ip netns pids "$ns" 2>/dev/null || true)"; [ -z "$pids" ] && break; sleep 0.1
      done
      [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    fi
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -f "$STATE"
}

add_node() {  # name addr rate
  local name="$1" addr="$2" rate="$3" ns="$PREFIX-$1"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  # The bridge-side end is named after the node; the node-side end is eth0 in the node's namespace.
  ip -n "$BR_NS" link add "$name" type veth peer name eth0 netns "$ns"
  ip -n "$BR_NS" link set "$name" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  shape "$ns" eth0 "$rate"        # the node's upload
  shape "$BR_NS" "$name" "$rate"  # the node's download
}

up() {
  [ -z "$(list_ns)" ] || die "a testbed with prefix '$PREFIX' is up already (scripts/testbed.sh down --prefix $PREFIX)"
  rate_bytes "$RATE" >/dev/null; rate_bytes "$ORIGIN_RATE" >/dev/null
  # Whatever stops `up` half-way (a failed command under set -e, Ctrl-C, kill) tears down what it built.
  UP_OK=0
  trap '[ "$UP_OK" = 1 ] || { echo "testbed: up did not finish; tearing down" >&2; down; }' EXIT
  trap 'exit 130' INT TERM
  BR_NS="$PREFIX-br"
  ip netns add "$BR_NS"
  ip -n "$BR_NS" link set lo up
  ip netns exec "$BR_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$BR_NS" link add br0 type bridge stp_state 0 forward_delay 0
  ip -n "$BR_NS" link set br0 up
  add_node origin "$SUBNET.1" "$ORIGIN_RATE"
  local i hosts_json=""
  for i in $(seq 1 "$HOSTS"); do
    add_node "h$i" "$SUBNET.$((10 + i))" "$RATE"
    hosts_json="$hosts_json${hosts_json:+,}{\"ns\":\"$PREFIX-h$i\",\"ip\":\"$SUBNET.$((10 + i))\",\"brDev\":\"h$i\"}"
  done
  mkdir -p "$STATE_DIR"
  printf '{"prefix":"%s","rate":"%s","originRate":"%s","rateBytesPerSec":%s,"originRateBytesPerSec":%s,"bridgeNs":"%s","origin":{"ns":"%s","ip":"%s","brDev":"origin"},"hosts":[%s]}\n' \
    "$PREFIX" "$RATE" "$ORIGIN_RATE" "$(rate_bytes "$RATE")" "$(rate_bytes "$ORIGIN_RATE")" "$BR_NS" \
    "$PREFIX-origin" "$SUBNET.1" "$hosts_json" >"$STATE"
  UP_OK=1
  trap - INT TERM
  echo "testbed: up: $PREFIX-origin ($SUBNET.1, $ORIGIN_RATE) + $HOSTS hosts ($RATE each way) on bridge $BR_NS/br0" >&2
  [ "$JSON" = 1 ] && cat "$STATE"
  return 0
}

status() {
  local ns
  if [ "$JSON" = 1 ]; then
    if [ -f "$STATE" ] && [ -n "$(list_ns)" ]; then cat "$STATE"; else echo null; fi
    return 0
  fi
  [ -n "$(list_ns)" ] || { echo "testbed '$PREFIX': down"; return 0; }
  [ -f "$STATE" ] && echo "testbed '$PREFIX': $(cat "$STATE")"
  for ns in $(list_ns); do
    printf '%-12s %s\n' "$ns" "$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
  done
}

case "$CMD" in
  up) up ;;
  down) down; echo "testbed: '$PREFIX' down" >&2 ;;
  status) status ;;
  *) echo "usage: scripts/testbed.sh up|down|status [--hosts N] [--rate RATE] [--origin-rate RATE] [--prefix P] [--json]" >&2; exit 2 ;;
esac
