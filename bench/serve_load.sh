#!/usr/bin/env bash
# Load check of `bcl serve` on loopback: a gallery of N random unit vectors (default 100,000,
# d = 128) in the usearch store, recall@10 of its approximate search against exact, then wrk
# (a separate process) posting single-vector /search requests for a bounded time, approximate
# and exact. Prints requests/s and latency percentiles; nothing is asserted.
#
#   bench/serve_load.sh [--n 100000] [--dim 128] [--seconds 20] [--connections 16] [--threads 2]
#
# Needs wrk (Debian package `wrk`; installed here if missing) and the project's .venv (numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
N=100000; DIM=128; SECONDS_=20; CONN=16; THREADS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --dim) DIM=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --connections) CONN=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
# shellcheck source=serve_common.sh
. bench/serve_common.sh

.venv/bin/python - "$WORK" "$N" "$DIM" <<'EOF'
import json, sys, numpy as np
work, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
np.save(f"{work}/gallery.npy", rng.standard_normal((n, dim), dtype=np.float32))
q = rng.standard_normal((64, dim)).astype(np.float32)
for exact in (False, True):
    with open(f"{work}/bodies-{'exact' if exact else 'approx'}.txt", "w") as f:
        for row in q:
            f.write(json.dumps({"vector": [round(float(x), 6) for x in row], "k": 10, "exact": exact}) + "\n")
EOF
cat > "$WORK/post.lua" <<'EOF'
local bodies, i = {}, 0
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
EOF

t0=$(date +%s.%N)
$BCL gallery add --create --name synthetic --store "$WORK/g" --vectors "$WORK/gallery.npy" >/dev/null
t1=$(date +%s.%N)
echo "gallery: $N vectors, d = $DIM, built in $(echo "$t1 - $t0" | bc) s"
for ef in 64 256 1024; do
  $BCL gallery status --store "$WORK/g" --recall-queries 1000 --k 10 --expansion-search $ef \
    | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin)['ann_recall']; print(f\"usearch recall@10 against exact, ef {r['expansion_search']} ({r['queries']} queries near stored vectors): {r['recall']:.4f}\")"
done

run_wrk() { # mode label
  BODIES="$WORK/bodies-$1.txt" wrk -t"$THREADS" -c"$CONN" -d"${SECONDS_}s" --latency \
    -s "$WORK/post.lua" "http://127.0.0.1:$PORT/search" \
    | grep -E "Requests/sec|Latency |50%|90%|99%|requests in|Non-2xx" | sed "s/^/[$2] /"
}
start_server() {
  $BCL serve --store "$WORK/g" --addr "127.0.0.1:$PORT" "$@" 2>"$WORK/serve.log" &
  SERVER=$!
  wait_health
}
stop_server() {
  curl -fs "http://127.0.0.1:$PORT/stats" | .venv/bin/python -c "import json,sys; s=json.load(sys.stdin); print('server: searches', s['searches'], 'client errors', s['client_errors'], 'server errors', s['server_errors'], 'mean search ms %.3f' % s['mean_search_ms'])"
  kill -TERM "$SERVER"; wait "$SERVER" && echo "server stopped gracefully (exit 0)"
  SERVER=""
}
echo "--- wrk -t$THREADS -c$CONN -d${SECONDS_}s, one query vector per POST /search, k = 10"
start_server
run_wrk approx "approximate, ef 64"
run_wrk exact "exact"
stop_server
start_server --expansion-search 256
run_wrk approx "approximate, ef 256"
stop_server
