#!/usr/bin/env bash
# FTP benchmark: one file from vsftpd on loopback with chiral (4 and 8 connections), aria2c -x8
# and curl, in one run, several rounds, the median of each (markdown table on stdout).
#   bash bench/ftp.sh            (SIZE_MB=1024 ROUNDS=3 by default)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB="${SIZE_MB:-1024}"; ROUNDS="${ROUNDS:-3}"
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
for p in vsftpd aria2c curl bc; do command -v $p >/dev/null || [ -x /usr/sbin/$p ] || die "$p missing (bash tests/install-deps.sh)"; done
PATH="$PATH:/usr/sbin"

src="$BENCH_WORK/ftproot"; make_file "$src/file.bin" "$SIZE_MB"; chmod 755 "$src"
start_vsftpd "$src"; trap 'kill $VSFTPD_PID 2>/dev/null' EXIT
url="ftp://127.0.0.1:$FTP_PORT/file.bin"
out="$BENCH_WORK/ftp-out"; RESULTS="$BENCH_WORK/ftp-results.txt"; : >"$RESULTS"
export CHIRAL_DATA_DIR="$BENCH_WORK/data"
cat "$src/file.bin" >/dev/null

for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$out"; measure chiral-4 "$CHIRAL" get "$url" -o "$out" -q --connections 4
    rm -rf "$out"; measure chiral-8 "$CHIRAL" get "$url" -o "$out" -q --connections 8
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
base = statistics.median(s for s, _ in rows["chiral-4"])
print(f"| tool | median s ({len(rows['curl'])} runs) | GB/s | peak RSS MiB | time vs chiral-4 |")
print("|---|---|---|---|---|")
for n, v in rows.items():
    m = statistics.median(s for s, _ in v)
    print(f"| {n} | {m:.2f} | {size / m / 1e9:.2f} | {max(r for _, r in v) / 1024:.0f} | {m / base:.2f}x |")
PY
