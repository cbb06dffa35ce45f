#!/usr/bin/env bash
# Exact top-k search: `bcl search` (blocked, running top-k) against faiss-cpu's IndexFlatIP on
# the same random L2-normalised vectors, in the same run and with the same threads. Prints both
# JSON lines, the agreement of the returned neighbours and the time ratio.
# Usage: bench/search_faiss.sh [--queries N] [--gallery N] [--dim D] [--k K]
# faiss-cpu is installed into .venv from PyPI on first use (a benchmark dependency only).
set -euo pipefail
cd "$(dirname "$0")/.."
NQ=10000; NG=100000; DIM=128; K=10
while [ $# -gt 0 ]; do
  case "$1" in
    --queries) NQ=$2; shift 2;;
    --gallery) NG=$2; shift 2;;
    --dim) DIM=$2; shift 2;;
    --k) K=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
.venv/bin/python -c 'import faiss, threadpoolctl' 2>/dev/null \
  || .venv/bin/pip install --quiet "faiss-cpu==1.15.1" threadpoolctl
# Which faiss build the import chose (generic, AVX2, AVX-512) and which BLAS it runs with how
# many threads: the figures to compare between machines (faiss's time varied fourfold between
# two machines while bcl's did not).
OMP_NUM_THREADS=$(nproc) .venv/bin/python - <<'PY' >&2
import faiss, threadpoolctl
print("faiss", faiss.__version__, "build:", faiss.get_compile_options())
for lib in threadpoolctl.threadpool_info():
    print("  ", lib.get("internal_api"), lib.get("version"), lib.get("threading_layer", ""),
          "threads", lib.get("num_threads"), lib.get("architecture", ""), lib.get("filepath"))
PY
./scripts/build-cli.sh
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
.venv/bin/python - "$WORK" "$NQ" "$NG" "$DIM" <<'PY'
import sys, numpy as np
w, nq, ng, d = sys.argv[1], *map(int, sys.argv[2:])
rng = np.random.default_rng(0)
for name, n in (("q", nq), ("g", ng)):
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(f"{w}/{name}.npy", x)
PY
THREADS=$(nproc)
for i in 1 2 3; do
  ./target/release/bcl search --query "$WORK/q.npy" --gallery "$WORK/g.npy" --k "$K" --out-indices "$WORK/bcl_i.npy"
  OMP_NUM_THREADS=$THREADS .venv/bin/python - "$WORK" "$K" <<'PY'
import sys, time, json, numpy as np, faiss
w, k = sys.argv[1], int(sys.argv[2])
q, g = np.load(f"{w}/q.npy"), np.load(f"{w}/g.npy")
index = faiss.IndexFlatIP(g.shape[1])
index.add(g)
t0 = time.perf_counter()
_, idx = index.search(q, k)
s = time.perf_counter() - t0
np.save(f"{w}/faiss_i.npy", idx)
print(json.dumps({"impl": "faiss", "queries": q.shape[0], "gallery": g.shape[0], "dim": q.shape[1], "k": k, "seconds": s}))
PY
done | tee /dev/stderr | .venv/bin/python -c '
import json, sys, statistics, numpy as np
rows = [json.loads(l) for l in sys.stdin if l.strip()]
b = statistics.median(r["seconds"] for r in rows if r["impl"] == "bcl")
f = statistics.median(r["seconds"] for r in rows if r["impl"] == "faiss")
w = sys.argv[1]
bi, fi = np.load(f"{w}/bcl_i.npy"), np.load(f"{w}/faiss_i.npy")
same = np.mean([len(set(a) & set(c)) / len(a) for a, c in zip(bi, fi)])
print(f"median seconds: bcl {b:.3f}, faiss {f:.3f}, ratio bcl/faiss {b/f:.2f}; top-k agreement {same:.4f}")
' "$WORK"
