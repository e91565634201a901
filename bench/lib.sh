# Helpers sourced by the benchmark scripts: loopback servers, timing, peak memory.
# Everything binds to 127.0.0.1 and is stopped on exit.

BENCH_WORK="${BENCH_WORK:-${TMPDIR:-/tmp}/chiral-bench}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHIRAL="$ROOT/target/release/chiral"
mkdir -p "$BENCH_WORK"

die() { echo "bench: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

# make_file PATH MIB: incompressible data, made once.
make_file() {
    [ "$(stat -c %s "$1" 2>/dev/null)" = "$(( $2 * 1048576 ))" ] && return 0
    mkdir -p "$(dirname "$1")"
    head -c "$(( $2 * 1048576 ))" <(openssl enc -aes-128-ctr -nosalt -pass pass:chiral-bench </dev/zero 2>/dev/null) >"$1"
}

# start_nginx DIR -> sets NGINX_PORT, NGINX_PID
start_nginx() {
    local conf="$BENCH_WORK/nginx"; mkdir -p "$conf/tmp"
    NGINX_PORT=$(free_port)
    cat >"$conf/nginx.conf" <<NGX
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
    server { listen 127.0.0.1:$NGINX_PORT; root $1; }
}
NGX
    nginx -c "$conf/nginx.conf" -p "$conf" >/dev/null 2>&1 &
    NGINX_PID=$!
    wait_port "$NGINX_PORT" || die "nginx did not start"
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
