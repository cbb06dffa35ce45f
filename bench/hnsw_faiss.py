"""The gallery's approximate search (through the Python package: the usearch backend and the
project's own HNSW engine, `--backend hnsw`) against faiss's IndexHNSWFlat with the same graph
degree (M = 16) and construction list (128), inner product, on vectors drawn around cluster
centres so that neighbours exist: build time, and recall@10 against exact search and queries
per second at each search list size ef. Same process, same threads, alternated.

    .venv/bin/python bench/hnsw_faiss.py [--n 200000] [--dim 128] [--queries 10000]
        [--backends usearch,hnsw] [--quantization f32|bf16|f16] [--fashion-mnist MODEL_DIR]

--fashion-mnist: real embeddings instead: a trained bcl model's embeddings of Fashion-MNIST's
60,000 training images are the gallery and of its 10,000 test images the queries (the images
from the Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist).

Prints the CPU's vector extensions, one table and, for recall 0.9 / 0.95 / 0.99, each side's best QPS among the ef values
that reach that recall and their ratio bcl/faiss (blank where a side never reaches it). faiss-cpu is a
benchmark dependency (installed into .venv on first use by bench/search_faiss.sh, or by pip).
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

import bcl  # noqa: E402  (imports torch)
import faiss

EFS = (16, 32, 64, 128, 256, 512)


def data(n, d, nq, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 1), d)).astype(np.float32)
    pick = rng.integers(0, len(centres), n + nq)
    x = centres[pick] + 0.3 * rng.standard_normal((n + nq, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


FMNIST = "/usr/share/datasets/fashion-mnist"


def fashion_mnist(model_dir):
    """(gallery, queries): the model's embeddings of the training and the test images."""
    import gzip
    model = bcl.Model(model_dir)
    def images(name):
        with gzip.open(os.path.join(FMNIST, f"{name}-images-idx3-ubyte.gz")) as f:
            raw = f.read()
        n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)
    emb = lambda name: np.ascontiguousarray(model.embed(images(name)).numpy(), dtype=np.float32)
    return emb("train"), emb("t10k")


def exact(g, q, k):
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), 256):
        sims = q[s : s + 256] @ g.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, 1).argsort(axis=1)[:, ::-1]
        out[s : s + 256] = np.take_along_axis(part, order, 1)
    return out


def settle():
    """Lets the other side's idle workers stop spinning before a timed call: OpenMP's (faiss,
    OpenBLAS) spin-wait after a parallel region and rayon's (bcl) look for work a while before
    sleeping; on 2 cores either steals the next call's CPU (measured: the gallery's QPS at
    ef 16 was 25,000 timed right after a faiss call and 102,000 in a loop of its own)."""
    time.sleep(0.2)


def recall(got, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, truth)]))


def cpu_extensions():
    """The CPU's model name and the vector extensions the figures depend on."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    ext = sorted(f for f in flags if f.startswith("avx512")) + [f for f in ("avx2", "fma") if f in flags]
    return f"{name}; {' '.join(ext) if ext else 'no AVX2/AVX-512'}"


def best_qps(points, target):
    """The highest QPS among (recall, qps) points with recall >= target, or None."""
    ok = [qps for r, qps in points if r >= target]
    return max(ok) if ok else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="usearch,hnsw",
                    help="the gallery backends measured beside faiss, comma-separated "
                         "(usearch, hnsw)")
    ap.add_argument("--quantization", choices=["f32", "bf16", "f16"], default="f32",
                    help="the usearch index's precision (faiss's IndexHNSWFlat and the hnsw "
                         "backend keep float32; recall is measured against exact float32 "
                         "search either way)")
    ap.add_argument("--fashion-mnist", metavar="MODEL_DIR",
                    help="a bcl model's Fashion-MNIST embeddings instead of generated vectors")
    a = ap.parse_args()
    backends = [b for b in a.backends.split(",") if b]
    if not backends or any(b not in ("usearch", "hnsw") for b in backends):
        ap.error(f"--backends: a comma-separated list of usearch and hnsw, got {a.backends!r}")
    threads = os.cpu_count()
    faiss.omp_set_num_threads(threads)
    if a.fashion_mnist:
        g, q = fashion_mnist(a.fashion_mnist)
        a.n, a.dim, a.queries = g.shape[0], g.shape[1], q.shape[0]
    else:
        g, q = data(a.n, a.dim, a.queries)
    truth = exact(g, q, a.k)
    work = tempfile.mkdtemp()
    builds, gals = {}, {}
    try:
        for b in backends:
            settle()
            t0 = time.perf_counter()
            gal = bcl.Gallery.create(os.path.join(work, b), a.dim, backend=b,
                                     quantization=a.quantization if b == "usearch" else "f32")
            gal.add(g, model="bench")
            builds[b] = time.perf_counter() - t0
            gals[b] = gal
        settle()
        t0 = time.perf_counter()
        index = faiss.IndexHNSWFlat(a.dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 128
        index.add(g)
        faiss_build = time.perf_counter() - t0
        rows = []
        for ef in EFS:
            index.hnsw.efSearch = ef
            times = {b: [] for b in backends + ["faiss"]}
            found = {}
            for _ in range(a.repeats):
                for b in backends:
                    gals[b].set_search_expansion(ef)
                    settle()
                    t0 = time.perf_counter()
                    ids, _, _ = gals[b].search(q, k=a.k, exact=False)
                    times[b].append(time.perf_counter() - t0)
                    found[b] = ids.astype(np.int64)
                settle()
                t0 = time.perf_counter()
                _, fi = index.search(q, a.k)
                times["faiss"].append(time.perf_counter() - t0)
                found["faiss"] = fi
            rows.append((ef, {b: (recall(found[b], truth), a.queries / statistics.median(times[b]))
                              for b in times}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = f"Fashion-MNIST embeddings of {a.fashion_mnist}" if a.fashion_mnist else "generated"
    sides = backends + ["faiss"]
    print(f"CPU: {cpu_extensions()}")
    print(f"{what}: {a.n} vectors, d = {a.dim}, {a.queries} queries, k = {a.k}, {threads} threads, "
          f"usearch index in {a.quantization} (float32 kernel {bcl.hnsw_kernel()}); build: "
          + ", ".join(f"{b} {builds[b]:.1f} s" for b in backends)
          + f" (durable writes included), faiss {faiss_build:.1f} s; build ratio faiss/bcl: "
          + ", ".join(f"{b} {faiss_build / builds[b]:.2f}" for b in backends))
    print("| ef | " + " | ".join(f"{s} recall@10 | {s} QPS" for s in sides) + " |")
    print("|---:|" + "---:|---:|" * len(sides))
    for ef, r in rows:
        print(f"| {ef} | " + " | ".join(f"{r[s][0]:.4f} | {r[s][1]:,.0f}" for s in sides) + " |")
    for target in (0.9, 0.95, 0.99):
        f = best_qps([r[1]["faiss"] for r in rows], target)
        parts = []
        for b in backends:
            q_b = best_qps([r[1][b] for r in rows], target)
            ratio = f"{q_b / f:.2f}" if q_b and f else "–"
            parts.append(f"{b} {q_b and round(q_b)} (ratio {ratio})")
        print(f"QPS at recall {target}: faiss {f and round(f)}; " + "; ".join(parts))


if __name__ == "__main__":
    main()
