/* scavenger.h: what the rest of spanalloc (stats, tests) asks the scavenger. */
#ifndef SPANALLOC_SCAVENGER_H
#define SPANALLOC_SCAVENGER_H

#include <stdbool.h>
#include <stdint.h>

/* Run one scavenger cycle now, on the calling thread (tests, and the
 * thread's loop).  Returns the bytes it released. */
uint64_t sa_scavenger_cycle(void);
/* Start the thread in a forked child if the parent had one. */
void sa_scavenger_poke(void);
bool sa_scavenger_running(void);
void sa_scavenger_counters(uint64_t *cycles, uint64_t *forced);

#endif
