/* profile_chain.h: test_profile's known call chains (profile_chain.c). */
#ifndef SPANALLOC_PROFILE_CHAIN_H
#define SPANALLOC_PROFILE_CHAIN_H

typedef int (*chain_leaf_fn)(void *arg);

#define CHAIN_LEVELS 6
/* chain_ra[i]: the return address the function at level i was called with
 * (0 chain_leaf_call ... 4 chain_run; 5 chain_qsort). */
extern void *chain_ra[CHAIN_LEVELS];

/* chain_run -> chain_big -> chain_vla -> chain_pressure -> chain_leaf_call -> leaf */
int chain_run(chain_leaf_fn leaf, void *arg);
/* n frames of chain_recurse, then leaf */
int chain_recurse(int n, chain_leaf_fn leaf, void *arg);
/* chain_qsort -> qsort (libc) -> ... -> comparator -> leaf, once */
int chain_qsort(chain_leaf_fn leaf, void *arg);

#endif
