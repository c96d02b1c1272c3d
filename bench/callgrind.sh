#!/usr/bin/env bash
# CPU instructions per proxied request of nginx, HAProxy and `nonstop proxy`, counted by valgrind's
# callgrind: (Ir of a run of N2 requests - Ir of a run of N1) / (N2 - N1), so start-up and shutdown
# cancel out. Unlike req/s this does not move with machine noise. Each proxy runs one worker.
set -euo pipefail

N1=${N1:-2000}          # requests in the short run
N2=${N2:-12000}         # requests in the long run
CONNS=${CONNS:-8}       # ab -k concurrency (keep-alive)
NONSTOP_BIN=${NONSTOP_BIN:-}  # another build of nonstop to measure (e.g. an older commit's)

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in valgrind ab nginx haproxy curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool; apt-get install -y valgrind apache2-utils nginx-light haproxy curl" >&2; exit 1; }
done
bin="$root/target/dist"  # the shipped build (profile `dist`: fat LTO)
if [ -z "$NONSTOP_BIN" ] || [ ! -x "$bin/nonstop-hello" ]; then
    (cd "$root" && cargo build --profile dist -q -p nonstop-hello -p nonstop)
fi
nonstop=${NONSTOP_BIN:-$bin/nonstop}
dir=$(mktemp -d /tmp/nonstop-callgrind.XXXXXX)
pids=()
cleanup() {  # only the processes this script started, by pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

read -r backend port < <(python3 "$root/bench/free_ports.py" 2)
"$bin/nonstop-hello" --port "$backend" --node bench >/dev/null & pids+=($!)
up() {  # url: polls until it answers 200, at most 60 s (valgrind starts slowly)
    for _ in $(seq 1 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2; return 1
}
up "http://127.0.0.1:$backend/"

mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body; proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fcgi; uwsgi_temp_path $dir/nginx/uwsgi; scgi_temp_path $dir/nginx/scgi;
    upstream app { server 127.0.0.1:$backend; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
cat > "$dir/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:$port
    default_backend app
backend app
    server hello 127.0.0.1:$backend
CONF
cat > "$dir/nonstop.toml" <<CONF
[proxy]
listen = "127.0.0.1:$port"
admin = "unix:$dir/admin.sock"
workers = 1
[pools.app]
[[pools.app.backends]]
name = "hello"
addr = "127.0.0.1:$backend"
CONF

command_of() {
    case $1 in
        nginx) echo "nginx -p $dir/nginx -c $dir/nginx/nginx.conf" ;;
        haproxy) echo "haproxy -f $dir/haproxy.cfg -db" ;;
        nonstop) echo "$nonstop proxy --config $dir/nonstop.toml" ;;
    esac
}
stop_signal() { case $1 in nginx) echo QUIT ;; haproxy) echo USR1 ;; nonstop) echo TERM ;; esac; }

# Prints the instructions (Ir) one run of `name` took to serve n requests.
run() {
    local name=$1 n=$2 out="$dir/$1.$2.out"
    # shellcheck disable=SC2046
    NONSTOP_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" $(command_of "$name") >/dev/null 2>"$dir/$name.$n.log" &
    local pid=$!
    up "http://127.0.0.1:$port/" || { cat "$dir/$name.$n.log" >&2; exit 1; }
    local result
    result=$(ab -k -q -n "$n" -c "$CONNS" "http://127.0.0.1:$port/" 2>&1)
    kill -"$(stop_signal "$name")" "$pid"
    wait "$pid" || true
    local failed non2xx
    failed=$(awk '/^Failed requests/ { print $3 }' <<<"$result")
    non2xx=$(awk '/^Non-2xx responses/ { print $3 }' <<<"$result")
    if [ "${failed:-x}" != 0 ] || [ -n "$non2xx" ]; then
        echo "$name: ab reported failures: $result" >&2; exit 1
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

declare -A per_request
for name in nginx haproxy nonstop; do
    short=$(run "$name" "$N1")
    long=$(run "$name" "$N2")
    per_request[$name]=$(( (long - short) / (N2 - N1) ))
done
commit=${NONSTOP_BIN:+$NONSTOP_BIN}
commit=${commit:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev)}
cat <<TABLE
Instructions per proxied request (callgrind Ir, ($N2 - $N1) requests, ab -k -c $CONNS, one worker each; nonstop $commit):

| proxy | instructions/request | vs nginx |
| --- | ---: | ---: |
TABLE
for name in nginx haproxy nonstop; do
    printf '| %s | %s | %s |\n' "$name" "${per_request[$name]}" \
        "$(awk -v a="${per_request[$name]}" -v b="${per_request[nginx]}" 'BEGIN { printf "%.2f", a / b }')"
done
