/* stats_internal.h: what the scavenger asks the stats module. */
#ifndef SPANALLOC_STATS_INTERNAL_H
#define SPANALLOC_STATS_INTERNAL_H

#include <stdint.h>

/* sys - heap_released, as read_mem_stats would compute it, without taking
 * the cache registry lock (callers may hold an mcentral lock's successor). */
uint64_t sa_stats_limited_bytes(void);

#endif
