#!/usr/bin/env bash
# Every comparison of docs/performance.md in one run, each pair alternated three times inside
# its script (medians): exact search against faiss IndexFlatIP at 10,000 x 100,000 and
# 1,000 x 1,000,000, d = 128 and 512, k = 10 and 100; the gallery's HNSW against faiss
# IndexHNSWFlat (1,000,000 generated vectors; 200,000 with the index in bfloat16; a Fashion-MNIST
# model's 70,000 embeddings); the training step and the embedding pass against PyTorch; an ODPP refresh at
# GLDv2 scale against the compute of a GLDv2 epoch. Prints one table of ratios (bcl over the
# reference as speed: above 1.0 means bcl is faster) and writes it with the date, the machine
# and the command to docs/performance.md. The logs of every script go to bench/logs/ (ignored).
# Usage: bench/all.sh [--quick]   (--quick: the smallest size of each comparison only)
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
./scripts/build-cli.sh
LOGS=bench/logs
mkdir -p "$LOGS"
rm -rf "$LOGS"/*.txt "$LOGS/fmnist-old"
step() { # name, command...
  local name=$1; shift
  echo "== $name: $*" >&2
  "$@" >"$LOGS/$name.txt" 2>&1 || { cat "$LOGS/$name.txt" >&2; exit 1; }
  tail -n 3 "$LOGS/$name.txt" >&2
}
SIZES=("10000 100000 128 10")
[ $QUICK = 1 ] || SIZES+=("10000 100000 128 100" "10000 100000 512 10" "10000 100000 512 100"
                          "1000 1000000 128 10" "1000 1000000 128 100" "1000 1000000 512 10"
                          "1000 1000000 512 100")
for s in "${SIZES[@]}"; do
  read -r nq ng d k <<<"$s"
  step "search-$nq-$ng-d$d-k$k" bench/search_faiss.sh --queries "$nq" --gallery "$ng" --dim "$d" --k "$k"
done
step hnsw-200k .venv/bin/python bench/hnsw_faiss.py --n "$([ $QUICK = 1 ] && echo 20000 || echo 200000)"
step hnsw .venv/bin/python bench/hnsw_faiss.py --n "$([ $QUICK = 1 ] && echo 50000 || echo 1000000)"
# the gallery's index in bfloat16 (half the bytes per distance), recall still against float32
step hnsw-bf16 .venv/bin/python bench/hnsw_faiss.py --n "$([ $QUICK = 1 ] && echo 50000 || echo 200000)" \
  --quantization bf16 --backends usearch
# real embeddings: a default model trained 2 epochs on Fashion-MNIST, its 60,000 + 10,000
step fmnist-model ./target/release/bcl train-old --device cpu --epochs 2 --out "$LOGS/fmnist-old"
step hnsw-fmnist .venv/bin/python bench/hnsw_faiss.py --fashion-mnist "$LOGS/fmnist-old"
step train bench/run.sh
step embed bench/run.sh --embed --batch 256
# the execution settings for GPUs, here on the CPU: both sides under bf16 autocast + NHWC
step train-exec bench/run.sh --autocast bf16 --channels-last
step embed-exec bench/run.sh --embed --batch 256 --autocast bf16 --channels-last
step odpp ./target/release/bcl bench-odpp --classes 81313 --dim 512 --bank-per-class 2 \
  --candidates 63 --steps 50 --epoch-images 1580470
.venv/bin/python - "$LOGS" "$QUICK" <<'PY'
import datetime, glob, json, os, platform, re, subprocess, sys
logs, quick = sys.argv[1], sys.argv[2] == "1"
rows = []  # (comparison, bcl, reference, ratio, target met)
def text(name):
    return open(os.path.join(logs, name + ".txt")).read()
for path in sorted(glob.glob(os.path.join(logs, "search-*.txt"))):
    name = os.path.basename(path)[:-4]
    m = re.search(r"median seconds: bcl ([\d.]+), faiss ([\d.]+), .*top-k agreement ([\d.]+)", text(name))
    b, f, agree = float(m[1]), float(m[2]), float(m[3])
    _, nq, ng, d, k = name.split("-")
    ratio = f / b
    rows.append((f"exact search {int(nq):,} x {int(ng):,}, {d}, {k} (agreement {agree:.4f})",
                 f"{b:.2f} s", f"faiss {f:.2f} s", ratio, ratio >= 1.0 and agree >= 0.9999))
for name, what in (("hnsw-200k", "generated, float32 index"), ("hnsw", "generated, float32 index"),
                   ("hnsw-bf16", "generated, bfloat16 index"),
                   ("hnsw-fmnist", "Fashion-MNIST embeddings, float32 index")):
    n = re.search(r": (\d+) vectors, d = (\d+)", text(name))
    b = re.search(r"build: (.*?) \(durable writes included\), faiss ([\d.]+) s", text(name))
    for backend, secs in re.findall(r"(\w+) ([\d.]+) s", b[1]):
        ratio = float(b[2]) / float(secs)
        rows.append((f"gallery HNSW ({backend}) build, M 16, construction 128 ({what}, {int(n[1]):,} x {n[2]}; durable writes included)",
                     f"{float(secs):.1f} s", f"faiss {float(b[2]):.1f} s", ratio, ratio >= 1.0))
    for m in re.finditer(r"QPS at recall ([\d.]+): faiss (\S+); (.*)", text(name)):
        qps = lambda v: "never reached" if v == "None" else f"{int(v):,} q/s"
        for backend, q, r in re.findall(r"(\w+) (\S+) \(ratio (\S+)\)", m[3]):
            r = None if r == "–" else float(r)
            rows.append((f"gallery HNSW ({backend}) QPS at recall@10 {m[1]} ({what}, {int(n[1]):,} x {n[2]})",
                         qps(q), f"faiss {qps(m[2])}", r, r is not None and r >= 1.0))
for name, what in (("train", "training step (default model, batch 128)"),
                   ("embed", "embedding pass (default model, batch 256)"),
                   ("train-exec", "training step, both under bf16 autocast + channels-last"),
                   ("embed-exec", "embedding pass, both under bf16 autocast + channels-last")):
    m = re.search(r"median images/s: bcl ([\d.]+), pytorch ([\d.]+), ratio bcl/pytorch ([\d.]+)", text(name))
    rows.append((what, f"{float(m[1]):,.0f} img/s", f"PyTorch {float(m[2]):,.0f} img/s",
                 float(m[3]), float(m[3]) >= 1.0))
    s = re.search(r"pytorch with the same malloc settings ([\d.]+), ratio bcl/pytorch-malloc ([\d.]+)", text(name))
    rows.append((f"{what}, PyTorch given bcl's malloc settings", f"{float(m[1]):,.0f} img/s",
                 f"PyTorch {float(s[1]):,.0f} img/s", float(s[2]), float(s[2]) >= 1.0))
o = json.loads([l for l in text("odpp").splitlines() if l.startswith("{")][-1])
share = o["refresh_share_of_epoch"]
rows.append(("ODPP refresh, 81,313 classes, d = 512, 2 per class, 63 candidates (budget 1% of an epoch)",
             f"{o['seconds']:.0f} s", f"epoch {o['epoch_seconds_estimate']:,.0f} s (estimated)",
             None, share <= 0.01))
table = ["| comparison | bcl | reference | speed ratio bcl/ref | target met |", "|---|---|---|---:|:---:|"]
for what, b, ref, ratio, ok in rows:
    table.append(f"| {what} | {b} | {ref} | {'–' if ratio is None else f'{ratio:.2f}'} | {'yes' if ok else 'no'} |")
table.append(f"| (ODPP) refresh as a share of the epoch | {100*share:.2f}% | 1% | – | {'yes' if share <= 0.01 else 'no'} |")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
ext = " ".join(sorted(f for f in set(flags) if f in ("avx2", "fma") or f.startswith("avx512"))) or "none"
kernel = re.search(r"float32 kernel ([\w+]+)", text("hnsw"))
head = (f"Measured {datetime.date.today()} on {os.cpu_count()} cores ({cpu}; vector extensions: {ext}; "
        f"the gallery's float32 kernel: {kernel[1] if kernel else 'unknown'}), "
        f"`bench/all.sh{' --quick' if quick else ''}`; logs of every script in bench/logs/.")
print(head); print(); print("\n".join(table))
doc = "docs/performance.md"
old = open(doc).read() if os.path.exists(doc) else ""
start, end = "<!-- bench/all.sh: begin -->", "<!-- bench/all.sh: end -->"
block = f"{start}\n{head}\n\n" + "\n".join(table) + f"\n{end}"
if start in old:
    new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
else:
    new = "# Performance against the references users would pick\n\n" + block + "\n"
tmp = doc + ".tmp"
open(tmp, "w").write(new)
os.replace(tmp, doc)
print(f"\nwritten to {doc}")
PY
