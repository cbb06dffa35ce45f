# Shared set-up of the serving benchmarks (sourced by serve_load.sh and serve_backfill.sh):
# wrk installed if missing, bcl built as scripts/setup.sh builds it (so the benchmark does not
# replace the binary with one of other features), a work directory and a loopback port cleaned
# up on exit, and a wait for a started server's /health.
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq wrk >/dev/null
fi
# BCL=path runs another build of bcl (say, the previous commit's, to compare in one run).
if [ -z "${BCL:-}" ]; then
  ./scripts/build-cli.sh
  BCL=target/release/bcl
fi
WORK=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Waits up to 10 s for the server on $PORT to answer /health.
wait_health() {
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
}
