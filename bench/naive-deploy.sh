#!/usr/bin/env bash
# Baseline for the deploy engine: the same request stream through `nonstop proxy` during
#  (a) a naive deploy — stop the old process, start the new one on the same port — and
#  (b) `nonstop deploy` blue-green,
# both with a new release that takes START_DELAY to start listening (like a JVM). Prints a table.
set -euo pipefail

CLIENTS=${CLIENTS:-8}          # concurrent keep-alive clients
START_DELAY=${START_DELAY:-2s} # how long the new release takes to listen
SETTLE=${SETTLE:-2}            # seconds of load before and after each deploy

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
(cd "$root" && cargo build --release -q -p nonstop -p nonstop-hello)
bin="$root/target/release"
dir=$(mktemp -d /tmp/nonstop-naive.XXXXXX)
pids=()
cleanup() {  # only the processes this script started, by pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -f "$dir/nonstop.toml" ]; then
        # instances started by `nonstop deploy` are recorded in its store
        for pid in $("$bin/nonstop" status shop --json --config "$dir/nonstop.toml" 2>/dev/null \
            | python3 -c 'import json,sys; print(*[n["pid"] for n in json.load(sys.stdin)["nodes"] if n["process"]=="running"])' 2>/dev/null); do
            kill "$pid" 2>/dev/null || true
        done
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

read -r listen app blue green < <(python3 "$root/bench/free_ports.py" 4)

# The request stream: CLIENTS threads of keep-alive GETs until $dir/stop exists; prints JSON.
cat > "$dir/load.py" <<'EOF'
import http.client, json, os, sys, threading, time
port, clients, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
events = []  # (time, ok)
def client():
    conn = None
    while not os.path.exists(stop):
        t = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            r = conn.getresponse(); r.read()
            ok = 200 <= r.status < 300
            if r.getheader("connection", "") == "close": conn.close(); conn = None
        except Exception:
            ok = False
            if conn: conn.close()
            conn = None
        with lock: events.append((t, ok))
        if not ok: time.sleep(0.005)
threads = [threading.Thread(target=client) for _ in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
fails = [t for t, ok in events if not ok]
print(json.dumps({"sent": len(events), "failed": len(fails),
                  "outage_ms": round((max(fails) - min(fails)) * 1000) if fails else 0}))
EOF

wait_http() {  # url, seconds
    for _ in $(seq 1 $(( $2 * 20 ))); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "no answer from $1" >&2; return 1
}

start_proxy() {
    "$bin/nonstop" proxy --config "$dir/nonstop.toml" >"$dir/proxy.log" 2>&1 &
    proxy=$!; pids+=($proxy)
    for _ in $(seq 1 100); do [ -S "$dir/admin.sock" ] && return 0; sleep 0.05; done
    echo "proxy did not start" >&2; cat "$dir/proxy.log" >&2; exit 1
}

stop_proxy() {
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
    rm -f "$dir/admin.sock"
}

# ---- (a) naive: one backend port, kill and restart ----
cat > "$dir/nonstop.toml" <<EOF
[proxy]
listen = "127.0.0.1:$listen"
admin = "unix:$dir/admin.sock"
[pools.shop]
[[pools.shop.backends]]
name = "app"
addr = "127.0.0.1:$app"
EOF
start_proxy
"$bin/nonstop-hello" --port "$app" --version 1 --node app >"$dir/v1.log" 2>&1 &
old=$!; pids+=($old)
wait_http "http://127.0.0.1:$listen/" 10
rm -f "$dir/stop"
python3 "$dir/load.py" "$listen" "$CLIENTS" "$dir/stop" >"$dir/naive.json" &
load=$!
sleep "$SETTLE"
kill "$old"; wait "$old" 2>/dev/null || true
"$bin/nonstop-hello" --port "$app" --version 2 --node app --start-delay "$START_DELAY" >"$dir/v2.log" 2>&1 &
new=$!; pids+=($new)
wait_http "http://127.0.0.1:$app/health" 30
sleep "$SETTLE"
touch "$dir/stop"; wait "$load"
kill "$new" 2>/dev/null || true
stop_proxy

# ---- (b) nonstop deploy, blue-green ----
cat > "$dir/nonstop.toml" <<EOF
[proxy]
listen = "127.0.0.1:$listen"
admin = "unix:$dir/admin.sock"
[pools.shop]
[services.shop]
strategy = "blue-green"
balancer = { kind = "builtin", pool = "shop" }
runtime = { kind = "process", start = ["$bin/nonstop-hello", "--port", "{port}", "--version", "{version}", "--node", "{node}"] }
releases = { dir = "$dir/shop", keep = 3 }
health = { path = "/health", expect_body = "UP", interval = "100ms", deadline = "30s" }
keep_warm = "0s"
verify = "1s"
[[services.shop.nodes]]
name = "blue"
port = $blue
[[services.shop.nodes]]
name = "green"
port = $green
EOF
start_proxy
echo v1 > "$dir/shop-1.jar"; echo v2 > "$dir/shop-2.jar"
"$bin/nonstop" deploy shop "$dir/shop-1.jar" --version 1 --config "$dir/nonstop.toml" >/dev/null
rm -f "$dir/stop"
python3 "$dir/load.py" "$listen" "$CLIENTS" "$dir/stop" >"$dir/nonstop.json" &
load=$!
sleep "$SETTLE"
"$bin/nonstop" deploy shop "$dir/shop-2.jar" --version 2 --env "HELLO_START_DELAY=$START_DELAY" \
    --config "$dir/nonstop.toml" --json >"$dir/deploy.jsonl"
sleep "$SETTLE"
touch "$dir/stop"; wait "$load"

python3 - "$dir" "$START_DELAY" "$CLIENTS" <<'EOF'
import json, sys
d, delay, clients = sys.argv[1], sys.argv[2], sys.argv[3]
naive = json.load(open(f"{d}/naive.json"))
ours = json.load(open(f"{d}/nonstop.json"))
result = [json.loads(l) for l in open(f"{d}/deploy.jsonl") if '"result"' in l][-1]
switch = result["report"]["switch_ms"] if result.get("report") else "-"
took = result["report"]["duration_ms"] if result.get("report") else "-"
print(f"new release starts in {delay}; {clients} keep-alive clients through `nonstop proxy`\n")
print("| deploy | requests | failed | outage | healthy → all traffic on it | deploy took |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
print(f"| naive: kill, start on the same port | {naive['sent']} | {naive['failed']} | {naive['outage_ms']} ms | – | – |")
print(f"| `nonstop deploy` blue-green | {ours['sent']} | {ours['failed']} | {ours['outage_ms']} ms | {switch} ms | {took} ms |")
EOF
