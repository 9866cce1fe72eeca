/*
 * bodies.h: the micro-benchmark bodies, in C, called by wrapper.cc.
 *
 * bodies.c is compiled twice: without USE_LIBC its calls go to the prefixed
 * API (spanalloc_malloc, ...), so the binary measures spanalloc beside
 * whatever malloc the process has; with -DUSE_LIBC they go to plain
 * malloc/free, and the binary measures whichever allocator LD_PRELOAD puts
 * in front of glibc.  Every body does its whole inner loop in C, so the C++
 * side only pays one call per benchmark iteration.
 */
#ifndef MB_BODIES_H
#define MB_BODIES_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "spanalloc-api" or "libc". */
const char *mb_variant(void);
/* The file of the shared object whose malloc the process calls. */
const char *mb_malloc_provider(void);
/* 1 if free_os_memory/read_mem_stats can be called (the spanalloc build). */
int mb_has_spanalloc_api(void);

/* n malloc(size)/free pairs; the first byte of each block is written. */
void mb_pair(size_t size, size_t n);
/* Allocate n blocks (sizes lo, lo+step, ..., hi, cycling), then free them
 * in reverse (fifo == 0) or allocation order (fifo != 0).  n <= MB_MAX_BATCH. */
#define MB_MAX_BATCH 4096
void mb_batch(size_t lo, size_t hi, size_t step, size_t n, int fifo);
/* malloc(from), then realloc by doubling up to `to`, writing the new last
 * byte each step, then free.  Returns the number of realloc calls. */
size_t mb_realloc_grow(size_t from, size_t to);

/* Cross-thread free: the calling thread allocates batches of `batch`
 * blocks of `size` bytes and hands them through a ring to a second thread,
 * which frees them. */
int mb_xthread_start(size_t size, size_t batch);
void mb_xthread_batch(void);   /* allocate and hand over one batch */
void mb_xthread_stop(void);    /* drain, join */

/* spanalloc only (return -1 / do nothing in the libc build).
 * Build an idle heap of idle_bytes (half 1 MiB blocks, half 1 KiB blocks,
 * allocated, touched, freed), then time one free_os_memory(): seconds. */
double mb_free_os_memory_idle(size_t idle_bytes);
/* Start n threads that each allocate one block and wait on a condvar. */
int mb_park_threads(unsigned n);
void mb_read_mem_stats(void);
void mb_unpark_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* MB_BODIES_H */
