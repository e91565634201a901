#!/usr/bin/env bash
# Chiral network benchmark: the same file (SIZE_MB) moved on loopback, in one run, three ways:
#   1. the Chiral network: a bootstrap node A (`chiral node`), one seeder B1 (`chiral seed
#      --via chiral`), then two seeders (B1 + B2), each downloaded by a fresh `chiral get chiral:<id>`
#      (own data dir and identity, bootstrapped on A only). Its time includes starting the node,
#      joining through A and the DHT lookup (provider + metadata records) and the manifest: what
#      a user pays. The "lookup" figure printed under the table is start -> providers known.
#   2. HTTP: the same file from nginx, by `chiral get URL` and `curl`;
#   3. BitTorrent: the same file seeded by `chiral seed --via bittorrent --no-dht` (torrent made
#      by `chiral create` beside it, so the seed reuses it; loopback tracker bench/tracker.py),
#      downloaded by `chiral get MAGNET`, `chiral get FILE.torrent` and aria2c.
# Every chiral process has its own --data-dir and a config with `no_dht = true` (plus --no-dht
# and --listen 127.0.0.1): nothing leaves loopback or touches the public BitTorrent DHT. Output
# dirs (with .part/.chiral-resume) and downloader data dirs are deleted and `sync`ed before
# each run. RUNS rounds, the median of each; prints the load average before and after and a
# markdown table: seconds, MB/s, the client's peak RSS (/usr/bin/time), time relative to the
# one-seeder chiral-network row, client CPU (user+sys) and server-side CPU during the transfer.
#   bash bench/chiral-network.sh          (SIZE_MB=1024 RUNS=3 by default; TIMEOUT=600 s per
#                                          download; BENCH_WORK as for the other scripts)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB="${SIZE_MB:-1024}"; RUNS="${RUNS:-3}"; TIMEOUT="${TIMEOUT:-600}"
BENCH_WORK="$BENCH_WORK/net"; mkdir -p "$BENCH_WORK"   # own corner: other scripts may run too
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
PATH="$PATH:/usr/sbin"
for p in nginx aria2c curl bc python3 timeout; do command -v $p >/dev/null || die "$p missing (bash tests/install-deps.sh)"; done
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"
export NO_COLOR=1

