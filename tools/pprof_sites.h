/*
 * pprof_sites.h: the top live sites of a heap profile written by spanalloc,
 * for spanalloc-top (an ordinary program: it mallocs freely).
 */
#ifndef SPANALLOC_PPROF_SITES_H
#define SPANALLOC_PPROF_SITES_H

#include <stddef.h>
#include <stdint.h>

struct pprof_site {
    char name[160];        /* function (object), or object+0xoffset */
    int64_t inuse_bytes, inuse_objects;
};

/* Read PATH, sum inuse_space and inuse_objects by the function of each
 * sample's innermost frame, and fill the n biggest into sites (biggest
 * first).  Returns how many were filled, or -1 with a reason in err. */
int pprof_top_sites(const char *path, struct pprof_site *sites, int n, int64_t *total_inuse,
                    char *err, size_t errcap);

#endif
