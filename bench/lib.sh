# Helpers sourced by the benchmark scripts: loopback servers, timing, peak memory.
# Everything binds to 127.0.0.1 and is stopped on exit: every process a helper here starts in
# the background is also appended to PIDS (`stop_pids "${PIDS[@]}"` stops them all).

BENCH_WORK="${BENCH_WORK:-${TMPDIR:-/tmp}/chiral-bench}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHIRAL="$ROOT/target/release/chiral"
mkdir -p "$BENCH_WORK"
PIDS=()

die() { echo "bench: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

# stop_pids PID...: TERM to each, up to 5 s for them to exit, then KILL; reaps every child
stop_pids() {
    local p alive
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break; sleep 0.1
    done
    for p in "$@"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# make_file PATH MIB: incompressible data, made once.
make_file() {
    [ "$(stat -c %s "$1" 2>/dev/null)" = "$(( $2 * 1048576 ))" ] && return 0
    mkdir -p "$(dirname "$1")"
    head -c "$(( $2 * 1048576 ))" <(openssl enc -aes-128-ctr -nosalt -pass pass:chiral-bench </dev/zero 2>/dev/null) >"$1"
}

# nginx_conf ROOT PORT [HEAD [TAIL]]: nginx.conf serving ROOT on PORT, HEAD/TAIL before/after -> sets NGINX_CONF
nginx_conf() {
    NGINX_CONF="$BENCH_WORK/nginx"; mkdir -p "$NGINX_CONF/tmp"
    local conf="$NGINX_CONF"
    {
        [ -z "${3:-}" ] || echo "$3"
        cat <<NGX
daemon off;
user $(id -un);
worker_processes 1;
pid $conf/nginx.pid;
error_log $conf/error.log warn;
events { worker_connections 256; }
http {
    access_log off; sendfile on; tcp_nopush on; keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path $conf/tmp/body; proxy_temp_path $conf/tmp/proxy;
    fastcgi_temp_path $conf/tmp/fastcgi; uwsgi_temp_path $conf/tmp/uwsgi; scgi_temp_path $conf/tmp/scgi;
    server { listen 127.0.0.1:$2; root $1; }
}
NGX
        [ -z "${4:-}" ] || echo "$4"
    } >"$conf/nginx.conf"
}

# launch_nginx PORT: runs nginx on $NGINX_CONF, waits for PORT -> sets NGINX_PID
launch_nginx() {
    nginx -c "$NGINX_CONF/nginx.conf" -p "$NGINX_CONF" >/dev/null 2>"$NGINX_CONF/start.err" &
    NGINX_PID=$!; PIDS+=($NGINX_PID)
    wait_port "$1" || { cat "$NGINX_CONF/start.err" "$NGINX_CONF/error.log" >&2 2>/dev/null; die "nginx did not start"; }
}

# start_nginx DIR -> sets NGINX_PORT, NGINX_PID
start_nginx() {
    NGINX_PORT=$(free_port)
    nginx_conf "$1" "$NGINX_PORT"
    launch_nginx "$NGINX_PORT"
}

# start_vsftpd ROOT [BPS]: anonymous FTP of ROOT, BPS bytes/s per session -> sets FTP_PORT, VSFTPD_PID
start_vsftpd() {
    local conf="$BENCH_WORK/vsftpd" pasv; mkdir -p "$conf" /var/run/vsftpd/empty
    FTP_PORT=$(free_port); pasv=$(free_port)
    cat >"$conf/vsftpd.conf" <<CONF
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=$FTP_PORT
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$1
local_enable=NO
write_enable=NO
pasv_enable=YES
port_enable=NO
pasv_address=127.0.0.1
pasv_min_port=$((pasv < 65000 ? pasv : 40000))
pasv_max_port=$((pasv < 65000 ? pasv + 40 : 40040))
connect_from_port_20=NO
max_clients=64
max_per_ip=32
use_sendfile=YES
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
secure_chroot_dir=/var/run/vsftpd/empty
ftp_username=ftp
xferlog_enable=NO
CONF
    [ -z "${2:-}" ] || echo "anon_max_rate=$2" >>"$conf/vsftpd.conf"
    vsftpd "$conf/vsftpd.conf" >"$conf/log" 2>&1 &
    VSFTPD_PID=$!; PIDS+=($VSFTPD_PID)
    wait_port "$FTP_PORT" || die "vsftpd did not start"
}

# start_qbittorrent TORRENT DIR TPORT HASH [KIBPS]: seeding, listed by the tracker -> sets QB_PORT, QB_API, QB_PID
start_qbittorrent() {
    local prof="$BENCH_WORK/qb" rpc bps
    rm -rf "$prof"; mkdir -p "$prof/qBittorrent/config"
    QB_PORT=$(free_port); rpc=$(free_port)
    {
        cat <<QB
[LegalNotice]
Accepted=true
[BitTorrent]
Session\\Port=$QB_PORT
Session\\Interface=lo
Session\\InterfaceName=lo
Session\\InterfaceAddress=127.0.0.1
Session\\BTProtocol=TCP
Session\\DHTEnabled=false
Session\\LSDEnabled=false
Session\\PeXEnabled=false
Session\\Encryption=0
Session\\QueueingSystemEnabled=false
Session\\GlobalMaxRatio=-1
Session\\MultiConnectionsPerIp=true
Session\\MaxConnections=-1
Session\\MaxUploads=-1
Session\\MaxUploadsPerTorrent=-1
QB
        [ -z "${5:-}" ] || printf 'Session\\GlobalUPSpeedLimit=%s\nSession\\IgnoreLimitsOnLAN=false\n' "$5"
        cat <<QB
[Preferences]
Connection\\UPnP=false
WebUI\\Enabled=true
WebUI\\Address=127.0.0.1
WebUI\\Port=$rpc
WebUI\\LocalHostAuth=false
WebUI\\CSRFProtection=false
WebUI\\HostHeaderValidation=false
QB
    } >"$prof/qBittorrent/config/qBittorrent.conf"
    qbittorrent-nox --profile="$prof" --webui-port="$rpc" --save-path="$2" --skip-hash-check "$1" >"$BENCH_WORK/qb.log" 2>&1 &
    QB_PID=$!; PIDS+=($QB_PID)
    wait_port "$rpc" || die "qbittorrent did not start"
    QB_API="http://127.0.0.1:$rpc/api/v2"
    if [ -n "${5:-}" ]; then
        bps=$(( $5 * 1024 ))
        curl -sf "$QB_API/app/setPreferences" --data-urlencode \
            "json={\"up_limit\":$bps,\"limit_lan_peers\":true,\"limit_utp_rate\":true,\"limit_tcp_overhead\":false}" >/dev/null \
            || die "qbittorrent: setPreferences failed"
        [ "$(curl -sf "$QB_API/transfer/uploadLimit")" = "$bps" ] || die "qbittorrent: upload limit not $bps"
    fi
    for _ in $(seq 1 300); do
        curl -s "$QB_API/torrents/info" | grep -q '"progress":1' && \
        curl -s "http://127.0.0.1:$3/peers?hash=$4" | grep -q ":$QB_PORT\$" && return 0
        sleep 0.1
    done
    die "qbittorrent is not seeding"
}

# Chiral processes, each with its own data dir under $nodes (set by the script).
# new_dir NAME: a fresh data dir with its own config (no public DHT), for one chiral process
new_dir() { rm -rf "${nodes:?}/$1"; mkdir -p "$nodes/$1"; echo 'no_dht = true' >"$nodes/$1/config.toml"; }
# cx NAME: sets CX to the chiral command line with that data dir and config, loopback only
cx() { CX=("$CHIRAL" --data-dir "$nodes/$1" --config "$nodes/$1/config.toml" --listen 127.0.0.1 --no-dht); }
# start_chiral NAME ARGS...: a long-running chiral process, stdout to $nodes/NAME.out -> sets LAST_PID
start_chiral() {
    local n="$1"; shift; new_dir "$n"; cx "$n"
    "${CX[@]}" "$@" >"$nodes/$n.out" 2>"$nodes/$n.err" &
    LAST_PID=$!; PIDS+=($LAST_PID)
}
# first_line NAME REGEX: the first stdout line of NAME matching REGEX (waits up to 120 s)
first_line() {
    local n="$1" pid="$LAST_PID" l
    for _ in $(seq 1 1200); do
        l=$(grep -m1 -E "$2" "$nodes/$n.out" 2>/dev/null || true)
        [ -n "$l" ] && { echo "$l"; return 0; }
        kill -0 "$pid" 2>/dev/null || { cat "$nodes/$n.err" >&2; die "$n exited"; }
        sleep 0.1
    done
    cat "$nodes/$n.err" >&2; die "$n printed nothing matching $2"
}

# measure NAME CMD...: runs CMD, appends "NAME seconds peak_rss_kib" to $RESULTS.
measure() {
    local name="$1"; shift
    local t0 t1 rss
    t0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$BENCH_WORK/time.out" "$@" >/dev/null 2>"$BENCH_WORK/$name.err" || { cat "$BENCH_WORK/$name.err" >&2; die "$name failed"; }
    t1=$(date +%s.%N)
    rss=$(tail -1 "$BENCH_WORK/time.out")
    echo "$name $(echo "$t1 - $t0" | bc) $rss" >>"$RESULTS"
}
