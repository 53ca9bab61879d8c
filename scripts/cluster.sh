#!/usr/bin/env bash
# A 3-node RabbitMQ cluster and a 6-node Redis Cluster (3 masters, 3 replicas) on this one
# machine, on loopback ports away from the standard ones, for trying things against clusters
# and for fault tests (docs/SCALING.md, "A cluster on one machine").
#
#   scripts/cluster.sh up                 start both clusters (if already up: say so), print the URLs
#   scripts/cluster.sh status             RabbitMQ membership and Redis masters/replicas;
#                                         exits 1 when a node is down or a cluster is not whole
#   scripts/cluster.sh kill-rabbit N      stop RabbitMQ node N (rcN@localhost) with stop_app
#                                         (its VM stays up; `start-rabbit N` brings it back)
#   scripts/cluster.sh start-rabbit N     start_app on node N again
#   scripts/cluster.sh kill-redis-master  SIGKILL the Redis master owning slot 0, wait for the
#                                         failover and print which replica took over
#   scripts/cluster.sh down               stop exactly the nodes `up` started, remove the state
#                                         dir (safe to run twice)
#
# Environment (read by `up`, remembered in the state dir for the other commands):
#   CLUSTER_DIR          state: data, logs, pid files, Erlang cookie [/tmp/refund-worker-cluster]
#   CLUSTER_AMQP_PORTS   AMQP ports of the RabbitMQ nodes rc1, rc2, ... ["5681 5682 5683"];
#                        each node's distribution port is its AMQP port + 20000
#   CLUSTER_REDIS_PORTS  Redis ports ["7001 7002 7003 7004 7005 7006"]; the cluster bus is +10000
#   CLUSTER_REDIS_NODE_TIMEOUT_MS  cluster-node-timeout [15000, Redis' default]: how long a
#                        master must be unreachable before a replica takes over
#
# The RabbitMQ nodes are started the way tests/it/private_rabbit.rs starts its private node:
# as the current user (root here) with the packaged scripts in /usr/lib/rabbitmq/bin (not the
# /usr/sbin wrappers, which switch to the `rabbitmq` user and its cookie), $HOME in the state
# dir (so the Erlang cookie is the cluster's own, shared by its nodes and by the rabbitmqctl
# calls here, and unknown to the machine's node), an empty plugin list (no management or
# prometheus listener to clash with the machine's), an empty rabbitmq-env.conf and a
# rabbitmq.conf of their own (nothing from /etc/rabbitmq, whose node name and listener belong
# to the machine's node), and readiness = the AMQP port answers the protocol header. Unlike the
# tests' node they run detached (`-detached`), since they must outlive this script. To talk to
# them by hand: HOME=$CLUSTER_DIR/rabbit /usr/lib/rabbitmq/bin/rabbitmqctl -n rc1@localhost ...
#
# Never touches the machine's own RabbitMQ (rabbit@localhost on 5672) or Redis (6379): every
# rabbitmqctl call names its node (-n rcN@localhost) and carries the cluster's cookie, and
# `down` only stops a process after checking it is one `up` started.
#
# Needs rabbitmq-server, redis-server/redis-cli (7.x), python3 and ss. `up` takes 15-25 s on
# a 2-core machine, `down` about 7 s (docs/SCALING.md has the figures).
set -euo pipefail

