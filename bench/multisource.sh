#!/usr/bin/env bash
# Multi-source benchmark: one file (SIZE_MB, torrent with 1 MiB pieces) offered on loopback by
# three real servers capped at UNEQUAL rates, and optionally a fourth, the Chiral network:
#   HTTP        nginx, HTTP_KBPS/CONNS per connection (stream proxy)  (default 48 MiB/s in all)
#   FTP         vsftpd anonymous, `anon_max_rate` FTP_KBPS/CONNS per session   (default 24 MiB/s)
#   BitTorrent  qBittorrent (qbittorrent-nox) seeding, global upload limit BT_KBPS (12 MiB/s),
#               loopback tracker bench/tracker.py
#   Chiral      (CHIRAL_NET=1) a bootstrap `chiral node` and `chiral seed --via chiral
#               --option upload_rate=NET_KBPS K`                                (30 MiB/s)
# In one run it measures, with `chiral get ... --connections CONNS`:
#   1. each source alone; "sum" is the sum of the HTTP, FTP and BitTorrent MiB/s, "sum4" adds
#      the Chiral network's: what a perfect merge of the sources would reach;
#   2. the three-source download `chiral get FILE.torrent HTTP_URL FTP_URL --json`, alternated
#      with aria2c on the same three (`-T FILE.torrent HTTP_URL FTP_URL`, the URLs as web seeds;
#      -x 2*CONNS -s 2*CONNS: aria2c counts -x per host, and both servers are 127.0.0.1, so this
#      is CONNS connections per server, as chiral), RUNS times each, A B A B;
#   3. (CHIRAL_NET=1) the four-source download, the `chiral:` id added, RUNS times.
# Times are wall clock, process start to exit, for every tool alike (aria2c's include its
# BitTorrent wind-down: it announces completion to the tracker on its next 1 s tick, then exits).
# Every download's SHA-256 is checked against the file; every output dir (and the downloader's
# data dir) is deleted and `sync`ed before each run. Every chiral process has its own --data-dir
# and a config with `no_dht = true`, plus --no-dht and --listen 127.0.0.1: nothing leaves
# loopback. Prints a markdown table (median seconds, MiB/s, fraction of the sum, chiral's mean
# MiB per source from its --json `.download.sources[]`) and a last line
#   multisource: chiral X.XX of sum (four sources Y.YY of sum4), aria2c Z.ZZ of sum
# Work files live under $BENCH_WORK/multisource; every process started is stopped on exit.
#   bash bench/multisource.sh
# Environment (defaults): SIZE_MB=512 RUNS=3 SOLO_RUNS=$RUNS (runs of each source alone)
#   CONNS=8 (connections per HTTP/FTP server, at most 8) HTTP_KBPS=49152
#   FTP_KBPS=24576 BT_KBPS=12288 NET_KBPS=30720 (KiB/s) CHIRAL_NET=1 TIMEOUT=600 (s per download)
#   BENCH_WORK as for the other scripts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB="${SIZE_MB:-512}"; RUNS="${RUNS:-3}"; SOLO_RUNS="${SOLO_RUNS:-$RUNS}"; CONNS="${CONNS:-8}"
HTTP_KBPS="${HTTP_KBPS:-49152}"; FTP_KBPS="${FTP_KBPS:-24576}"; BT_KBPS="${BT_KBPS:-12288}"
NET_KBPS="${NET_KBPS:-30720}"; CHIRAL_NET="${CHIRAL_NET:-1}"; TIMEOUT="${TIMEOUT:-600}"
BENCH_WORK="$BENCH_WORK/multisource"; mkdir -p "$BENCH_WORK"   # own corner: other scripts may run too
[ -x "$CHIRAL" ] || die "build first: cargo build --release --workspace"
PATH="$PATH:/usr/sbin"
for p in nginx vsftpd qbittorrent-nox aria2c curl bc python3 sha256sum timeout; do
    command -v $p >/dev/null || die "$p missing (bash tests/install-deps.sh; apt-get install qbittorrent-nox)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time missing (apt-get install time)"
[ "$CONNS" -ge 1 ] && [ "$CONNS" -le 8 ] || die "CONNS must be 1..8 (aria2c: -x 2*CONNS, at most 16)"
export NO_COLOR=1

src="$BENCH_WORK/src"; name=ms.bin; file="$src/$name"; make_file "$file" "$SIZE_MB"; chmod 755 "$src"
size=$(( SIZE_MB * 1048576 ))
nodes="$BENCH_WORK/nodes"; out="$BENCH_WORK/out"; jsons="$BENCH_WORK/json"; tor="$BENCH_WORK/ms.torrent"
RESULTS="$BENCH_WORK/results.txt"; SOURCES="$BENCH_WORK/sources.txt"; : >"$RESULTS"; : >"$SOURCES"
rm -rf "$nodes" "$jsons"; mkdir -p "$nodes" "$jsons"

