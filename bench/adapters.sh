#!/usr/bin/env bash
# What an adapter costs at query time, beside the exact search it precedes: each kind fitted on
# 10,000 generated pairs (old vectors, new = old rotated plus noise, unit length; d_old = d_new
# = D), then `bcl adapt apply` on Q query vectors (slerp also reads their old embeddings;
# forward maps gallery vectors, the cost of `bcl gallery upgrade` per stored vector) and
# `bcl search` of the same Q queries in a G-vector gallery, both timed by bcl itself, each
# three times (medians). Prints microseconds per query for each, and the adapter's share of
# the search time. The CPU's vector extensions are printed first.
# Usage: bench/adapters.sh [--queries Q] [--gallery G] [--dim D]
set -euo pipefail
cd "$(dirname "$0")/.."
NQ=10000; NG=100000; DIM=128
while [ $# -gt 0 ]; do
  case "$1" in
    --queries) NQ=$2; shift 2;;
    --gallery) NG=$2; shift 2;;
    --dim) DIM=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); vector extensions: $(grep -o 'avx512[a-z_0-9]*\|avx2' /proc/cpuinfo | sort -u | xargs)" >&2
./scripts/build-cli.sh
B=./target/release/bcl
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
.venv/bin/python - "$WORK" "$NQ" "$NG" "$DIM" <<'PY'
import sys, numpy as np
w, nq, ng, d = sys.argv[1], *map(int, sys.argv[2:])
rng = np.random.default_rng(0)
unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
q, _ = np.linalg.qr(rng.standard_normal((d, d)))
def pair(n):
    u = unit(rng.standard_normal((n, d)))
    v = unit(u @ q + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d))
    return u, v
u, v = pair(10000)
np.save(f"{w}/su.npy", u); np.save(f"{w}/sv.npy", v)
qu, qv = pair(nq)
np.save(f"{w}/qu.npy", qu); np.save(f"{w}/qv.npy", qv)
np.save(f"{w}/g.npy", unit(rng.standard_normal((ng, d))))
PY
printf '[forward]\ninner_dim = 512\nepochs = 5\nwarmup_epochs = 1\n[affine]\nepochs = 5\n' > "$WORK/fit.toml"
for kind in procrustes slerp affine forward; do
  extra=(); [ "$kind" = slerp ] && extra=(--alpha 0.5)
  $B adapt fit --kind "$kind" --device cpu --old-vectors "$WORK/su.npy" --new-vectors "$WORK/sv.npy" \
    --settings "$WORK/fit.toml" "${extra[@]}" --out "$WORK/$kind" > /dev/null
done
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
seconds() { .venv/bin/python -c 'import json,sys; print(json.loads(sys.stdin.read())["seconds"])'; }
search=$(for i in 1 2 3; do
  $B search --query "$WORK/qv.npy" --gallery "$WORK/g.npy" --k 10 2>/dev/null | seconds
done | median)
printf '| step | µs per query | share of the exact search |\n|---|---:|---:|\n'
printf '| exact search, %s queries × %s gallery, d = %s, k = 10 | %.2f | 1.00 |\n' "$NQ" "$NG" "$DIM" \
  "$(.venv/bin/python -c "print($search / $NQ * 1e6)")"
for kind in procrustes slerp affine forward; do
  extra=()
  [ "$kind" = slerp ] && extra=(--old-query "$WORK/qu.npy")
  input="$WORK/qv.npy"; [ "$kind" = forward ] && input="$WORK/qu.npy"
  s=$(for i in 1 2 3; do
    $B adapt apply --adapter "$WORK/$kind" --input "$input" "${extra[@]}" --out "$WORK/out.npy" | seconds
  done | median)
  printf '| %s apply | %.2f | %.3f |\n' "$kind" \
    "$(.venv/bin/python -c "print($s / $NQ * 1e6)")" "$(.venv/bin/python -c "print($s / $search)")"
done