cmd="${1:-}"
[ $# -gt 0 ] && shift

DIR="${CLUSTER_DIR:-/tmp/refund-worker-cluster}"
MARKER="$DIR/.refund-worker-cluster"
STATE="$DIR/cluster.env"
RHOME="$DIR/rabbit"
RDIR="$DIR/redis"
SCRIPTS=/usr/lib/rabbitmq/bin
[ -x "$SCRIPTS/rabbitmq-server" ] || SCRIPTS="$(dirname "$(command -v rabbitmq-server || echo /usr/sbin/rabbitmq-server)")"
START_LIMIT=120 # seconds, like private_rabbit.rs: a (re)start on a loaded two-core machine

if [ -f "$STATE" ]; then
  # shellcheck source=/dev/null
  . "$STATE"
else
  AMQP_PORTS="${CLUSTER_AMQP_PORTS:-5681 5682 5683}"
  REDIS_PORTS="${CLUSTER_REDIS_PORTS:-7001 7002 7003 7004 7005 7006}"
  REDIS_NODE_TIMEOUT_MS="${CLUSTER_REDIS_NODE_TIMEOUT_MS:-15000}"
fi
read -r -a AMQP <<<"${AMQP_PORTS//,/ }"
read -r -a REDIS <<<"${REDIS_PORTS//,/ }"

say() { printf '%s\n' "$*"; }
die() {
  printf 'cluster.sh: %s\n' "$1" >&2
  [ -z "${UP_STARTED:-}" ] || printf 'cluster.sh: what up started so far still runs: %s down stops it\n' "$0" >&2
  exit "${2:-1}"
}
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

node() { printf 'rc%s@localhost' "$1"; }            # node N (1-based)
ndir() { printf '%s/rc%s' "$RHOME" "$1"; }
dist_port() { printf '%s' $(( AMQP[$1 - 1] + 20000 )); }

# rabbitmqctl against one of our nodes, with the cluster's cookie. Always -n.
ctl() {
  local n="$1"; shift
  HOME="$RHOME" "$SCRIPTS/rabbitmqctl" -n "$(node "$n")" "$@" </dev/null
}

# The port takes AMQP connections: it answers the protocol header with Connection.Start.
amqp_answers() {
  python3 - "$1" <<'EOF'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    s.settimeout(5)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)  # frame type 1: a method frame
except OSError:
    sys.exit(1)
EOF
}

listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
redis_ping() { [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; }
redis_state() { redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | awk -F: '$1 == "cluster_state" { print $2 }'; }
redis_pid() { redis-cli -p "$1" info server 2>/dev/null | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }'; }
# Running, and not a zombie waiting for init to reap it (here that takes a second or two).
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# Is pid $2 RabbitMQ node N of this cluster (its environment names the node and our dir)?
our_rabbit_pid() {
  local env
  alive "$2" || return 1
  env="$(tr '\0' '\n' <"/proc/$2/environ" 2>/dev/null)" || return 1
  grep -qx "RABBITMQ_NODENAME=$(node "$1")" <<<"$env" &&
    grep -qx "RABBITMQ_MNESIA_BASE=$(ndir "$1")/mnesia" <<<"$env"
}

# Is pid $2 the Redis server on port $1 that `up` started (its working dir is ours)?
our_redis_pid() {
  alive "$2" && [ "$(readlink "/proc/$2/cwd" 2>/dev/null)" = "$(readlink -f "$RDIR")" ] &&
    grep -q "redis-server.*:$1\b" "/proc/$2/cmdline" 2>/dev/null
}

first_redis_up() {
  local p
  for p in "${REDIS[@]}"; do
    if [ "${1:-}" != "$p" ] && redis_ping "$p"; then say "$p"; return 0; fi
  done
  return 1
}

# "port" of the master serving slot 0 (not failed), as seen from port $1.
slot0_master() {
  redis-cli -p "$1" cluster nodes 2>/dev/null | awk '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        if ($i ~ /^\[/) continue
        split($i, r, "-")
        if (r[1] == 0 && owner == "") { owner = $2; sub(/@.*/, "", owner); sub(/.*:/, "", owner) }
      }
    }
    END { if (owner != "") print owner }'
}

urls() {
  # The comma-separated form the worker is to take. The worker cannot use it yet: multi-URL
  # AMQP_URL and a Redis Cluster client are the rest of issue 17 (docs/SCALING.md).
  local p amqp="" redis=""
  for p in "${AMQP[@]}"; do amqp="${amqp:+$amqp,}amqp://guest:guest@127.0.0.1:$p/%2f"; done
  for p in "${REDIS[@]}"; do redis="${redis:+$redis,}redis://127.0.0.1:$p/"; done
  say "AMQP_URL=$amqp"
  say "REDIS_URL=$redis"
}

# ---------------------------------------------------------------------------------------------
# status

