/*
 * pprof_sites.c: read back a heap profile spanalloc wrote (profile/pprof.c):
 * gzip of stored deflate blocks around profile.proto.  A profile that some
 * other tool recompressed is refused with a hint to use go tool pprof.
 *
 * Sites are named from the ELF symbol tables of the mapped files (.symtab,
 * else .dynsym), the way a stripped Debian binary still names its exported
 * functions; an address no symbol covers is shown as object+0xoffset.
 */
#include <elf.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pprof_sites.h"

struct bytes {
    const uint8_t *p;
    size_t n;
};

static bool read_all(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return false;
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    for (size_t r; b != NULL && (r = fread(b + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) {
            uint8_t *nb = realloc(b, cap *= 2);
            if (nb == NULL)
                free(b);
            b = nb;
        }
    }
    fclose(f);
    *out = b;
    *len = n;
    return b != NULL;
}

/* The payload of a gzip member made of stored blocks, in place. */
static bool gunzip_stored(uint8_t *g, size_t n, struct bytes *out, const char **why)
{
    *why = "not a gzip file";
    if (n < 18 || g[0] != 0x1f || g[1] != 0x8b || g[2] != 8)
        return false;
    size_t at = 10;
    uint8_t flg = g[3];
    if (flg & 4)
        at += 2 + (size_t)(g[at] | g[at + 1] << 8);
    for (int bit = 8; bit <= 16; bit <<= 1) /* FNAME, FCOMMENT */
        if (flg & bit)
            while (at < n && g[at++] != 0)
                ;
    if (flg & 2)
        at += 2;
    size_t w = 0;
    for (bool last = false; !last;) {
        if (at + 5 > n)
            return false;
        last = g[at] & 1;
        if ((g[at] >> 1 & 3) != 0) {
            *why = "compressed profile (not as spanalloc wrote it): read it with go tool pprof";
            return false;
        }
        size_t len = (size_t)(g[at + 1] | g[at + 2] << 8);
        at += 5;
        if (at + len > n)
            return false;
        memmove(g + w, g + at, len);
        w += len;
        at += len;
    }
    out->p = g;
    out->n = w;
    return true;
}

/* ---- protobuf */

static bool varint(struct bytes *b, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; b->n > 0 && shift < 64; shift += 7) {
        uint8_t c = *b->p++;
        b->n--;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return true;
    }
    return false;
}

/* Next field: its number and wire type; for LEN, sub is its bytes; for
 * VARINT, v is its value. */
static bool field(struct bytes *b, unsigned *num, struct bytes *sub, uint64_t *v)
{
    uint64_t key;
    if (b->n == 0 || !varint(b, &key))
        return false;
    *num = (unsigned)(key >> 3);
    switch (key & 7) {
    case 0:
        return varint(b, v);
    case 2:
        if (!varint(b, v) || *v > b->n)
            return false;
        sub->p = b->p;
        sub->n = (size_t)*v;
        b->p += *v;
        b->n -= (size_t)*v;
        return true;
    case 1:
        if (b->n < 8)
            return false;
        b->p += 8, b->n -= 8;
        return true;
    case 5:
        if (b->n < 4)
            return false;
        b->p += 4, b->n -= 4;
        return true;
    }
    return false;
}

/* The varint fields 1..count of a message, into out[0..count) (others are
 * skipped; a field absent stays 0). */
static void varint_fields(struct bytes msg, uint64_t *out, unsigned count)
{
    unsigned num;
    uint64_t v;
    memset(out, 0, count * sizeof(*out));
    while (msg.n > 0 && field(&msg, &num, &(struct bytes){0}, &v))
        if (num >= 1 && num <= count)
            out[num - 1] = v;
}

struct mapping { uint64_t id, start, limit, offset, file; };
struct location { uint64_t id, mapping, address; };
struct sample { uint64_t leaf; int64_t objects, bytes; };

#define GROW(arr, n, cap) \
    do { \
        if ((n) == (cap)) { \
            (cap) = (cap) ? 2 * (cap) : 64; \
            void *g_ = realloc((arr), (cap) * sizeof(*(arr))); \
            if (g_ == NULL) \
                goto oom; \
            (arr) = g_; \
        } \
    } while (0)

/* ---- Naming an address from the file's symbol table */

static void name_address(const char *file, uint64_t file_off, char *out, size_t cap)
{
    const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
    snprintf(out, cap, "%.60s+0x%llx", base, (unsigned long long)file_off);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
        if (fd >= 0)
            close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    const uint8_t *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_phoff + (size_t)eh->e_phnum * sizeof(Elf64_Phdr) > size ||
        eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) > size)
        goto done;
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(m + eh->e_phoff);
    uint64_t vaddr = 0;
    bool found = false;
    for (unsigned i = 0; i < eh->e_phnum && !found; i++)
        if (ph[i].p_type == PT_LOAD && file_off >= ph[i].p_offset &&
            file_off < ph[i].p_offset + ph[i].p_filesz) {
            vaddr = file_off - ph[i].p_offset + ph[i].p_vaddr;
            found = true;
        }
    if (!found)
        goto done;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(m + eh->e_shoff);
    for (unsigned want = SHT_SYMTAB; ; want = SHT_DYNSYM) {
        for (unsigned i = 0; i < eh->e_shnum; i++) {
            if (sh[i].sh_type != want || sh[i].sh_link >= eh->e_shnum ||
                sh[i].sh_offset + sh[i].sh_size > size)
                continue;
            const Elf64_Shdr *strs = &sh[sh[i].sh_link];
            const Elf64_Sym *sym = (const Elf64_Sym *)(m + sh[i].sh_offset);
            size_t count = sh[i].sh_size / sizeof(*sym);
            for (size_t k = 0; k < count; k++) {
                if (ELF64_ST_TYPE(sym[k].st_info) != STT_FUNC || sym[k].st_name >= strs->sh_size ||
                    vaddr < sym[k].st_value || vaddr >= sym[k].st_value + sym[k].st_size)
                    continue;
                snprintf(out, cap, "%.90s (%.60s)", (const char *)m + strs->sh_offset + sym[k].st_name,
                         base);
                goto done;
            }
        }
        if (want == SHT_DYNSYM)
            break;
    }
