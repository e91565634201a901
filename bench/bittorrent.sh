#!/usr/bin/env bash
# BitTorrent benchmark: one torrent (SIZE_MB, 1 MiB pieces) downloaded on loopback from the same
# qBittorrent seeder, restarted for each client, in one run: chiral (each installed BitTorrent
# backend), rqbit, aria2c and transmission-cli. Prints a markdown table with seconds, MB/s,
# peak memory and each one's time relative to chiral.
#   bash bench/bittorrent.sh          (SIZE_MB=1024; RQBIT=/path/to/rqbit, else `rqbit` on PATH
#                                      or /tmp/rqbit/bin/rqbit: `cargo install rqbit --root /tmp/rqbit`)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB="${SIZE_MB:-1024}"
RQBIT="${RQBIT:-$(command -v rqbit || echo /tmp/rqbit/bin/rqbit)}"
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
for p in qbittorrent-nox mktorrent aria2c transmission-cli curl bc; do command -v $p >/dev/null || die "$p missing"; done
src="$BENCH_WORK/bt"; make_file "$src/bt.bin" "$SIZE_MB"
TPORT=$(free_port)
python3 "$ROOT/bench/tracker.py" "$TPORT" & TRACKER_PID=$!
QB_PID=""; LEECH_PID=""
trap 'kill $TRACKER_PID $QB_PID $LEECH_PID 2>/dev/null; true' EXIT
wait_port "$TPORT" || die "tracker did not start"
tor="$src/bt-$SIZE_MB.torrent"
[ -f "$tor" ] || mktorrent -t 2 -a "http://127.0.0.1:$TPORT/announce" -l 20 -o "$tor" "$src/bt.bin" >/dev/null
# The announce URL in the torrent names the tracker port: keep the port of the first run.
TPORT_T=$(python3 -c 'import re,sys;print(re.search(rb"127.0.0.1:(\d+)/announce",open(sys.argv[1],"rb").read()).group(1).decode())' "$tor")
if [ "$TPORT_T" != "$TPORT" ]; then
    kill $TRACKER_PID; TPORT=$TPORT_T; python3 "$ROOT/bench/tracker.py" "$TPORT" & TRACKER_PID=$!; wait_port "$TPORT" || die "tracker port $TPORT busy"
fi
hash=$(python3 -c "import hashlib,sys;d=open(sys.argv[1],'rb').read();i=d.index(b'4:info')+6;print(hashlib.sha1(d[i:-1]).hexdigest())" "$tor")
cat "$src/bt.bin" >/dev/null

# start_seeder: a fresh qBittorrent (libtorrent) seeding $tor from $src
start_seeder() {
    [ -n "$QB_PID" ] && { kill $QB_PID 2>/dev/null; wait $QB_PID 2>/dev/null || true; }
    start_qbittorrent "$tor" "$src" "$TPORT" "$hash"
}

RESULTS="$BENCH_WORK/bt-results.txt"; : >"$RESULTS"
out="$BENCH_WORK/bt-out"
export CHIRAL_DATA_DIR="$BENCH_WORK/chiral-data"
for be in bittorrent rqbit; do
    [ -f "$ROOT/target/release/libchiral_plugin_$be.so" ] || continue
    start_seeder; rm -rf "$out"
    measure "chiral-$be" "$CHIRAL" get "$tor" -o "$out" --backend "$be" -q --no-dht
done
if [ -x "$RQBIT" ]; then
    start_seeder; rm -rf "$out"
    measure rqbit "$RQBIT" --disable-dht --disable-dht-persistence --disable-lsd --disable-upnp-port-forward --ipv4-only \
        --listen-ip 127.0.0.1 --listen-port "$(free_port)" download -e --disable-http-api -o "$out" "$tor"
else
    echo "rqbit not found ($RQBIT): column left out" >&2
fi
start_seeder; rm -rf "$out"
measure aria2c aria2c --seed-time=0 --enable-dht=false --bt-enable-lpd=false --enable-peer-exchange=false \
    --listen-port="$(free_port)" --file-allocation=none --summary-interval=0 --console-log-level=warn -d "$out" "$tor"

# transmission-cli never dials 127.0.0.1 peers from a tracker and never exits by itself: it
# starts first, the seeder (started after it is listed) dials it, and --finish stops the clock.
conf="$BENCH_WORK/tr"; rm -rf "$conf" "$out"; mkdir -p "$conf" "$out"
tport=$(free_port)
printf '#!/bin/sh\ntouch %s/finished\n' "$conf" >"$conf/done.sh"; chmod +x "$conf/done.sh"
echo '{"bind-address-ipv4":"127.0.0.1","dht-enabled":false,"lpd-enabled":false,"pex-enabled":false,"utp-enabled":false,"port-forwarding-enabled":false,"encryption":0,"cache-size-mb":64,"message-level":1}' >"$conf/settings.json"
/usr/bin/time -f "%M" -o "$BENCH_WORK/tr.time" transmission-cli -g "$conf" -w "$out" -p "$tport" -M -D -U -ep -f "$conf/done.sh" "$tor" >"$conf/cli.log" 2>&1 &
LEECH_PID=$!
for _ in $(seq 1 200); do curl -s "http://127.0.0.1:$TPORT/peers?hash=$hash" | grep -q ":$tport\$" && break; sleep 0.1; done
t0=$(date +%s.%N); start_seeder_t0=$t0; start_seeder
while [ ! -e "$conf/finished" ] && kill -0 $LEECH_PID 2>/dev/null; do sleep 0.05; done
t1=$(date +%s.%N)
# stop transmission-cli (the child of /usr/bin/time, which then writes its peak memory)
pkill -P $LEECH_PID 2>/dev/null || true; wait $LEECH_PID 2>/dev/null || true; LEECH_PID=""
[ -e "$conf/finished" ] || die "transmission-cli did not finish"
rss=$(tail -1 "$BENCH_WORK/tr.time" 2>/dev/null | grep -oE '^[0-9]+$' || echo 0)
echo "transmission-cli $(echo "$t1 - $t0" | bc) $rss" >>"$RESULTS"

python3 - "$RESULTS" "$SIZE_MB" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
size = int(sys.argv[2]) * 1048576
base = next((float(s) for n, s, _ in rows if n.startswith("chiral")), None)
print("| client | seconds | MB/s | peak RSS MiB | time vs chiral |")
print("|---|---|---|---|---|")
for n, s, rss in rows:
    s = float(s)
    rel = f"{s / base:.2f}x" if base else "-"
    print(f"| {n} | {s:.2f} | {size / s / 1e6:.0f} | {int(rss) / 1024:.0f} | {rel} |")
PY
