#!/usr/bin/env bash
# Apollonion next to Redis pub/sub on this machine, with the same load tool
# (examples/loadgen) in one run: fan-out throughput at N = 10, 100, 1000
# receivers (64-byte lines), 1 KiB lines at N = 100, p99 latency at N = 1000
# with the sender at half the measured maximum, and server RSS per idle
# connection. Many speakers: one sender against a thousand, interleaved.
# A cluster row: two Apollonion servers joined through the same
# Redis (--redis), N = 1000 receivers split between them, the sender on the
# first; Redis commands per delivered line from INFO commandstats; p99 at
# 1,000 lines/s. Prints Markdown tables; exits non-zero if any run lost,
# duplicated or reordered a line, or failed to finish.
#
# Knobs (environment):
#   QUICK=1           short runs, one repetition (a smoke test, not a result)
#   REPS=3            repetitions per throughput point; the median run by
#                     lines/s is reported (its latency figures with it)
#   DELIVERIES=10000000        deliveries per 64-byte run (lines = this / N)
#   BIG_DELIVERIES=2000000     deliveries per 1 KiB run
#   LATENCY_SECS=5    length of each half-rate latency run (and of the
#                     cluster's 1,000 lines/s run)
#   IDLE_CONNS=10000  connections in the idle-memory runs (0 = skip them)
#   APOLLONION_PORT / REDIS_PORT   first port to try (default 18080 / 16379)
#   RESULTS_DIR=target/compare     raw JSON lines and server logs
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

# 10,000 idle connections need that many descriptors in each process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}
    DELIVERIES=${DELIVERIES:-2000000}
    BIG_DELIVERIES=${BIG_DELIVERIES:-500000}
    LATENCY_SECS=${LATENCY_SECS:-2}
else
    REPS=${REPS:-3}
    DELIVERIES=${DELIVERIES:-10000000}
    BIG_DELIVERIES=${BIG_DELIVERIES:-2000000}
    LATENCY_SECS=${LATENCY_SECS:-5}
fi
IDLE_CONNS=${IDLE_CONNS:-10000}
RESULTS_DIR=${RESULTS_DIR:-target/compare}
mkdir -p "$RESULTS_DIR"
RESULTS=$(cd "$RESULTS_DIR" && pwd)
: >"$RESULTS/runs.jsonl"

log() { echo "compare: $*" >&2; }

# --- prerequisites ---------------------------------------------------------

if ! command -v redis-server >/dev/null 2>&1; then
    log "redis-server is missing: installing the Debian package"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')

log "building (release)"
cargo build --release --quiet --bin apollonion --example loadgen --example write_floor
APOLLONION="$ROOT/target/release/apollonion"
LOADGEN="$ROOT/target/release/examples/loadgen"
WRITE_FLOOR="$ROOT/target/release/examples/write_floor"

# --- servers ---------------------------------------------------------------

APO_PID=""
REDIS_PID=""

stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

CLU_A_PID=""
CLU_B_PID=""

cleanup() {
    stop_pid "$APO_PID"
    stop_pid "$CLU_A_PID"
    stop_pid "$CLU_B_PID"
    stop_pid "$REDIS_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port=$1
    while port_in_use "$port"; do port=$((port + 1)); done
    echo "$port"
}

# wait_ready PORT PID NAME: until the port accepts, or fail if PID died.
wait_ready() {
    for _ in $(seq 100); do
        if ! kill -0 "$2" 2>/dev/null; then
            log "$3 exited at start; its log is in $RESULTS/$3.log"
            tail -5 "$RESULTS/$3.log" >&2 || true
            exit 1
        fi
        if port_in_use "$1"; then return 0; fi
        sleep 0.1
    done
    log "$3 did not accept connections on port $1 within 10 s"
    exit 1
}