rabbit_status() {
  local i bad=0 asked="" json
  for i in "${!AMQP[@]}"; do
    if amqp_answers "${AMQP[$i]}"; then
      say "  $(node $((i + 1)))  127.0.0.1:${AMQP[$i]}  takes AMQP connections"
      [ -n "$asked" ] || asked=$((i + 1))
    else
      say "  $(node $((i + 1)))  127.0.0.1:${AMQP[$i]}  DOWN"
      bad=1
    fi
  done
  [ -n "$asked" ] || { say "  no node answers"; return 1; }
  # `cluster_status`, short: members, running members, partitions, alarms.
  json="$(ctl "$asked" cluster_status --formatter json 2>/dev/null)" ||
    { say "  rabbitmqctl -n $(node "$asked") cluster_status failed"; return 1; }
  python3 - "$(node "$asked")" "${#AMQP[@]}" "$json" <<'EOF' || bad=1
import json, sys
asked, want, s = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
disk, running = sorted(s.get("disk_nodes", [])), sorted(s.get("running_nodes", []))
parts, alarms = s.get("partitions", {}), s.get("alarms", [])
print(f"  cluster_status (from {asked}): members {', '.join(disk)}; running {', '.join(running)};"
      f" partitions {parts or 'none'}; alarms {alarms or 'none'}")
sys.exit(0 if len(disk) == want and len(running) == want and not parts and not alarms else 1)
EOF
  return "$bad"
}

redis_status() {
  local p bad=0 seen nodes state
  for p in "${REDIS[@]}"; do redis_ping "$p" || { say "  127.0.0.1:$p  DOWN"; bad=1; }; done
  seen="$(first_redis_up)" || { say "  no node answers"; return 1; }
  state="$(redis_state "$seen")"
  nodes="$(redis-cli -p "$seen" cluster nodes)"
  say "  cluster nodes (from 127.0.0.1:$seen), cluster_state:$state"
  # id addr flags master ...: print "addr role [of master-addr] [slots] [fail]"
  awk '
    { id[NR] = $1; a = $2; sub(/@.*/, "", a); addr[$1] = a; flags[NR] = $3; master[NR] = $4
      s = ""; for (i = 9; i <= NF; i++) s = s " " $i; slots[NR] = s }
    END {
      for (n = 1; n <= NR; n++) {
        f = flags[n]; sub(/myself,/, "", f)
        role = (f ~ /master/) ? "master " : "replica"
        line = "    " addr[id[n]] "  " role
        if (role == "replica") line = line "  of " addr[master[n]]
        else if (slots[n] != "") line = line "  slots" slots[n]
        if (f ~ /fail/) line = line "  (" f ")"
        print line
      }
    }' <<<"$nodes" | sort -t: -k2 -n
  [ "$state" = ok ] || bad=1
  ! grep -q 'fail' <<<"$nodes" || bad=1
  return "$bad"
}

