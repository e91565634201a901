#!/usr/bin/env bash
# Chiral network transports against nginx, paired and alternating: one file (SIZE_MB) seeded
# once per transport by `chiral seed --via chiral` (bootstrap node A of the same transport),
# then ROUNDS rounds, each downloading it once over every transport (`chiral get chiral:<id>`,
# fresh data dir) and once from nginx (`chiral get URL`), in that order. Prints the load before
# and after, every time, and the medians with each transport's ratio to nginx (nginx time /
# transport time: 1.0 = as fast as nginx) and the downloader's CPU (user+sys), which a busy
# machine disturbs less than wall time. Transports: TRANSPORTS (default "noise tls quic"),
# chosen with the plugin option `transport` in a config file.
#   bash bench/chiral-transport.sh      (SIZE_MB=1024 ROUNDS=5; BENCH_WORK as for the others)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB="${SIZE_MB:-1024}"; ROUNDS="${ROUNDS:-5}"; TRANSPORTS="${TRANSPORTS:-noise tls quic}"
BENCH_WORK="$BENCH_WORK/transport"; mkdir -p "$BENCH_WORK"
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
PATH="$PATH:/usr/sbin"
command -v nginx >/dev/null || die "nginx missing (bash tests/install-deps.sh)"
command -v bc >/dev/null || die "bc missing"
src="$BENCH_WORK/src"; file="$src/bench.bin"; make_file "$file" "$SIZE_MB"
nodes="$BENCH_WORK/nodes"; out="$BENCH_WORK/out"; rm -rf "$nodes"; mkdir -p "$nodes"
PIDS=()
cleanup() { stop_pids "${PIDS[@]}"; rm -rf "$nodes" "$out"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "load before: $(uptime)"

# chiral_for T ARGS...: chiral with transport T's config and no public DHT
chiral_for() { local t="$1"; shift; "$CHIRAL" -q --no-dht --config "$nodes/$t.toml" "$@"; }
first_match() { for _ in $(seq 1 300); do grep -m1 -oE "$2" "$1" && return 0; sleep 0.1; done; return 1; }
declare -A CID BOOT
for t in $TRANSPORTS; do
    printf 'no_dht = true\n[plugins.chiral]\ntransport = "%s"\n' "$t" >"$nodes/$t.toml"
    chiral_for "$t" --data-dir "$nodes/$t-a" node >"$nodes/$t-a.out" 2>&1 & PIDS+=($!)
    BOOT[$t]=$(first_match "$nodes/$t-a.out" '/ip4/127[0-9.]*/tcp/[0-9]+/p2p/[1-9A-HJ-NP-Za-km-z]+') || die "$t: node printed no address"
    chiral_for "$t" --data-dir "$nodes/$t-b" seed "$file" --via chiral --bootstrap "${BOOT[$t]}" >"$nodes/$t-b.out" 2>&1 & PIDS+=($!)
    CID[$t]=$(first_match "$nodes/$t-b.out" 'chiral:[0-9a-f]{64}') || die "$t: seed printed no chiral: id"
done
start_nginx "$src"
url="http://127.0.0.1:$NGINX_PORT/bench.bin"

# secs CMD...: runs CMD, prints "wall-seconds cpu-seconds" (the client's user+sys)
secs() {
    /usr/bin/time -f '%e %U %S' -o "$BENCH_WORK/last.time" "$@" >/dev/null 2>"$BENCH_WORK/last.err" || { tail -3 "$BENCH_WORK/last.err" >&2; return 1; }
    awk '{printf "%s %.2f\n", $1, $2 + $3}' "$BENCH_WORK/last.time"
}
for r in $(seq 1 "$ROUNDS"); do
    for t in $TRANSPORTS; do
        rm -rf "$out" "$nodes/get-$t"; sync
        s=$(secs "$CHIRAL" -q --no-dht --config "$nodes/$t.toml" --data-dir "$nodes/get-$t" --bootstrap "${BOOT[$t]}" get "${CID[$t]}" -o "$out") || die "$t get failed"
        echo "$s" >>"$BENCH_WORK/t-$t.$$"; echo "round $r $t: $s (wall s, client cpu s)"
    done
    rm -rf "$out" "$nodes/get-http"; sync
    s=$(secs "$CHIRAL" -q --no-dht --data-dir "$nodes/get-http" get "$url" -o "$out") || die "nginx get failed"
    echo "$s" >>"$BENCH_WORK/t-nginx.$$"; echo "round $r nginx: $s (wall s, client cpu s)"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v c="$1" '{print $c}' "$2" | median; }
th=$(col 1 "$BENCH_WORK/t-nginx.$$")
echo "load after: $(uptime)"
echo "| path | median s ($ROUNDS runs, $SIZE_MB MiB) | ratio to nginx | client CPU s (median) |"
echo "|---|---|---|---|"
echo "| nginx -> chiral get | $th | 1.00 | $(col 2 "$BENCH_WORK/t-nginx.$$") |"
for t in $TRANSPORTS; do
    tc=$(col 1 "$BENCH_WORK/t-$t.$$")
    echo "| chiral network, $t | $tc | $(echo "scale=2; $th / $tc" | bc) | $(col 2 "$BENCH_WORK/t-$t.$$") |"
done
rm -f "$BENCH_WORK"/t-*.$$
