/*
 * chunk.c: the one allocator for metadata records.  Span records (span.c)
 * and the fallback caches' records and slabs (mcache.c) are cut from chunks
 * mapped for metadata only, so that no write into user memory can reach
 * them.  Chunks are never unmapped: the page map may still point at a
 * recycled record, and a reader following a stale pointer must find mapped
 * memory.  Each caller recycles its own records and holds its own lock over
 * its struct sa_chunk.
 */
#include "internal.h"

bool sa_chunk_reserve(struct sa_chunk *c, size_t size, size_t chunk_bytes)
{
    if (c->cursor != NULL && c->cursor + size <= c->end)
        return true;
    char *chunk = sa_os_map(chunk_bytes, 0);
    if (chunk == NULL)
        return false;
    c->cursor = chunk; /* the rest of the old chunk is left unused */
    c->end = chunk + chunk_bytes;
    c->mapped += chunk_bytes;
    return true;
}
