// The C ABI over PyTorch's c10d (TCPStore + ProcessGroupGloo, ProcessGroupNCCL with the `nccl`
// feature) that src/c10d.rs wraps. Every function catches C++ exceptions and returns their text;
// tensors are tch's `at::Tensor*`.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef BCL_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct BclPg {
  c10::intrusive_ptr<c10d::Store> store;  // prefixed view of the rendezvous store
  c10::intrusive_ptr<c10d::Store> hb;     // a second connection, for the heartbeat thread
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

static char* dup_err(const char* what) {
  size_t n = std::strlen(what);
  char* s = static_cast<char*>(std::malloc(n + 1));
  if (s) std::memcpy(s, what, n + 1);
  return s;
}

#define BCL_TRY(body)                      \
  try {                                    \
    body;                                  \
    return 0;                              \
  } catch (const std::exception& e) {      \
    *err = dup_err(e.what());              \
    return 1;                              \
  } catch (...) {                          \
    *err = dup_err("unknown C++ exception"); \
    return 1;                              \
  }

extern "C" {

void bcl_dist_string_free(char* s) { std::free(s); }

// Joins (or, with is_server, hosts) the TCPStore at host:port and creates the process group.
// backend: 0 = Gloo, 1 = NCCL.
int bcl_dist_new(const char* host, uint16_t port, int is_server, int rank, int world,
                 int64_t timeout_ms, const char* prefix, int backend, BclPg** out, char** err) {
  BCL_TRY({
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<size_t>(world);
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto pg = std::make_unique<BclPg>();
    pg->store = store;
    c10d::TCPStoreOptions hb_opts = opts;
    hb_opts.isServer = false;
    hb_opts.numWorkers = std::nullopt;
    pg->hb = c10::make_intrusive<c10d::PrefixStore>(
        std::string(prefix), c10::make_intrusive<c10d::TCPStore>(std::string(host), hb_opts));
    pg->timeout = std::chrono::milliseconds(timeout_ms);
    if (backend == 1) {
#ifdef BCL_WITH_NCCL
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = pg->timeout;
      pg->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::PrefixStore>("nccl", store)),
          rank, world, o);
#else
      throw std::runtime_error("this build of bcl has no NCCL backend (build with the nccl feature)");
#endif
    } else {
      auto o = c10d::ProcessGroupGloo::Options::create_default(pg->timeout);
      pg->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::PrefixStore>("gloo", store)),
          rank, world, o);
    }
    *out = pg.release();
  })
}

void bcl_dist_free(BclPg* pg) { delete pg; }

int bcl_dist_all_reduce_sum(BclPg* pg, at::Tensor* t, char** err) {
  BCL_TRY({
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = pg->timeout;
    pg->backend->allreduce(ts, o)->wait(pg->timeout);
  })
}

// outs: world tensors of the input's shape and kind, filled in rank order.
int bcl_dist_all_gather(BclPg* pg, at::Tensor* input, at::Tensor** outs, int world, char** err) {
  BCL_TRY({
    std::vector<at::Tensor> in{*input};
    std::vector<at::Tensor> o;
    for (int i = 0; i < world; ++i) o.push_back(*outs[i]);
    std::vector<std::vector<at::Tensor>> out{o};
    c10d::AllgatherOptions opts;
    opts.timeout = pg->timeout;
    pg->backend->allgather(out, in, opts)->wait(pg->timeout);
  })
}

int bcl_dist_broadcast(BclPg* pg, at::Tensor* t, int root, char** err) {
  BCL_TRY({
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = pg->timeout;
    pg->backend->broadcast(ts, o)->wait(pg->timeout);
  })
}

int bcl_dist_barrier(BclPg* pg, char** err) {
  BCL_TRY({
    c10d::BarrierOptions o;
    o.timeout = pg->timeout;
    pg->backend->barrier(o)->wait(pg->timeout);
  })
}

// store.add(key, delta) on the heartbeat connection; the new value goes to *out (delta 0 reads
// a counter).
int bcl_dist_store_add(BclPg* pg, const char* key, int64_t delta, int64_t* out, char** err) {
  BCL_TRY({ *out = pg->hb->add(std::string(key), delta); })
}

}  // extern "C"
