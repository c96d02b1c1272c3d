#!/usr/bin/env bash
# Benchmarks `nonstop proxy` side by side with nginx and HAProxy, in one run on this machine:
# wrk → {backend directly, nginx, HAProxy, nonstop} → nonstop-hello, keep-alive on both sides.
set -euo pipefail

THREADS=${THREADS:-2}         # wrk threads
CONNS=${CONNS:-64}            # concurrent client connections
DURATION=${DURATION:-10s}     # measured run per target
WARMUP=${WARMUP:-2s}          # discarded run per target
WORKERS=${WORKERS:-2}         # worker processes/threads of each proxy: the same for all three
ROUNDS=${ROUNDS:-1}           # repeat the whole sequence; the table reports the median

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk nginx haproxy curl python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "missing $tool; install with: apt-get install -y wrk nginx-light haproxy curl" >&2
        [ -f /tmp/apt.log ] && [ "$(tail -n1 /tmp/apt.log)" != done ] && echo "(an apt-get run is still going: see /tmp/apt.log)" >&2
        exit 1
    fi
done
NONSTOP_BIN=${NONSTOP_BIN:-}  # another build of nonstop to measure (e.g. an older commit's)
# The shipped build (profile `dist`: fat LTO). nonstop is benchmarked only when it builds and
# `nonstop proxy` runs; the others are measured regardless.
bin="$root/target/dist"
(cd "$root" && cargo build --profile dist -q -p nonstop-hello)
nonstop=${NONSTOP_BIN:-$bin/nonstop}
with_nonstop=1
if { [ -z "$NONSTOP_BIN" ] && ! (cd "$root" && cargo build --profile dist -q -p nonstop); } || ! "$nonstop" proxy --help >/dev/null 2>&1; then
    echo "warning: \`nonstop proxy\` does not build or run yet; measuring direct, nginx and HAProxy only" >&2
    with_nonstop=0
fi
dir=$(mktemp -d /tmp/nonstop-bench.XXXXXX)
pids=()
cleanup() {  # only the processes this script started, by pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP  # so an interrupted run still cleans up

free_ports() {  # n distinct free ports on 127.0.0.1, below the ephemeral range
    python3 "$root/bench/free_ports.py" "$1"
}
wait_for() {  # url: poll until it answers 200, at most 10 s
    for _ in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
        sleep 0.05
    done
    echo "no answer from $1" >&2; exit 1
}

read -r backend p_nginx p_haproxy p_nonstop < <(free_ports 4)

"$bin/nonstop-hello" --port "$backend" --node bench >/dev/null & pids+=($!)

mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body; proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fcgi; uwsgi_temp_path $dir/nginx/uwsgi; scgi_temp_path $dir/nginx/scgi;
    upstream app { server 127.0.0.1:$backend; keepalive 64; }
    server {
        listen 127.0.0.1:$p_nginx;
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
nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)

cat > "$dir/haproxy.cfg" <<CONF
global
    nbthread $WORKERS
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
    bind 127.0.0.1:$p_haproxy
    default_backend app
backend app
    server hello 127.0.0.1:$backend
CONF
haproxy -f "$dir/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)

cat > "$dir/nonstop.toml" <<CONF
[proxy]
listen = "127.0.0.1:$p_nonstop"
admin = "unix:$dir/admin.sock"
workers = $WORKERS
[pools.app]
[[pools.app.backends]]
name = "hello"
addr = "127.0.0.1:$backend"
CONF
names=(direct nginx haproxy)
ports=($backend $p_nginx $p_haproxy)
if [ "$with_nonstop" = 1 ]; then
    NONSTOP_LOG=warn "$nonstop" proxy --config "$dir/nonstop.toml" & pids+=($!)
    names+=(nonstop); ports+=($p_nonstop)
fi

for port in "${ports[@]}"; do wait_for "http://127.0.0.1:$port/"; done

# Prints "req/s p50_ms p99_ms" for one wrk run.
measure() {
    wrk -t"$THREADS" -c"$CONNS" -d"$2" --latency "$1" | awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
        /Non-2xx|Socket errors/ { print "wrk reported errors: " $0 > "/dev/stderr" }
        END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}

declare -A results
for round in $(seq 1 "$ROUNDS"); do
    for i in "${!names[@]}"; do
        url="http://127.0.0.1:${ports[$i]}/"
        measure "$url" "$WARMUP" >/dev/null
        results[${names[$i]}]+="$(measure "$url" "$DURATION");"
    done
done

median() {  # field number, "a b c;a b c;..." → median of that field
    echo "$2" | tr ';' '\n' | awk -v f="$1" 'NF { print $f }' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
declare -A rps=([nonstop]=n/a) p50=([nonstop]=n/a) p99=([nonstop]=n/a)
for name in "${names[@]}"; do
    rps[$name]=$(median 1 "${results[$name]}"); p50[$name]=$(median 2 "${results[$name]}"); p99[$name]=$(median 3 "${results[$name]}")
done
ratio() { [ "$1" = n/a ] && echo n/a || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

report=$(cat <<TABLE
Machine: $(nproc) cores, $(uname -r); wrk, the backend and the proxy share these cores.
wrk -t$THREADS -c$CONNS -d$DURATION (after a $WARMUP warm-up), $WORKERS workers per proxy, keep-alive both sides, $ROUNDS round(s), median shown.
nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), nonstop $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev).

| target | req/s | p50 ms | p99 ms |
| --- | ---: | ---: | ---: |
$(for name in direct nginx haproxy nonstop; do echo "| $name | ${rps[$name]} | ${p50[$name]} | ${p99[$name]} |"; done)

| ratio | req/s | p99 |
| --- | ---: | ---: |
| nonstop / nginx | $(ratio "${rps[nonstop]}" "${rps[nginx]}") | $(ratio "${p99[nonstop]}" "${p99[nginx]}") |
| nonstop / HAProxy | $(ratio "${rps[nonstop]}" "${rps[haproxy]}") | $(ratio "${p99[nonstop]}" "${p99[haproxy]}") |
TABLE
)
echo "$report"
mkdir -p "$root/bench/results"
echo "$report" > "$root/bench/results/proxy-$(date +%Y%m%d-%H%M%S).md"