src="$BENCH_WORK/src"; file="$src/bench.bin"; make_file "$file" "$SIZE_MB"
size=$(( SIZE_MB * 1048576 ))
nodes="$BENCH_WORK/nodes"; out="$BENCH_WORK/out"
RESULTS="$BENCH_WORK/results.txt"; EXTRA="$BENCH_WORK/extra.txt"; : >"$RESULTS"; : >"$EXTRA"
cleanup() {
    stop_pids "${PIDS[@]}"
    rm -rf "$nodes" "$out" "$src/bench.torrent"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "load before: $(uptime)"

# CPU seconds (user+sys) used so far by the given pids
cpu_of() { python3 - "$@" <<'PY'
import os, sys
t = 0
for p in sys.argv[1:]:
    try: f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    except OSError: continue
    t += int(f[11]) + int(f[12])
print(t / os.sysconf("SC_CLK_TCK"))
PY
}
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

# run NAME "SERVER PIDS" CMD...: fresh output dir, then `measure` (wall time, peak RSS) with the
# client's CPU time from a nested /usr/bin/time and the servers' CPU from /proc around it.
run() {
    local name="$1" servers="$2" c0 c1 t0; shift 2
    rm -rf "$out"; mkdir -p "$out"; sync
    c0=$(cpu_of $servers); t0=$(date +%s.%N)
    measure "$name" /usr/bin/time -f "%U %S" -o "$BENCH_WORK/cpu.out" timeout "$TIMEOUT" "$@"
    c1=$(cpu_of $servers)
    local got; got=$(stat -c %s "$out/bench.bin" 2>/dev/null || echo 0)
    [ "$got" = "$size" ] || die "$name: $out/bench.bin has $got bytes, expected $size"
    local cpu; cpu=$(tail -1 "$BENCH_WORK/cpu.out" | awk '{print $1 + $2}')
    echo "$name cpu $cpu $(echo "$c1 - $c0" | bc)" >>"$EXTRA"
    # the chiral-network downloads run with -v: when the providers were known, who sent what
    if [ "${name#chiral-network}" != "$name" ]; then
        python3 - "$BENCH_WORK/$name.err" "$t0" "$name" >>"$EXTRA" <<'PY'
import re, sys, datetime
log, t0, name = open(sys.argv[1]).read(), float(sys.argv[2]), sys.argv[3]
m = re.search(r"^(\S+Z)\s.*provider\(s\)", log, re.M)
if m:
    t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    print(f"{name} lookup {t - t0:.3f}")
for peer, b in re.findall(r"chiral provider (\S+): (\d+) bytes", log):
    print(f"{name} provider {peer[-8:]} {b}")
PY
    fi
}

cat "$file" >/dev/null   # page cache warm for every server alike

# --- servers: Chiral network (A, B1), nginx, tracker + BitTorrent seed ----------------------
echo "starting servers (hashing $SIZE_MB MiB for each seed)..." >&2
start_chiral A node; A_PID=$LAST_PID
addr_a=$(first_line A '^/ip4/127\.0\.0\.1/tcp/[0-9]+/p2p/')
start_chiral B1 seed "$file" --via chiral --bootstrap "$addr_a"; B1_PID=$LAST_PID
cid=$(first_line B1 '^chiral:[0-9a-f]{64}$')

start_nginx "$src"
NGINX_WORKERS=$(ps -o pid= --ppid "$NGINX_PID" | tr -d ' ' | tr '\n' ' ')
url="http://127.0.0.1:$NGINX_PORT/bench.bin"

TPORT=$(free_port)
python3 "$ROOT/bench/tracker.py" "$TPORT" 2>"$BENCH_WORK/tracker.err" & PIDS+=($!)
wait_port "$TPORT" || die "tracker did not start"
tracker="http://127.0.0.1:$TPORT/announce"
tor="$src/bench.torrent"   # beside the file: the BitTorrent seed reuses it (same info hash)
new_dir mk; cx mk; "${CX[@]}" create "$file" -o "$tor" --tracker "$tracker" --piece-size 1048576 >/dev/null 2>"$nodes/mk.err" \
    || { cat "$nodes/mk.err" >&2; die "chiral create failed"; }
start_chiral BT seed "$file" --via bittorrent --tracker "$tracker"; BT_PID=$LAST_PID
magnet=$(first_line BT '^magnet:')

echo "chiral: $cid  magnet: ${magnet:0:60}..." >&2

# --- rounds --------------------------------------------------------------------------------
for r in $(seq 1 "$RUNS"); do
    echo "round $r/$RUNS" >&2
    new_dir C; cx C; run chiral-network "$A_PID $B1_PID" "${CX[@]}" get "$cid" --bootstrap "$addr_a" -o "$out" -q -v
    new_dir H; cx H; run http-chiral "$NGINX_WORKERS" "${CX[@]}" get "$url" -o "$out" -q
    run http-curl "$NGINX_WORKERS" curl -sSf -o "$out/bench.bin" "$url"
    new_dir M; cx M; run bt-chiral-magnet "$BT_PID" "${CX[@]}" get "$magnet" -o "$out" -q
    new_dir T; cx T; run bt-chiral-torrent "$BT_PID" "${CX[@]}" get "$tor" -o "$out" -q
    run bt-aria2c "$BT_PID" aria2c --seed-time=0 --enable-dht=false --bt-enable-lpd=false --enable-peer-exchange=false \
        --listen-port="$(free_port)" --file-allocation=none --summary-interval=0 --console-log-level=warn -d "$out" "$tor"
done

# --- the second seeder: started only now, so the one-seeder rows never see it ----------------
start_chiral B2 seed "$file" --via chiral --bootstrap "$addr_a"; B2_PID=$LAST_PID
[ "$(first_line B2 '^chiral:[0-9a-f]{64}$')" = "$cid" ] || die "B2 printed another content id"
for r in $(seq 1 "$RUNS"); do
    echo "two seeders: round $r/$RUNS" >&2
    new_dir C; cx C; run chiral-network-2seeders "$A_PID $B1_PID $B2_PID" "${CX[@]}" get "$cid" --bootstrap "$addr_a" -o "$out" -q -v
done

echo "server peak RSS MiB: node A $(peak_mib $A_PID), seeder B1 $(peak_mib $B1_PID), seeder B2 $(peak_mib $B2_PID), bittorrent seed $(peak_mib $BT_PID), nginx worker $(for w in $NGINX_WORKERS; do peak_mib $w; done)"
echo "load after:  $(uptime)"

python3 - "$RESULTS" "$EXTRA" "$SIZE_MB" <<'PY'
import sys, statistics
names = {
    "chiral-network": "chiral-network (1 seeder)",
    "chiral-network-2seeders": "chiral-network (2 seeders)",
    "http-chiral": "HTTP nginx -> chiral get",
    "http-curl": "HTTP nginx -> curl",
    "bt-chiral-magnet": "BitTorrent chiral seed -> chiral get magnet",
    "bt-chiral-torrent": "BitTorrent chiral seed -> chiral get .torrent",
    "bt-aria2c": "BitTorrent chiral seed -> aria2c",
}
rows, cpu, look, prov = {}, {}, {}, {}
for line in open(sys.argv[1]):
    n, s, rss = line.split(); rows.setdefault(n, []).append((float(s), int(rss)))
for line in open(sys.argv[2]):
    f = line.split()
    if f[1] == "cpu": cpu.setdefault(f[0], []).append((float(f[2]), float(f[3])))
    elif f[1] == "lookup": look.setdefault(f[0], []).append(float(f[2]))
    elif f[1] == "provider": prov.setdefault(f[0], []).append(f"{f[2]}:{int(f[3]) / 1048576:.0f}MiB")
size = int(sys.argv[3]) * 1048576
med = lambda v: statistics.median(v)
base = med(s for s, _ in rows["chiral-network"])
runs = len(rows["chiral-network"])
print(f"| method | median s ({runs} runs) | MB/s | peak RSS MiB | time vs chiral-network | client CPU s | server CPU s |")
print("|---|---|---|---|---|---|---|")
for n in sorted(rows, key=lambda n: list(names).index(n) if n in names else len(names)):
    v = rows[n]
    m = med(s for s, _ in v)
    c = cpu.get(n, [(0, 0)])
    print(f"| {names.get(n, n)} | {m:.2f} | {size / m / 1e6:.0f} | {max(r for _, r in v) / 1024:.0f} | {m / base:.2f}x"
          f" | {med(a for a, _ in c):.2f} | {med(b for _, b in c):.2f} |")
for n in look:
    print(f"{names[n]}: start -> providers known {', '.join(f'{x:.2f}' for x in look[n])} s;"
          f" bytes per provider (each run): {' '.join(prov.get(n, []))}")
PY