start_apollonion() {
    APO_PORT=$(free_port "${APOLLONION_PORT:-18080}")
    "$APOLLONION" --listen "127.0.0.1:$APO_PORT" --rate 0 --max-per-ip 0 \
        --max-clients 20000 --log-level warn >>"$RESULTS/apollonion.log" 2>&1 &
    APO_PID=$!
    wait_ready "$APO_PORT" "$APO_PID" apollonion
}

start_redis() {
    REDIS_PORT=$(free_port "${REDIS_PORT:-16379}")
    redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
        --protected-mode yes --bind 127.0.0.1 --maxclients 20000 \
        >>"$RESULTS/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_ready "$REDIS_PORT" "$REDIS_PID" redis
}

stop_apollonion() { stop_pid "$APO_PID"; APO_PID=""; }
stop_redis() { stop_pid "$REDIS_PID"; REDIS_PID=""; }

# --- load runs -------------------------------------------------------------

FAILED=0

# field JSON NAME: a number or string field of a loadgen JSON line.
field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"; }

# loadgen SYSTEM ARGS...: one run; its JSON line goes to $LAST (and to
# runs.jsonl). A failed run is reported and remembered, and the script goes
# on. (Not called in $(...): a subshell would forget FAILED.)
LAST=""
loadgen() {
    local system=$1 target addr pid
    shift
    # The server's CPU over the measurement is reported beside the tool's
    # (for a cluster, the first server's).
    case $system in
    apollonion) target=apollonion addr="127.0.0.1:$APO_PORT" pid=$APO_PID ;;
    redis) target=redis addr="127.0.0.1:$REDIS_PORT" pid=$REDIS_PID ;;
    cluster) target=apollonion addr="127.0.0.1:$CLU_A_PORT,127.0.0.1:$CLU_B_PORT" pid=$CLU_A_PID ;;
    esac
    if ! LAST=$("$LOADGEN" --target "$target" --addr "$addr" --json ${pid:+--pid "$pid"} "$@" \
        2>"$RESULTS/last.err"); then
        FAILED=1
        log "FAILED: $system $*"
        sed 's/^/    /' "$RESULTS/last.err" >&2
    fi
    cat "$RESULTS/last.err" >>"$RESULTS/loadgen.err"
    echo "$LAST" >>"$RESULTS/runs.jsonl"
}

# Median run of SYSTEM at N receivers and PAYLOAD bytes, from the files
# written below.
median() {
    local file="$RESULTS/points/$1-$2-$3"
    local count
    count=$(wc -l <"$file")
    sort -n "$file" | sed -n "$(((count + 1) / 2))p" | cut -f2-
}

throughput_point() {
    local n=$1 payload=$2 deliveries=$3
    local lines=$((deliveries / n))
    local warm=$((lines / 5 < 1000 ? lines / 5 : 1000))
    [ "$lines" -ge 1 ] || lines=1
    for system in apollonion redis; do
        log "$system: N=$n, $payload-byte payload, $lines lines"
        local lps
        loadgen "$system" --receivers "$n" --payload "$payload" \
            --lines "$lines" --warmup-lines "$warm"
        lps=$(field "$LAST" lines_per_sec)
        printf '%s\t%s\n' "${lps:-0}" "$LAST" >>"$RESULTS/points/$system-$n-$payload"
    done
}

rm -rf "$RESULTS/points"
mkdir -p "$RESULTS/points"
start_apollonion
start_redis
log "apollonion on port $APO_PORT (pid $APO_PID), redis $REDIS_VERSION on port $REDIS_PORT (pid $REDIS_PID)"

# Interleaved, so that both systems see the same background noise.
for rep in $(seq "$REPS"); do
    log "repetition $rep of $REPS"
    for n in 10 100 1000; do
        throughput_point "$n" 64 "$DELIVERIES"
    done
    throughput_point 100 1024 "$BIG_DELIVERIES"
done

