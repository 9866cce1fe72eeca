/*
 * profile_sites.c: a program with four allocation sites of known size, for
 * the heap profile's accuracy figures (bench/profile_accuracy.sh):
 *   site_1k     64 MiB live in 1 KiB blocks
 *   site_64b    16 MiB live in 64 B blocks
 *   site_1m    128 MiB live in 1 MiB blocks
 *   site_churn   1 GiB allocated and freed in 256 B blocks
 * Run under spanalloc (LD_PRELOAD); the profile is written with mallctl
 * ("prof.dump"), found with dlsym like the other benchmarks' extras.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

void *keep[(64 << 20) / 1024 + (16 << 20) / 64 + 128];
size_t nkeep;

__attribute__((noinline)) void site_1k(void)
{
    for (int i = 0; i < (64 << 20) / 1024; i++)
        keep[nkeep++] = malloc(1024);
}

__attribute__((noinline)) void site_64b(void)
{
    for (int i = 0; i < (16 << 20) / 64; i++)
        keep[nkeep++] = malloc(64);
}

__attribute__((noinline)) void site_1m(void)
{
    for (int i = 0; i < 128; i++)
        keep[nkeep++] = malloc(1 << 20);
}

__attribute__((noinline)) void site_churn(void)
{
    for (long i = 0; i < (1L << 30) / 256; i++) {
        void *p = malloc(256);
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PROFILE_PATH\n", argv[0]);
        return 2;
    }
    site_1k();
    site_64b();
    site_1m();
    site_churn();
    int (*ctl)(const char *, void *, size_t *, void *, size_t) =
        (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
    if (ctl == NULL) {
        fprintf(stderr, "no mallctl: run under spanalloc\n");
        return 1;
    }
    const char *path = argv[1];
    int err = ctl("prof.dump", NULL, NULL, &path, sizeof(path));
    if (err != 0) {
        fprintf(stderr, "prof.dump: error %d\n", err);
        return 1;
    }
    return 0;
}
