#!/usr/bin/env bash
# Cluster soak (issue 12): three servers and a private Redis on loopback,
# CLIENTS clients chatting and churning (examples/soak) for DURATION
# seconds, while Redis is restarted twice (SIGKILL, 2 s down, same port)
# and one server is killed (SIGKILL) and started again.
#
#   bench/soak-cluster.sh                 # 600 s, 1000 clients
#   DURATION=90 bench/soak-cluster.sh     # a short run
#
# The faults, as fractions of DURATION: Redis restarted at 15 % and 60 %,
# the third server killed at 30 % and started again at 40 %. Then a 5 s
# closing phase: no churn, no faults, every client says one last line.
#
# Accounting (done by the driver, per receiving connection and sender):
#   expected   the lines of a sender from the first one the receiver got to
#              the last one (joining late or the sender leaving is no loss;
#              the closing line brings each stream's end into the range)
#   delivered  received once, in the sender's order
#   skipped /  covered by the receiver's `* N lines skipped` and
#   lost       `* N lines from other servers were lost` notices
#   apart      missing across a `* lost contact with the other servers`
#              notice of the receiver: said while the servers were apart,
#              which SPEC §4 says stay on the sender's server, and both
#              sides were told so
#   not        lines a client sent to a server killed before it passed them
#   accepted   on; its connection died with the server, so no later line of
#              that sender extends anyone's range over them
#   unaccounted  missing lines beyond the receiver's skipped + lost notices
# The run fails (exit 1) when anything is unaccounted, a line came twice or
# out of order, a server that was not killed exited, or the driver failed.
# Everything listens on 127.0.0.1 only; every process is stopped by PID.
set -euo pipefail

DURATION=${DURATION:-600}
CLIENTS=${CLIENTS:-1000}
ROOMS=${ROOMS:-20}
LINE_RATE=${LINE_RATE:-0.2}
CHURN=${CHURN:-10}
REDIS_PORT=${REDIS_PORT:-16395}
PORTS=(${PORTS:-18095 18096 18097})
NODE_TIMEOUT=${NODE_TIMEOUT:-5}

cd "$(dirname "$0")/.."
cargo build --release --quiet --bin apollonion --example soak
BIN=target/release/apollonion
SOAK=target/release/examples/soak
WORK=$(mktemp -d /tmp/apollonion-soak.XXXXXX)
ulimit -n "$(ulimit -Hn)"

REDIS_PID=
SERVER_PIDS=()
cleanup() {
    for pid in "${SERVER_PIDS[@]}" $REDIS_PID; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
    REDIS_PID=$!
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
        sleep 0.05
    done
    echo "redis-server did not start" >&2
    exit 1
}

start_server() { # index
    local i=$1
    "$BIN" --listen "127.0.0.1:${PORTS[$i]}" --redis "redis://127.0.0.1:$REDIS_PORT" \
        --cluster-name soak --node-timeout "$NODE_TIMEOUT" --max-per-ip 0 \
        --max-clients 5000 --stats-interval 0 --log-level warn \
        2>>"$WORK/server$i.log" &
    SERVER_PIDS[$i]=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${PORTS[$i]}") 2>/dev/null && return
        sleep 0.05
    done
    echo "server $i did not start" >&2
    exit 1
}

restart_redis() {
    echo "soak-cluster: $(date +%T) Redis killed"
    kill -KILL "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
    sleep 2
    start_redis
    echo "soak-cluster: $(date +%T) Redis back"
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_redis
for i in 0 1 2; do start_server "$i"; done
ADDRS="127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"

"$SOAK" --addrs "$ADDRS" --clients "$CLIENTS" --rooms "$ROOMS" --duration "$DURATION" \
    --line-rate "$LINE_RATE" --churn "$CHURN" >"$WORK/soak.out" &
SOAK_PID=$!

at() { # fraction of DURATION (percent) -> sleep until then
    local target=$((START + DURATION * $1 / 100))
    local now
    now=$(date +%s)
    ((target > now)) && sleep $((target - now))
    return 0
}
START=$(date +%s)
at 15; restart_redis
at 30; echo "soak-cluster: $(date +%T) server 2 killed"; kill -KILL "${SERVER_PIDS[2]}"
wait "${SERVER_PIDS[2]}" 2>/dev/null || true
at 40; start_server 2; echo "soak-cluster: $(date +%T) server 2 started again"
at 60; restart_redis

status=0
wait "$SOAK_PID" || status=$?
cat "$WORK/soak.out"
for i in 0 1 2; do
    pid=${SERVER_PIDS[$i]}
    if kill -0 "$pid" 2>/dev/null; then
        echo "server $i RSS         $(rss_kib "$pid") KiB"
    else
        echo "server $i exited" >&2
        status=1
    fi
done
echo "server warnings    $(cat "$WORK"/server*.log | grep -c WARN || true) (logs in $WORK)"
exit "$status"
