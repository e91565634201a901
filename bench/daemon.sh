#!/usr/bin/env bash
# `chiral daemon` with many downloads and seeds at once: N downloads (small files from nginx) and
# N seeds (through the HTTP plugin) in one daemon; then how long GET /api/v1/downloads and
# GET /api/v1/seeds take (median and worst of ROUNDS calls with curl) and the daemon's CPU while
# idle (user + system time over IDLE_S seconds, from /proc).
#   bash bench/daemon.sh          (N=100 ROUNDS=50 IDLE_S=30 by default)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N="${N:-100}"; ROUNDS="${ROUNDS:-50}"; IDLE_S="${IDLE_S:-30}"
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
for p in nginx curl python3; do command -v $p >/dev/null || [ -x /usr/sbin/$p ] || die "$p missing (bash tests/install-deps.sh)"; done
PATH="$PATH:/usr/sbin"

www="$BENCH_WORK/daemon-www"; seeds="$BENCH_WORK/daemon-seeds"; data="$BENCH_WORK/daemon-data"; out="$BENCH_WORK/daemon-out"
rm -rf "$data" "$out"; mkdir -p "$www" "$seeds" "$data" "$out"
echo 'no_dht = true' >"$data/config.toml"
for i in $(seq 1 "$N"); do
    [ -f "$www/f$i.bin" ] || head -c $((64 * 1024 + i)) /dev/urandom >"$www/f$i.bin"
    [ -f "$seeds/s$i.bin" ] || head -c $((32 * 1024 + i)) /dev/urandom >"$seeds/s$i.bin"
done
start_nginx "$www"
"$CHIRAL" --data-dir "$data" --config "$data/config.toml" --listen 127.0.0.1 --no-dht daemon --http 127.0.0.1:0 \
    --max-active 10 >"$BENCH_WORK/daemon.out" 2>"$BENCH_WORK/daemon.err" &
DPID=$!; PIDS+=("$DPID")
trap 'stop_pids "${PIDS[@]}"' EXIT
for _ in $(seq 1 100); do [ -s "$BENCH_WORK/daemon.out" ] && break; sleep 0.1; done
line=$(head -1 "$BENCH_WORK/daemon.out"); [[ $line == http://* ]] || die "no URL from the daemon: $(tail -1 "$BENCH_WORK/daemon.err")"
base=${line%%/#token=*}; token=${line##*#token=}
api() { curl -sf -H "Authorization: Bearer $token" "$@"; }

t0=$(date +%s.%N)
for i in $(seq 1 "$N"); do
    api -o /dev/null -H 'Content-Type: application/json' \
        -d "{\"identifiers\": [\"http://127.0.0.1:$NGINX_PORT/f$i.bin\"], \"out_dir\": \"$out\"}" "$base/api/v1/downloads"
    api -o /dev/null -H 'Content-Type: application/json' -d "{\"path\": \"$seeds/s$i.bin\", \"via\": [\"http\"]}" "$base/api/v1/seeds"
done
t1=$(date +%s.%N)
for _ in $(seq 1 600); do
    done_n=$(api "$base/api/v1/downloads" | python3 -c 'import json,sys; print(sum(d["state"] == "completed" for d in json.load(sys.stdin)["downloads"]))')
    [ "$done_n" = "$N" ] && break; sleep 0.5
done
t2=$(date +%s.%N)
[ "$done_n" = "$N" ] || die "only $done_n of $N downloads completed"
running=$(api "$base/api/v1/seeds" | python3 -c 'import json,sys; print(sum(s["state"] == "running" for s in json.load(sys.stdin)["seeds"]))')
[ "$running" = "$N" ] || die "only $running of $N seeds run"
sleep 3   # the last progress events and the state file settle

latency() {  # latency PATH: median and max milliseconds of ROUNDS GETs
    for _ in $(seq 1 "$ROUNDS"); do api -o /dev/null -w '%{time_total}\n' "$base$1"; done |
        python3 -c 'import sys, statistics; v = [float(x) * 1000 for x in sys.stdin]; print(f"{statistics.median(v):.1f} {max(v):.1f}")'
}
read -r dl_med dl_max < <(latency /api/v1/downloads)
read -r sd_med sd_max < <(latency /api/v1/seeds)
ticks() { awk '{print $14 + $15}' "/proc/$DPID/stat"; }
hz=$(getconf CLK_TCK); c0=$(ticks); sleep "$IDLE_S"; c1=$(ticks)
cpu=$(python3 -c "print(f'{($c1 - $c0) / $hz / $IDLE_S * 100:.2f}')")
rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$DPID/status")

echo "| what | figure |"
echo "|---|---|"
echo "| $N downloads + $N seeds added (one request each) | $(python3 -c "print(f'{$t1 - $t0:.1f}')") s |"
echo "| all $N downloads completed after the first was added | $(python3 -c "print(f'{$t2 - $t0:.1f}')") s |"
echo "| GET /api/v1/downloads ($N downloads), median / worst of $ROUNDS | $dl_med / $dl_max ms |"
echo "| GET /api/v1/seeds ($N seeds), median / worst of $ROUNDS | $sd_med / $sd_max ms |"
echo "| daemon CPU while idle, over $IDLE_S s | $cpu % of one core |"
echo "| daemon RSS | $rss MiB |"