done:
    munmap((void *)m, size);
}

static int by_bytes(const void *a, const void *b)
{
    const struct pprof_site *x = a, *y = b;
    return x->inuse_bytes < y->inuse_bytes ? 1 : x->inuse_bytes > y->inuse_bytes ? -1 : 0;
}

int pprof_top_sites(const char *path, struct pprof_site *sites, int n, int64_t *total_inuse,
                    char *err, size_t errcap)
{
    uint8_t *raw = NULL;
    size_t len;
    struct bytes prof;
    const char *why = "cannot read";
    struct bytes *strs = NULL;
    struct mapping *maps = NULL;
    struct location *locs = NULL;
    struct sample *samples = NULL;
    struct pprof_site *all = NULL;
    size_t ns = 0, cs = 0, nm = 0, cm = 0, nl = 0, cl = 0, nsm = 0, csm = 0, nall = 0, call = 0;
    int result = -1;
    if (!read_all(path, &raw, &len) || !gunzip_stored(raw, len, &prof, &why))
        goto fail;
    unsigned num;
    struct bytes sub;
    uint64_t v;
    why = "malformed profile";
    while (prof.n > 0) {
        if (!field(&prof, &num, &sub, &v))
            goto fail;
        if (num == 6) {
            GROW(strs, ns, cs);
            strs[ns++] = sub;
        } else if (num == 3) {
            GROW(maps, nm, cm);
            uint64_t f[5]; /* Mapping: id, memory_start, memory_limit, file_offset, filename */
            varint_fields(sub, f, 5);
            maps[nm++] = (struct mapping){f[0], f[1], f[2], f[3], f[4]};
        } else if (num == 4) {
            GROW(locs, nl, cl);
            uint64_t f[3]; /* Location: id, mapping_id, address */
            varint_fields(sub, f, 3);
            locs[nl++] = (struct location){f[0], f[1], f[2]};
        } else if (num == 2) {
            GROW(samples, nsm, csm);
            struct sample s = {0};
            struct bytes packed;
            while (sub.n > 0 && field(&sub, &num, &packed, &v)) {
                if (num == 1 && s.leaf == 0) { /* packed location ids: the first */
                    uint64_t id;
                    if (varint(&packed, &id))
                        s.leaf = id;
                } else if (num == 2) { /* packed values: the 3rd and 4th */
                    uint64_t vals[4] = {0};
                    for (int i = 0; i < 4 && varint(&packed, &vals[i]); i++)
                        ;
                    s.objects = (int64_t)vals[2];
                    s.bytes = (int64_t)vals[3];
                }
            }
            samples[nsm++] = s;
        }
    }
    *total_inuse = 0;
    for (size_t i = 0; i < nsm; i++) {
        *total_inuse += samples[i].bytes;
        if (samples[i].bytes <= 0)
            continue;
        char name[160] = "(no stack)";
        for (size_t k = 0; k < nl; k++) {
            if (locs[k].id != samples[i].leaf)
                continue;
            snprintf(name, sizeof(name), "0x%llx", (unsigned long long)locs[k].address);
            for (size_t j = 0; j < nm; j++)
                if (maps[j].id == locs[k].mapping && maps[j].file < ns) {
                    char file[512];
                    size_t fl = strs[maps[j].file].n < sizeof(file) - 1 ? strs[maps[j].file].n
                                                                        : sizeof(file) - 1;
                    memcpy(file, strs[maps[j].file].p, fl);
                    file[fl] = '\0';
                    name_address(file, locs[k].address - maps[j].start + maps[j].offset, name,
                                 sizeof(name));
                }
            break;
        }
        size_t a = 0;
        while (a < nall && strcmp(all[a].name, name) != 0)
            a++;
        if (a == nall) {
            GROW(all, nall, call);
            memset(&all[nall], 0, sizeof(all[nall]));
            memcpy(all[nall].name, name, sizeof(name));
            nall++;
        }
        all[a].inuse_bytes += samples[i].bytes;
        all[a].inuse_objects += samples[i].objects;
    }
    qsort(all, nall, sizeof(*all), by_bytes);
    result = (int)(nall < (size_t)n ? nall : (size_t)n);
    memcpy(sites, all, (size_t)result * sizeof(*sites));
    goto out;
oom:
    why = "out of memory";
fail:
    snprintf(err, errcap, "%s: %s", path, why);
out:
    free(raw);
    free(strs);
    free(maps);
    free(locs);
    free(samples);
    free(all);
    return result;
}