# Latency at half the measured maximum: each system at half of its own
# median N = 1000 rate.
latency_run() {
    local system=$1 max rate
    max=$(field "$(median "$system" 1000 64)" lines_per_sec)
    rate=$(awk -v m="${max:-0}" 'BEGIN { printf "%d", m / 1000 / 2 }')
    if [ "$rate" -lt 1 ]; then
        log "no N = 1000 maximum for $system: latency run skipped"
        LAST='{"result":"SKIPPED"}'
        return
    fi
    log "$system: N=1000 at $rate lines/s per sender (half its maximum) for $LATENCY_SECS s"
    loadgen "$system" --receivers 1000 --payload 64 --rate "$rate" \
        --duration "$LATENCY_SECS" --warmup-lines 1000
}
latency_run apollonion
LAT_APO=$LAST
latency_run redis
LAT_REDIS=$LAST

# --- many speakers: one sender against a thousand, same 1,000 receivers ------
# Each of the thousand senders keeps at most 8 lines in flight: 8,000 lines
# (520 KB) in flight for every reader, half of --max-outbuf, so no reader
# falls behind and every line must arrive.
MANY_SECS=$([ "$QUICK" = 1 ] && echo 2 || echo 3)
for rep in $(seq "$REPS"); do
    log "many speakers: 1 sender, then 1000 senders, N=1000 (repetition $rep of $REPS)"
    loadgen apollonion --receivers 1000 --senders 1 --payload 64 --duration "$MANY_SECS"
    one=$LAST
    loadgen apollonion --receivers 1000 --senders 1000 --window 8 --warmup-lines 10 \
        --payload 64 --duration "$MANY_SECS"
    printf '%s\t%s\n' "$one" "$LAST" >>"$RESULTS/points/many"
done

# --- cluster: two servers joined through the Redis above --------------------

start_cluster_node() {
    local port=$1 name=$2
    "$APOLLONION" --listen "127.0.0.1:$port" --rate 0 --max-per-ip 0 \
        --max-clients 20000 --log-level warn --redis "redis://127.0.0.1:$REDIS_PORT" \
        --cluster-name compare >>"$RESULTS/$name.log" 2>&1 &
}

# Every command Redis has run so far (the INFO asking counts too).
redis_commands() {
    redis-cli -p "$REDIS_PORT" INFO commandstats |
        awk -F'[:=,]' '/^cmdstat_/ { sum += $3 } END { print sum + 0 }'
}

CLU_A_PORT=$(free_port "${CLUSTER_PORT:-18180}")
start_cluster_node "$CLU_A_PORT" cluster-a
CLU_A_PID=$!
wait_ready "$CLU_A_PORT" "$CLU_A_PID" cluster-a
CLU_B_PORT=$(free_port $((CLU_A_PORT + 1)))
start_cluster_node "$CLU_B_PORT" cluster-b
CLU_B_PID=$!
wait_ready "$CLU_B_PORT" "$CLU_B_PID" cluster-b
# Both registered with Redis, so both hear each other from the first line.
for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" SCARD compare:nodes)" = 2 ] && break
    sleep 0.1
done
log "cluster on ports $CLU_A_PORT and $CLU_B_PORT through redis on $REDIS_PORT"
CLU_LINES=$((DELIVERIES / 1000))
for rep in $(seq "$REPS"); do
    log "cluster: N=1000 split over 2 servers, $CLU_LINES lines (repetition $rep of $REPS)"
    before=$(redis_commands)
    loadgen cluster --receivers 1000 --payload 64 --lines "$CLU_LINES" \
        --warmup-lines "$((CLU_LINES / 5 < 1000 ? CLU_LINES / 5 : 1000))"
    after=$(redis_commands)
    lps=$(field "$LAST" lines_per_sec)
    printf '%s\t%s\t%s\n' "${lps:-0}" "$((after - before))" "$LAST" >>"$RESULTS/points/cluster"