cleanup() {
    stop_pids "${PIDS[@]}"
    rm -rf "$nodes" "$out" "$jsons" "$tor" "$BENCH_WORK/qb"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "load before: $(uptime)"
echo "hashing $SIZE_MB MiB, starting servers..." >&2
cat "$file" >/dev/null   # page cache warm for every server alike
want=$(sha256sum "$file" | cut -d' ' -f1)

# --- tracker and torrent (made fresh: its announce URL names this run's tracker port) ---------
TPORT=$(free_port)
python3 "$ROOT/bench/tracker.py" "$TPORT" 2>"$BENCH_WORK/tracker.err" & PIDS+=($!)
wait_port "$TPORT" || die "tracker did not start"
new_dir mk; cx mk
"${CX[@]}" create "$file" -o "$tor" --tracker "http://127.0.0.1:$TPORT/announce" --piece-size 1048576 -q \
    >/dev/null 2>"$nodes/mk.err" || { cat "$nodes/mk.err" >&2; die "chiral create failed"; }
hash=$(python3 -c "import hashlib,sys;d=open(sys.argv[1],'rb').read();i=d.index(b'4:info')+6;print(hashlib.sha1(d[i:-1]).hexdigest())" "$tor")

# --- HTTP: nginx, capped per TCP connection ------------------------------------------------
# `limit_rate` in an http location caps each request, and every request starts with one
# second's worth unthrottled: chiral asks one range per piece (1 MiB) on keep-alive connections,
# so it would never be throttled. A stream proxy with `proxy_download_rate` in front of the
# http server caps each client connection instead (the first second still bursts, for every
# client alike). The stream module may be a dynamic one: loaded from nginx's --modules-path.
HPORT=$(free_port); HBACK=$(free_port)
nginx_v=$(nginx -V 2>&1)
load=""
case "$nginx_v" in
    *--with-stream=dynamic*)
        moddir=$(sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p' <<<"$nginx_v")
        mod="${moddir:-$(sed -n 's/.*--prefix=\([^ ]*\).*/\1/p' <<<"$nginx_v")/modules}/ngx_stream_module.so"
        [ -f "$mod" ] || die "nginx stream module not found ($mod): apt-get install libnginx-mod-stream"
        load="load_module $mod;" ;;
    *--with-stream*) ;;
    *) die "nginx without the stream module (apt-get install libnginx-mod-stream)" ;;
esac
nginx_conf "$src" "$HBACK" "$load" "stream {
    server {
        listen 127.0.0.1:$HPORT;
        proxy_pass 127.0.0.1:$HBACK;
        proxy_download_rate $(( HTTP_KBPS * 1024 / CONNS ));
    }
}"
launch_nginx "$HPORT"
http_url="http://127.0.0.1:$HPORT/$name"

# --- FTP: vsftpd anonymous, anon_max_rate per session --------------------------------------
start_vsftpd "$src" $(( FTP_KBPS * 1024 / CONNS ))
ftp_url="ftp://127.0.0.1:$FTP_PORT/$name"

# --- BitTorrent: qBittorrent seeding, global upload limit (applied to LAN peers too) ---------
start_qbittorrent "$tor" "$src" "$TPORT" "$hash" "$BT_KBPS"

# --- Chiral network: bootstrap node and one capped seeder ------------------------------------
cid=""; addr_a=""
if [ "$CHIRAL_NET" = 1 ]; then
    start_chiral A node
    addr_a=$(first_line A '^/ip4/127\.0\.0\.1/tcp/[0-9]+/p2p/')
    start_chiral S seed "$file" --via chiral --bootstrap "$addr_a" --option "upload_rate=${NET_KBPS}K"
    cid=$(first_line S '^chiral:[0-9a-f]{64}$')
fi
echo "servers: $http_url $ftp_url bittorrent $hash${cid:+ $cid}" >&2

# --- runs ----------------------------------------------------------------------------------
# fresh NAME: empty output dir and downloader data dir, synced
fresh() { rm -rf "$out"; mkdir -p "$out"; new_dir "$1"; sync; }
# check NAME: the download has the file's SHA-256
check() {
    local got; got=$(sha256sum "$out/$name" 2>/dev/null | cut -d' ' -f1 || true)
    [ "$got" = "$want" ] || die "$1: $out/$name has sha256 '${got:-missing}', expected $want"
}
# get NAME R IDS...: a timed `chiral get IDS --json`, checked; per-source bytes to $SOURCES
get() {
    local n="$1" r="$2" j="$jsons/$1-$2.json"; shift 2
    fresh C; cx C
    measure "$n" timeout --foreground "$TIMEOUT" bash -c 'o="$1"; shift; exec "$@" >"$o"' _ "$j" \
        "${CX[@]}" get "$@" -o "$out" --connections "$CONNS" --json -q
    check "$n"
    python3 - "$j" "$n" "$r" >>"$SOURCES" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["download"]
by = {}
for s in d["sources"]:
    by[s["plugin"]] = by.get(s["plugin"], 0) + s["bytes"]
for p, b in by.items():
    print(sys.argv[2], sys.argv[3], p, b)
PY
    echo "  $n: $(tail -1 "$RESULTS" | cut -d' ' -f2) s;$(awk -v n="$n" -v r="$r" '$1 == n && $2 == r {printf " %s %.0f MiB", $3, $4 / 1048576}' "$SOURCES")" >&2
}
aria() {
    fresh C
    measure aria2c-3 timeout --foreground "$TIMEOUT" aria2c -x$(( 2 * CONNS )) -s$(( 2 * CONNS )) -k1M --seed-time=0 \
        --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false \
        --listen-port="$(free_port)" --file-allocation=none --summary-interval=0 --console-log-level=warn \
        -d "$out" -T "$tor" "$http_url" "$ftp_url"
    check aria2c-3
    echo "  aria2c-3: $(tail -1 "$RESULTS" | cut -d' ' -f2) s" >&2
}

