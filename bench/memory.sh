#!/usr/bin/env bash
# RSS per idle keep-alive client connection of nginx, HAProxy and `nonstop proxy`, in one run:
# each proxy gets CONNS client connections that each made one request and then stay open.
set -euo pipefail

CONNS=${CONNS:-5000}
WORKERS=${WORKERS:-2}
NONSTOP_BIN=${NONSTOP_BIN:-}  # another build of nonstop to measure (e.g. an older commit's)

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in nginx haproxy curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"  # as many as allowed: HAProxy sizes its own needs from maxconn
# The shipped build (profile `dist`: fat LTO), as benchmarks measure it.
bin="$root/target/dist"
if [ -z "$NONSTOP_BIN" ] || [ ! -x "$bin/nonstop-hello" ]; then
    (cd "$root" && cargo build --profile dist -q -p nonstop-hello -p nonstop)
fi
nonstop=${NONSTOP_BIN:-$bin/nonstop}
dir=$(mktemp -d /tmp/nonstop-memory.XXXXXX)
pids=()
cleanup() {  # only the processes this script started, by pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

read -r backend p_nginx p_haproxy p_nonstop < <(python3 "$root/bench/free_ports.py" 4)
"$bin/nonstop-hello" --port "$backend" --node bench >/dev/null & pids+=($!)

mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
worker_rlimit_nofile $((CONNS * 3));
pid $dir/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections $((CONNS * 2)); }
http {
    access_log off;
    keepalive_timeout 300s;
    client_body_temp_path $dir/nginx/body; proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fcgi; uwsgi_temp_path $dir/nginx/uwsgi; scgi_temp_path $dir/nginx/scgi;
    upstream app { server 127.0.0.1:$backend; keepalive 64; }
    server {
        listen 127.0.0.1:$p_nginx;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CONF
nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)
nginx_master=$!
cat > "$dir/haproxy.cfg" <<CONF
global
    nbthread $WORKERS
    maxconn $((CONNS + 1000))
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 3s
    timeout client 300s
    timeout http-keep-alive 300s
    timeout server 60s
frontend web
    bind 127.0.0.1:$p_haproxy
    default_backend app
backend app
    server hello 127.0.0.1:$backend
CONF
haproxy -f "$dir/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
haproxy_pid=$!
cat > "$dir/nonstop.toml" <<CONF
[proxy]
listen = "127.0.0.1:$p_nonstop"
admin = "unix:$dir/admin.sock"
workers = $WORKERS
timeouts = { idle = "300s" }
[pools.app]
[[pools.app.backends]]
name = "hello"
addr = "127.0.0.1:$backend"
CONF
NONSTOP_LOG=warn "$nonstop" proxy --config "$dir/nonstop.toml" & pids+=($!)
nonstop_pid=$!

for port in $p_nginx $p_haproxy $p_nonstop; do
    for _ in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)" = 200 ] && break
        sleep 0.05
    done
done

rss_kib() {  # total VmRSS of a process and its children, KiB
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Opens CONNS connections to a port, one GET each, and holds them until stdin closes.
read -r -d '' holder <<'PY' || true
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await reader.readexactly(length)
    return writer
async def main():
    held = []
    for start in range(0, n, 500):
        held += await asyncio.gather(*[one() for _ in range(start, min(n, start + 500))])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
PY
hold() { python3 -c "$holder" "$1" "$CONNS"; }

measure() {  # name pid port → KiB per connection
    local before after
    before=$(rss_kib "$2")
    coproc HOLD { hold "$3"; }
    read -r _ <&"${HOLD[0]}"
    sleep 1
    after=$(rss_kib "$2")
    local pid=$HOLD_PID
    eval "exec ${HOLD[1]}>&-"
    wait "$pid" 2>/dev/null || true
    awk -v a="$after" -v b="$before" -v n="$CONNS" -v name="$1" \
        'BEGIN { printf "| %s | %.1f | %.1f | %.2f |\n", name, b / 1024, a / 1024, (a - b) / n }'
}

echo "RSS with $CONNS idle keep-alive client connections (each made one GET), $WORKERS workers each; nonstop ${NONSTOP_BIN:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev)}:"
echo
echo "| proxy | RSS before MiB | RSS with connections MiB | KiB per connection |"
echo "| --- | ---: | ---: | ---: |"
measure nginx "$nginx_master" "$p_nginx"
measure haproxy "$haproxy_pid" "$p_haproxy"
measure nonstop "$nonstop_pid" "$p_nonstop"