done
CLU_MEDIAN=$(sort -n "$RESULTS/points/cluster" | sed -n "$(((REPS + 1) / 2))p")
CLU_COMMANDS=$(cut -f2 <<<"$CLU_MEDIAN")
CLU_RUN=$(cut -f3- <<<"$CLU_MEDIAN")
log "cluster: N=1000 at 1000 lines/s for $LATENCY_SECS s"
loadgen cluster --receivers 1000 --payload 64 --rate 1000 --duration "$LATENCY_SECS" \
    --warmup-lines 1000
LAT_CLU=$LAST
stop_pid "$CLU_A_PID"
stop_pid "$CLU_B_PID"
CLU_A_PID="" CLU_B_PID=""

stop_apollonion
stop_redis

# --- the kernel's floor --------------------------------------------------------
# One small write to each of 1,000 loopback sockets and its read, with no
# chat at all: what the latency rows above cannot go below on this machine.
log "floor: 100-byte writes to 1,000 loopback sockets for 1 s"
FLOOR=$("$WRITE_FLOOR" --sockets 1000 --bytes 100 --secs 1 2>&1 || true)

# --- idle memory -------------------------------------------------------------
# Each measurement on a freshly started server: memory freed by earlier
# connections would otherwise be reused and hide the real cost.

idle_run() {
    local system=$1 pid
    shift
    if [ "$system" = apollonion ]; then start_apollonion; pid=$APO_PID; else start_redis; pid=$REDIS_PID; fi
    loadgen "$system" --idle "$IDLE_CONNS" --pid "$pid" "$@"
    if [ "$system" = apollonion ]; then stop_apollonion; else stop_redis; fi
}

IDLE_APO="" IDLE_PLAIN="" IDLE_SUB=""
if [ "$IDLE_CONNS" -gt 0 ]; then
    limit=$(ulimit -n)
    if [ "$limit" != unlimited ] && [ "$IDLE_CONNS" -gt $((limit - 64)) ]; then
        IDLE_CONNS=$((limit - 64))
        log "open-file limit is $limit: idle runs use $IDLE_CONNS connections"
    fi
    log "idle memory: $IDLE_CONNS connections each"
    idle_run apollonion
    IDLE_APO=$LAST
    idle_run redis --redis-idle plain
    IDLE_PLAIN=$LAST
    idle_run redis --redis-idle subscribed
    IDLE_SUB=$LAST
fi

# --- report ------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
shown() { local v; v=$(field "$1" "$2"); echo "${v:--}"; }
# "tool % / server %": the cores each used over a run's measurement.
cpu() {
    awk -v t="$(field "$1" tool_cpu)" -v s="$(field "$1" server_cpu)" \
        'BEGIN { if (t == "") { printf "-"; exit } printf "%d %% / ", t * 100 + 0.5; if (s == "") printf "-"; else printf "%d %%", s * 100 + 0.5 }'
}

echo
echo "## Apollonion vs Redis $REDIS_VERSION pub/sub"
echo
echo "$(nproc) cores, loopback, load generator on the same machine, 1 sender,"
echo "window 1000 lines; median of $REPS run(s) by lines/s. CPU: the share of a"
echo "core the load tool (one thread: near 100 % it was the bottleneck) and the"
echo "server each used over the measurement."
echo
echo "| system | N | payload | lines/s | MB/s | Apollonion/Redis | target | p50 µs | p99 µs | CPU: tool / server | accounting |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for point in "10 64 2" "100 64 2" "1000 64 2" "100 1024 1.5"; do
    set -- $point
    n=$1 payload=$2 want=$3
    apo=$(median apollonion "$n" "$payload")
    red=$(median redis "$n" "$payload")
    a=$(field "$apo" lines_per_sec)
    r=$(field "$red" lines_per_sec)
    x=$(ratio "${a:-0}" "${r:-0}")
    if [ "$x" != - ] && ge "$x" "$want"; then verdict="≥ ${want}× met"; else verdict="≥ ${want}× NOT met"; fi
    for system in apollonion redis; do
        if [ "$system" = apollonion ]; then j=$apo; shown_ratio="**$x×**"; t=$verdict; else j=$red; shown_ratio=""; t=""; fi
        acct="$(shown "$j" deliveries)/$(shown "$j" deliveries_expected) $(shown "$j" result)"
        echo "| $system | $n | $payload | $(shown "$j" lines_per_sec) | $(shown "$j" mb_per_sec) | $shown_ratio | $t | $(shown "$j" p50_us) | $(shown "$j" p99_us) | $(cpu "$j") | $acct |"
    done