for r in $(seq 1 "$SOLO_RUNS"); do
    echo "alone: round $r/$SOLO_RUNS" >&2
    get solo-http "$r" "$http_url"
    get solo-ftp "$r" "$ftp_url"
    get solo-bittorrent "$r" "$tor"
    if [ "$CHIRAL_NET" = 1 ]; then get solo-chiral "$r" "$cid" --bootstrap "$addr_a"; fi
done
for r in $(seq 1 "$RUNS"); do
    echo "three sources: round $r/$RUNS" >&2
    get chiral-3 "$r" "$tor" "$http_url" "$ftp_url"
    aria
done
if [ "$CHIRAL_NET" = 1 ]; then
    for r in $(seq 1 "$RUNS"); do
        echo "four sources: round $r/$RUNS" >&2
        get chiral-4 "$r" "$tor" "$http_url" "$ftp_url" "$cid" --bootstrap "$addr_a"
    done
fi
rm -rf "$out"
echo "load after:  $(uptime)"

python3 - "$RESULTS" "$SOURCES" "$SIZE_MB" "$CONNS" "$HTTP_KBPS $FTP_KBPS $BT_KBPS $NET_KBPS" <<'PY'
import sys, statistics
MiB = 1048576
times, src = {}, {}
for line in open(sys.argv[1]):
    n, s, _ = line.split(); times.setdefault(n, []).append(float(s))
for line in open(sys.argv[2]):
    n, r, p, b = line.split(); src.setdefault(n, {}).setdefault(p, []).append((int(r), int(b)))
size, conns = int(sys.argv[3]) * MiB, int(sys.argv[4])
caps = [int(k) / 1024 for k in sys.argv[5].split()]
med = {n: statistics.median(v) for n, v in times.items()}
rate = {n: size / MiB / m for n, m in med.items()}
solos = ["solo-http", "solo-ftp", "solo-bittorrent"]
total = sum(rate[n] for n in solos)
total4 = total + rate["solo-chiral"] if "solo-chiral" in rate else None
def per_source(n):
    if n not in src: return "-"
    runs = len(times[n])
    return ", ".join(f"{p} {sum(b for _, b in v) / runs / MiB:.0f}" for p, v in sorted(src[n].items(), key=lambda kv: -sum(b for _, b in kv[1])))
label = {
    "solo-http": "HTTP alone (nginx)", "solo-ftp": "FTP alone (vsftpd)",
    "solo-bittorrent": "BitTorrent alone (qBittorrent)", "solo-chiral": "Chiral network alone",
    "chiral-3": "chiral get: torrent + HTTP + FTP", "aria2c-3": "aria2c: torrent + HTTP + FTP",
    "chiral-4": "chiral get: torrent + HTTP + FTP + chiral:",
}
print(f"| case | runs | median s | MiB/s | of sum | chiral MiB per source (mean) |")
print("|---|---|---|---|---|---|")
def row(n, of):
    print(f"| {label[n]} | {len(times[n])} | {med[n]:.2f} | {rate[n]:.1f} | {rate[n] / of:.2f} | {per_source(n)} |")
for n in solos: row(n, total)
print(f"| **sum** (HTTP + FTP + BitTorrent) | | | {total:.1f} | 1.00 | |")
row("chiral-3", total); row("aria2c-3", total)
if total4:
    row("solo-chiral", total4)
    print(f"| **sum4** (sum + Chiral network) | | | {total4:.1f} | 1.00 | |")
    row("chiral-4", total4)
net = f", Chiral network {caps[3]:g}" if total4 else ""
print(f"\n{size // MiB} MiB; caps in MiB/s: HTTP {caps[0]:g} ({conns} connections x {caps[0] / conns:g}), FTP {caps[1]:g}"
      f" ({conns} sessions x {caps[1] / conns:g}), BitTorrent {caps[2]:g}{net}. \"of sum\": MiB/s over the sum of the"
      f" sources alone (sum4 for the Chiral network rows).")
four = f" (four sources {rate['chiral-4'] / total4:.2f} of sum4)" if total4 else ""
print(f"multisource: chiral {rate['chiral-3'] / total:.2f} of sum{four}, aria2c {rate['aria2c-3'] / total:.2f} of sum")
PY
