#!/usr/bin/env bash
# HTTP benchmark: one file from nginx on loopback with chiral, aria2c -x8 and curl, in one run,
# several rounds, the median of each. Prints a markdown table with seconds, GB/s, peak memory
# and each tool's time relative to chiral.
#   bash bench/http.sh            (SIZE_MB=1024 ROUNDS=3 by default)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB="${SIZE_MB:-1024}"; ROUNDS="${ROUNDS:-3}"
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
for p in nginx aria2c curl bc; do command -v $p >/dev/null || [ -x /usr/sbin/$p ] || die "$p missing (bash tests/install-deps.sh)"; done
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"
PATH="$PATH:/usr/sbin"

src="$BENCH_WORK/www"; make_file "$src/file.bin" "$SIZE_MB"
start_nginx "$src"; trap 'kill $NGINX_PID 2>/dev/null' EXIT
url="http://127.0.0.1:$NGINX_PORT/file.bin"
out="$BENCH_WORK/out"; RESULTS="$BENCH_WORK/results.txt"; : >"$RESULTS"
export CHIRAL_DATA_DIR="$BENCH_WORK/data"
cat "$src/file.bin" >/dev/null   # page cache warm for every tool alike

for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$out"; measure chiral "$CHIRAL" get "$url" -o "$out" -q
    rm -rf "$out"; measure aria2c aria2c -x8 -s8 -k1M --file-allocation=none --console-log-level=warn --summary-interval=0 -d "$out" -o file.bin "$url"
    rm -rf "$out"; mkdir -p "$out"; measure curl curl -sSf -o "$out/file.bin" "$url"
done
rm -rf "$out"

python3 - "$RESULTS" "$SIZE_MB" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    n, s, rss = line.split(); rows.setdefault(n, []).append((float(s), int(rss)))
size = int(sys.argv[2]) * 1048576
base = statistics.median(s for s, _ in rows["chiral"])
print(f"| tool | median s ({len(rows['chiral'])} runs) | GB/s | peak RSS MiB | time vs chiral |")
print("|---|---|---|---|---|")
for n, v in rows.items():
    m = statistics.median(s for s, _ in v)
    print(f"| {n} | {m:.2f} | {size / m / 1e9:.2f} | {max(r for _, r in v) / 1024:.0f} | {m / base:.2f}x |")
PY