done

echo
echo "### Latency at N = 1000, sender at half its measured maximum"
echo
echo "| system | sender lines/s | delivered lines/s | p50 µs | p99 µs | max µs | at arrival: p50 µs | p99 µs | target | accounting |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for system in apollonion redis; do
    if [ "$system" = apollonion ]; then j=$LAT_APO; else j=$LAT_REDIS; fi
    p99=$(field "$j" p99_us)
    t=""
    if [ "$system" = apollonion ]; then
        if [ -n "$p99" ] && lt "$p99" 10000; then t="p99 < 10 ms met"; else t="p99 < 10 ms NOT met"; fi
    fi
    sent=$(awk -v l="$(shown "$j" lines_sent)" -v e="$(shown "$j" elapsed_s)" 'BEGIN { if (e > 0) printf "%d", l / e; else printf "-" }')
    echo "| $system | $sent | $(shown "$j" lines_per_sec) | $(shown "$j" p50_us) | $p99 | $(shown "$j" max_us) | $(shown "$j" arrival_p50_us) | $(shown "$j" arrival_p99_us) | $t | $(shown "$j" deliveries)/$(shown "$j" deliveries_expected) $(shown "$j" result) |"
done
echo
echo "Latency is timed to the load tool's read; \"at arrival\" to the kernel's"
echo "stamp on the receiver's socket (\`SO_TIMESTAMPNS\`), before the tool, one"
echo "thread reading 1,000 sockets in turn, got to it. The target is judged on"
echo "the first."

echo
echo "### Many speakers: 1,000 senders against 1, N = 1000 receivers, 64 B lines"
echo
echo "Interleaved; the 1,000 senders are room members too, so each of their lines"
echo "is written to 1,999 people: \"to receivers\" counts the 1,000 receivers'"
echo "copies, \"every copy\" the senders' as well."
echo
echo "| rep | 1 sender: lines/s | 1000 senders: to receivers | every copy | ratio, receivers only | ratio, every copy | target | CPU, 1 sender: tool / daemon | 1000 senders | accounting |"
echo "|---|---|---|---|---|---|---|---|---|---|"
rep=0
while IFS=$'\t' read -r one many; do
    rep=$((rep + 1))
    o=$(field "$one" lines_per_sec)
    m=$(field "$many" lines_per_sec)
    e=$(field "$many" all_lines_per_sec)
    x=$(ratio "${m:-0}" "${o:-0}")
    if [ "$x" != - ] && ge "$x" 0.6; then t="≥ 0.6× met"; else t="≥ 0.6× NOT met"; fi
    echo "| $rep | ${o:--} | ${m:--} | ${e:--} | **$x×** | $(ratio "${e:-0}" "${o:-0}")× | $t | $(cpu "$one") | $(cpu "$many") | $(shown "$many" result) |"
done <"$RESULTS/points/many"

