// wrapper.cc: registers the micro-benchmarks and runs them.  Nothing is
// measured here: every benchmark iteration is one call into bodies.c (C),
// which does the whole inner loop.  Each benchmark sets the counter "ops"
// (operations per iteration), so time per operation = real_time / ops.
#include <benchmark/benchmark.h>

#include <string>

#include "bodies.h"

namespace {

void set_ops(benchmark::State &st, double ops) {
  st.counters["ops"] = ops;
  st.SetItemsProcessed(static_cast<int64_t>(st.iterations() * ops));
}

std::string size_name(size_t s) {
  if (s >= (1u << 20) && s % (1u << 20) == 0) return std::to_string(s >> 20) + "MiB";
  if (s >= 1024 && s % 1024 == 0) return std::to_string(s >> 10) + "KiB";
  return std::to_string(s) + "B";
}

void register_all() {
  const size_t pair_sizes[] = {16,   32,    64,    128,   256,        512,
                               1024, 4096, 16384, 32768, 65536, 1u << 20};
  for (size_t size : pair_sizes) {
    benchmark::RegisterBenchmark(("pair/" + size_name(size)).c_str(),
                                 [size](benchmark::State &st) {
                                   const size_t n = 256;
                                   for (auto _ : st) mb_pair(size, n);
                                   set_ops(st, n);
                                 })
        ->UseRealTime();
  }

  struct Batch {
    const char *name;
    size_t lo, hi, step, n;
    int fifo;
  };
  const Batch batches[] = {
      {"batch1000/64B/lifo", 64, 64, 0, 1000, 0},
      {"batch1000/64B/fifo", 64, 64, 0, 1000, 1},
      {"batch1000/16-256B/lifo", 16, 256, 16, 1000, 0},
      {"batch1000/16-256B/fifo", 16, 256, 16, 1000, 1},
      {"live64/16-256B/lifo", 16, 256, 16, 64, 0},
  };
  for (const Batch &b : batches) {
    benchmark::RegisterBenchmark(b.name, [b](benchmark::State &st) {
      for (auto _ : st) mb_batch(b.lo, b.hi, b.step, b.n, b.fifo);
      set_ops(st, static_cast<double>(b.n));
    })->UseRealTime();
  }

  benchmark::RegisterBenchmark("realloc_grow/16B-1MiB(chain)", [](benchmark::State &st) {
    for (auto _ : st) mb_realloc_grow(16, 1u << 20);
    set_ops(st, 1);
  })->UseRealTime();

  const size_t xt_sizes[] = {64, 1024};
  for (size_t size : xt_sizes) {
    benchmark::RegisterBenchmark(("xthread_free/" + size_name(size)).c_str(),
                                 [size](benchmark::State &st) {
                                   const size_t batch = 1000;
                                   if (mb_xthread_start(size, batch) != 0) {
                                     st.SkipWithError("pthread_create failed");
                                     return;
                                   }
                                   for (auto _ : st) mb_xthread_batch();
                                   mb_xthread_stop();
                                   set_ops(st, batch);
                                 })
        ->UseRealTime();
  }

  if (!mb_has_spanalloc_api()) return;

  struct Idle {
    size_t mib;
    int iters;
  };
  const Idle idles[] = {{1, 200}, {16, 40}, {128, 6}, {512, 3}};
  for (const Idle &idle : idles) {
    const size_t bytes = idle.mib << 20;
    benchmark::RegisterBenchmark(("free_os_memory/idle:" + std::to_string(idle.mib) + "MiB").c_str(),
                                 [bytes](benchmark::State &st) {
                                   for (auto _ : st) {
                                     double s = mb_free_os_memory_idle(bytes);
                                     if (s < 0) {
                                       st.SkipWithError("mmap failed");
                                       return;
                                     }
                                     st.SetIterationTime(s);
                                   }
                                   set_ops(st, 1);
                                 })
        ->UseManualTime()
        ->Iterations(idle.iters)
        ->Unit(benchmark::kMicrosecond);
  }

  const unsigned thread_counts[] = {1, 4, 16, 64};
  for (unsigned n : thread_counts) {
    benchmark::RegisterBenchmark(("read_mem_stats/threads:" + std::to_string(n)).c_str(),
                                 [n](benchmark::State &st) {
                                   if (mb_park_threads(n) != 0) {
                                     mb_unpark_threads();
                                     st.SkipWithError("pthread_create failed");
                                     return;
                                   }
                                   for (auto _ : st) mb_read_mem_stats();
                                   mb_unpark_threads();
                                   set_ops(st, 1);
                                 })
        ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char **argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("bodies", mb_variant());
  benchmark::AddCustomContext("malloc_from", mb_malloc_provider());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
