#!/usr/bin/env bash
# Serving while re-embedding: a gallery of the Fashion-MNIST training split (60,000 images)
# embedded by an old model; `bcl serve` with the new model then (1) only serves, (2) serves while
# it backfills the whole gallery with the new model. wrk posts one query image per request
# (the server embeds it); requests/s and latency percentiles of both phases, nothing asserted.
#
#   bench/serve_backfill.sh OLD_MODEL_DIR NEW_MODEL_DIR [--seconds 15] [--connections 8]
#
# Needs wrk (Debian package; installed here if missing), curl, and the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?old model directory}; NEW=${2:?new model directory}; shift 2
SECONDS_=15; CONN=8
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_=$2; shift 2 ;;
    --connections) CONN=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
# shellcheck source=serve_common.sh
. bench/serve_common.sh

# one query image: the first test image, as PNG
.venv/bin/python - "$WORK/q.png" <<'EOF'
import gzip, struct, sys, zlib
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
px = raw[16:16 + 784]
rows = b"".join(b"\x00" + px[r * 28:(r + 1) * 28] for r in range(28))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF
cat > "$WORK/post.lua" <<EOF
local f = io.open("$WORK/q.png", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "image/png"
EOF

t0=$(date +%s.%N)
$BCL gallery build --store "$WORK/g" --model "$OLD" --split train --device cpu >/dev/null
echo "gallery: 60,000 training images embedded by the old model in $(echo "$(date +%s.%N) - $t0" | bc) s"

run_phase() { # label, extra serve flags...
  local label=$1; shift
  $BCL serve --store "$WORK/g" --model "$NEW" --device cpu --addr "127.0.0.1:$PORT" "$@" 2>"$WORK/serve.log" &
  SERVER=$!
  wait_health
  wrk -t2 -c"$CONN" -d"${SECONDS_}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$PORT/search?k=10" \
    | grep -E "Requests/sec|50%|90%|99%|Non-2xx" | sed "s/^/[$label] /"
  curl -fs "http://127.0.0.1:$PORT/stats" | .venv/bin/python -c "import json,sys; s=json.load(sys.stdin); print('[$label] items per model', s['items_per_model'], 'backfill', s['backfill'], 'server errors', s['server_errors'])"
  kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=""
}
run_phase "serving only"
run_phase "serving + backfill" --backfill-fraction 1.0 --backfill-commit 1000