echo
echo "### Cluster: 2 servers + Redis, N = 1000 receivers split, 1 sender on the first"
echo
echo "| run | lines/s | vs Redis | vs one server | target | Redis commands | per delivered line | p50 µs | p99 µs | at arrival: p50 µs | p99 µs | accounting |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
c=$(field "$CLU_RUN" lines_per_sec)
r=$(field "$(median redis 1000 64)" lines_per_sec)
a=$(field "$(median apollonion 1000 64)" lines_per_sec)
vr=$(ratio "${c:-0}" "${r:-0}")
va=$(ratio "${c:-0}" "${a:-0}")
if [ "$vr" != - ] && [ "$va" != - ] && ge "$vr" 2 && ge "$va" 0.5; then t="≥ 2× Redis, ≥ 0.5× one server met"; else t="≥ 2× Redis, ≥ 0.5× one server NOT met"; fi
per=$(awk -v n="${CLU_COMMANDS:-0}" -v d="$(shown "$CLU_RUN" deliveries)" 'BEGIN { if (d > 0) printf "%.5f", n / d; else printf "-" }')
echo "| max rate | $(shown "$CLU_RUN" lines_per_sec) | **$vr×** | **$va×** | $t | ${CLU_COMMANDS:--} | $per | $(shown "$CLU_RUN" p50_us) | $(shown "$CLU_RUN" p99_us) | | | $(shown "$CLU_RUN" deliveries)/$(shown "$CLU_RUN" deliveries_expected) $(shown "$CLU_RUN" result) |"
echo "| 1,000 lines/s, all receivers | $(shown "$LAT_CLU" lines_per_sec) | | | | | | $(shown "$LAT_CLU" p50_us) | $(shown "$LAT_CLU" p99_us) | $(shown "$LAT_CLU" arrival_p50_us) | $(shown "$LAT_CLU" arrival_p99_us) | $(shown "$LAT_CLU" deliveries)/$(shown "$LAT_CLU" deliveries_expected) $(shown "$LAT_CLU" result) |"
p99=$(field "$LAT_CLU" across_p99_us)
if [ -n "$p99" ] && lt "$p99" 10000; then t="p99 < 10 ms met"; else t="p99 < 10 ms NOT met"; fi
echo "| 1,000 lines/s, across servers | | | | $t | | | $(shown "$LAT_CLU" across_p50_us) | ${p99:--} | $(shown "$LAT_CLU" across_arrival_p50_us) | $(shown "$LAT_CLU" across_arrival_p99_us) | $(shown "$LAT_CLU" across_samples) samples |"
echo
echo "Redis commands counted over the whole run, the 1,000 connections' joins"
echo "and leaves included; lines/s counts deliveries. \"Across servers\" is the"
echo "latency of the receivers on the second server only (the sender is on the"
echo "first): each of their lines went through Redis. \"At arrival\" as in the"
echo "latency table; the target is judged on the tool's read."
echo
echo "### This machine's floor (\`examples/write_floor\`)"
echo
echo "$FLOOR"
echo
echo "No chat at all: a writer thread writes each of 1,000 loopback sockets in"
echo "turn, a reader thread reads them. At 1,000 lines/s to 1,000 receivers a"
echo "server writes each receiver once per pass and the load tool reads it once,"
echo "so a pass costs at least 1,000 times the two figures above in CPU, shared"
echo "by two cores; a line waits for up to a pass."

if [ "$IDLE_CONNS" -gt 0 ]; then
    echo
    echo "### Server RSS per idle connection ($IDLE_CONNS connections, fresh server each)"
    echo
    echo "| system | connections | RSS before KiB | RSS after KiB | bytes per connection | target |"
    echo "|---|---|---|---|---|---|"
    for row in "apollonion (in #lobby)|$IDLE_APO" "redis (plain)|$IDLE_PLAIN" "redis (subscribed)|$IDLE_SUB"; do
        name=${row%%|*}
        j=${row#*|}
        per=$(field "$j" bytes_per_conn)
        t=""
        case $name in
        apollonion*)
            if [ -n "$per" ] && [ "$per" != null ] && ge 1024 "$per"; then t="≤ 1 KiB met"; else t="≤ 1 KiB NOT met"; fi
            ;;
        esac
        echo "| $name | $(shown "$j" connections) | $(shown "$j" rss_before_kib) | $(shown "$j" rss_after_kib) | ${per:-FAIL} | $t |"
    done
fi

echo
echo "Raw results: $RESULTS/runs.jsonl"
if [ "$FAILED" -ne 0 ]; then
    log "at least one run FAILED its delivery accounting or did not finish; see above and $RESULTS/loadgen.err"
    exit 1
fi
