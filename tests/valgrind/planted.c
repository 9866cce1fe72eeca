/* A program with one planted leak and one planted use-after-free, linked with
 * libspanalloc.so: memcheck must report both when spanalloc serves it. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static void plant_leak(void)
{
    char *leak = malloc(100);
    memset(leak, 1, 100);
    __asm__ volatile("" : : "r"(leak) : "memory");
}

__attribute__((noinline)) static int plant_use_after_free(void)
{
    char *p = malloc(64);
    strcpy(p, "hello");
    free(p);
    return ((volatile char *)p)[1];
}

/* Overwrite the registers and stack slots a copy of the leaked pointer may
 * linger in, so memcheck's scan sees the leak for what it is. */
__attribute__((noinline)) static void scrub(void)
{
    for (int i = 0; i < 100; i++) {
        char *q = malloc((size_t)i + 1);
        memset(q, 0, (size_t)i + 1);
        free(q);
    }
}

int main(void)
{
    /* The heap's very first block sits at the start of its first mapping,
     * which the kernel may place right after ld.so's own allocator area:
     * ld.so's `alloc_end` then holds that address and memcheck counts the
     * block as reachable.  Take that block for something that lives. */
    void *first = malloc(100);
    plant_leak();
    scrub();
    int c = plant_use_after_free();
    void *q = malloc(100);
    /* Proof that spanalloc, not valgrind's allocator, served the program. */
    printf("usable size of a 100-byte block: %zu\n", malloc_usable_size(q));
    free(q);
    free(first);
    return c == 0x7f ? 1 : 0;
}