do_status() {
  [ -f "$STATE" ] || { say "no cluster in $DIR (run: $0 up)"; return 1; }
  local rc=0
  say "RabbitMQ:"; rabbit_status || rc=1
  say "Redis:"; redis_status || rc=1
  if [ "$rc" = 0 ]; then say "all up"; else say "something is down"; fi
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# up

start_rabbit_node() {
  local n="$1" d port dist
  d="$(ndir "$n")"; port="${AMQP[$n - 1]}"; dist="$(dist_port "$n")"
  mkdir -p "$d/mnesia" "$d/log"
  printf '[].\n' >"$d/enabled_plugins"
  : >"$d/rabbitmq-env.conf"
  printf 'log.console = false\n' >"$d/rabbitmq.conf"
  ( cd "$d" && exec env HOME="$RHOME" \
      RABBITMQ_NODENAME="$(node "$n")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$port" \
      RABBITMQ_DIST_PORT="$dist" \
      RABBITMQ_MNESIA_BASE="$d/mnesia" \
      RABBITMQ_LOG_BASE="$d/log" \
      RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand" \
      RABBITMQ_PID_FILE="$d/pid" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      ERL_CRASH_DUMP="$d/erl_crash.dump" \
      "$SCRIPTS/rabbitmq-server" -detached ) >>"$d/console.log" 2>&1
}

wait_rabbit_node() {
  local n="$1" d t0
  d="$(ndir "$n")"; t0="$(date +%s)"
  until amqp_answers "${AMQP[$n - 1]}"; do
    if [ -s "$d/pid" ] && ! alive "$(cat "$d/pid")"; then
      die "$(node "$n") exited while starting; see $d/console.log and $d/log/"
    fi
    [ $(( $(date +%s) - t0 )) -lt "$START_LIMIT" ] ||
      die "$(node "$n") did not start within ${START_LIMIT}s; see $d/console.log and $d/log/"
    sleep 0.5
  done
}

start_redis_node() {
  local p="$1"
  redis-server --port "$p" --cluster-enabled yes --cluster-config-file "$RDIR/nodes-$p.conf" \
    --cluster-node-timeout "$REDIS_NODE_TIMEOUT_MS" --daemonize yes --bind 127.0.0.1 \
    --save "" --appendonly no --dir "$RDIR" --logfile "$RDIR/$p.log" --pidfile "$RDIR/$p.pid" \
    >/dev/null
}

redis_cluster_ok_everywhere() {
  local p
  for p in "${REDIS[@]}"; do
    [ "$(redis_state "$p")" = ok ] || return 1
  done
}

do_up() {
  local t0 t_redis t_rabbit p q i n busy="" names
  if [ -f "$DIR/up.done" ]; then
    if do_status >/dev/null 2>&1; then
      say "already up (state in $DIR)"; urls; return 0
    fi
    die "a cluster from $DIR is up but not whole (see: $0 status); use start-rabbit N, or $0 down then $0 up"
  fi
  if [ -e "$DIR" ]; then
    [ -f "$MARKER" ] && die "$DIR holds a cluster whose start did not finish: run $0 down first"
    die "$DIR exists and is not this script's: set CLUSTER_DIR or remove it"
  fi
  [ "${#AMQP[@]}" -ge 1 ] || die "CLUSTER_AMQP_PORTS is empty" 2
  [ "${#REDIS[@]}" -ge 6 ] && [ $(( ${#REDIS[@]} % 2 )) = 0 ] ||
    die "CLUSTER_REDIS_PORTS needs an even number of ports, at least 6 (masters + one replica each)" 2
  for tool in redis-server redis-cli python3 ss; do
    command -v "$tool" >/dev/null || die "$tool is needed" 2
  done
  [ -x "$SCRIPTS/rabbitmq-server" ] || die "rabbitmq-server not found in $SCRIPTS" 2

  # Refuse, before starting anything, if a port or a node name is taken by someone else.
  for i in "${!AMQP[@]}"; do
    for q in "${AMQP[$i]}" "$(dist_port $((i + 1)))"; do
      if listening "$q"; then busy="$busy$(ss -Hltnp "sport = :$q")"$'\n'; fi
    done
  done
  for p in "${REDIS[@]}"; do
    for q in "$p" $((p + 10000)); do
      if listening "$q"; then busy="$busy$(ss -Hltnp "sport = :$q")"$'\n'; fi
    done
  done
  [ -z "$busy" ] || die "ports in use by something else (set CLUSTER_AMQP_PORTS / CLUSTER_REDIS_PORTS):"$'\n'"$busy"
  names="$(epmd -names 2>/dev/null || true)"
  for i in "${!AMQP[@]}"; do
    if grep -q "^name rc$((i + 1)) at port" <<<"$names"; then
      die "an Erlang node named $(node $((i + 1))) already runs (epmd -names); it is not this script's"
    fi
  done

  t0="$(now)"
  UP_STARTED=1
  mkdir -p "$RHOME" "$RDIR"
  touch "$MARKER"
  cat >"$STATE" <<EOF
AMQP_PORTS="${AMQP[*]}"
REDIS_PORTS="${REDIS[*]}"
REDIS_NODE_TIMEOUT_MS="$REDIS_NODE_TIMEOUT_MS"
EPMD_WAS_RUNNING="$([ -n "$names" ] && echo yes || echo no)"
EOF
  python3 -c 'import secrets; print(secrets.token_hex(16).upper(), end="")' >"$RHOME/.erlang.cookie"
  chmod 400 "$RHOME/.erlang.cookie"

  # The RabbitMQ nodes boot in the background (10-30 s each) while Redis comes up.
  for i in "${!AMQP[@]}"; do
    start_rabbit_node $((i + 1)) || die "rabbitmq-server for $(node $((i + 1))) failed; see $(ndir $((i + 1)))/console.log"
  done
  say "RabbitMQ: starting $(for i in "${!AMQP[@]}"; do printf '%s (AMQP %s) ' "$(node $((i + 1)))" "${AMQP[$i]}"; done)"

  for p in "${REDIS[@]}"; do start_redis_node "$p" || die "redis-server on $p failed; see $RDIR/$p.log"; done
  for p in "${REDIS[@]}"; do
    n=0
    until redis_ping "$p"; do
      n=$((n + 1)); [ "$n" -lt 60 ] || die "redis-server on $p does not answer; see $RDIR/$p.log"
      sleep 0.5
    done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS[@]}") --cluster-replicas 1 \
    --cluster-yes >"$RDIR/create.log" 2>&1 || die "redis-cli --cluster create failed; see $RDIR/create.log"
  n=0
  until redis_cluster_ok_everywhere; do
    n=$((n + 1)); [ "$n" -lt 120 ] || die "the Redis cluster is not ok after 60 s; see $RDIR/create.log"
    sleep 0.5
  done
  t_redis="$(since "$t0")"
  say "Redis: cluster_state:ok on ${REDIS[*]} after ${t_redis}s"

  for i in "${!AMQP[@]}"; do wait_rabbit_node $((i + 1)); done
  say "RabbitMQ: ${#AMQP[@]} nodes take connections after $(since "$t0")s; clustering"
  for ((n = 2; n <= ${#AMQP[@]}; n++)); do
    { ctl "$n" stop_app && ctl "$n" join_cluster "$(node 1)" && ctl "$n" start_app; } \
      >>"$(ndir "$n")/console.log" 2>&1 ||
      die "$(node "$n") could not join $(node 1); see $(ndir "$n")/console.log"
  done
  n=0
  until rabbit_status >/dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -lt 60 ] || die "the RabbitMQ cluster is not whole after clustering; see $0 status"
    sleep 1
  done
  t_rabbit="$(since "$t0")"
  touch "$DIR/up.done"
  say "RabbitMQ: cluster of ${#AMQP[@]} running after ${t_rabbit}s"
  say "up in $(since "$t0")s; state in $DIR"
  urls
}

# ---------------------------------------------------------------------------------------------
# faults

do_kill_rabbit() {
  local n="${1:-}" t0
  [ -f "$STATE" ] || die "no cluster in $DIR"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "${#AMQP[@]}" ] ||
    die "usage: $0 kill-rabbit N (1..${#AMQP[@]})" 2
  t0="$(now)"
  ctl "$n" stop_app >/dev/null
  say "$(node "$n") (AMQP ${AMQP[$n - 1]}): stop_app done in $(since "$t0")s; its VM stays up,"
  say "  clients on it are disconnected; bring it back with: $0 start-rabbit $n"
}

do_start_rabbit() {
  local n="${1:-}" t0
  [ -f "$STATE" ] || die "no cluster in $DIR"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "${#AMQP[@]}" ] ||
    die "usage: $0 start-rabbit N (1..${#AMQP[@]})" 2
  t0="$(now)"
  ctl "$n" start_app >/dev/null
  say "$(node "$n") (AMQP ${AMQP[$n - 1]}): start_app done in $(since "$t0")s"
}

do_kill_redis_master() {
  local seen victim pid t0 new="" role n=0
  [ -f "$STATE" ] || die "no cluster in $DIR"
  seen="$(first_redis_up)" || die "no Redis node of the cluster answers"
  victim="$(slot0_master "$seen")"
  [ -n "$victim" ] || die "no live master owns slot 0 (see: $0 status)"
  pid="$(redis_pid "$victim")"
  our_redis_pid "$victim" "$pid" || die "the master on $victim (pid $pid) is not one this script started"
  kill -KILL "$pid"
  t0="$(now)"
  say "killed the master of slot 0: 127.0.0.1:$victim (pid $pid, SIGKILL); waiting for the failover"
  say "  (cluster-node-timeout ${REDIS_NODE_TIMEOUT_MS} ms, then a replica's election)"
  while :; do
    seen="$(first_redis_up "$victim")" || die "no other Redis node answers"
    new="$(slot0_master "$seen")"
    if [ -n "$new" ] && [ "$new" != "$victim" ] &&
       [ "$(redis_state "$new")" = ok ]; then
      break
    fi
    n=$((n + 1)); [ "$n" -lt 240 ] || die "no failover after 120 s (see: $0 status)"
    sleep 0.5
  done
  role="$(redis-cli -p "$new" info replication | tr -d '\r' | awk -F: '$1 == "role" { print $2 }')"
  say "failover: replica 127.0.0.1:$new took over slot 0 (now role:$role) $(since "$t0")s after the kill"
}

# ---------------------------------------------------------------------------------------------
# down

do_down() {
  local i n d pid p t0 left=0
  t0="$(now)"
  if [ ! -e "$DIR" ]; then say "nothing to stop: no $DIR"; return 0; fi
  [ -f "$MARKER" ] || die "$DIR was not made by this script; not touching it"
  if [ -f "$STATE" ]; then
    # RabbitMQ: `rabbitmqctl stop <pid file>` returns once the VM has exited. In parallel.
    for i in "${!AMQP[@]}"; do
      n=$((i + 1)); d="$(ndir "$n")"
      [ -d "$d" ] || continue
      ( pid="$(cat "$d/pid" 2>/dev/null || true)"
        if ctl "$n" stop ${pid:+"$d/pid"} >>"$d/console.log" 2>&1; then
          say "stopped $(node "$n") ($(since "$t0")s)"
        elif our_rabbit_pid "$n" "$pid"; then
          kill -TERM "$pid"; sleep 5; ! alive "$pid" || kill -KILL "$pid"
          say "stopped $(node "$n") (pid $pid, by signal)"
        else
          say "$(node "$n") was not running"
        fi ) &
    done
    wait
    # Redis: SHUTDOWN NOSAVE to each of ours (SIGTERM if it does not answer), then wait.
    local stopping=()
    for p in "${REDIS[@]}"; do
      pid="$(cat "$RDIR/$p.pid" 2>/dev/null || true)"
      if our_redis_pid "$p" "$pid"; then
        if [ "$(redis_pid "$p")" = "$pid" ]; then
          redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
        else
          kill -TERM "$pid"
        fi
        stopping+=("$p:$pid")
      else
        say "redis 127.0.0.1:$p was not running"
      fi
    done
    for p in "${stopping[@]}"; do
      pid="${p#*:}"
      for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
      ! alive "$pid" || kill -KILL "$pid"
      say "stopped redis 127.0.0.1:${p%%:*} ($(since "$t0")s)"
    done
    # Anything of ours still alive? Then keep the state dir, for another try.
    for i in "${!AMQP[@]}"; do
      pid="$(cat "$(ndir $((i + 1)))/pid" 2>/dev/null || true)"
      if our_rabbit_pid $((i + 1)) "$pid"; then say "$(node $((i + 1))) (pid $pid) still runs"; left=1; fi
    done
    for p in "${REDIS[@]}"; do
      pid="$(cat "$RDIR/$p.pid" 2>/dev/null || true)"
      if our_redis_pid "$p" "$pid"; then say "redis $p (pid $pid) still runs"; left=1; fi
    done
    [ "$left" = 0 ] || die "not everything stopped; $DIR kept"
    # epmd: if the first node started it, stop it (it refuses while any node is registered).
    if [ "${EPMD_WAS_RUNNING:-yes}" = no ]; then epmd -kill >/dev/null 2>&1 || true; fi
  fi
  rm -rf -- "$DIR"
  say "removed $DIR; down in $(since "$t0")s"
}

case "$cmd" in
  up) do_up ;;
  status) do_status ;;
  down) do_down ;;
  kill-rabbit) do_kill_rabbit "$@" ;;
  start-rabbit) do_start_rabbit "$@" ;;
  kill-redis-master) do_kill_redis_master ;;
  *) die "usage: $0 up|status|down|kill-rabbit N|start-rabbit N|kill-redis-master (see its header)" 2 ;;
esac
