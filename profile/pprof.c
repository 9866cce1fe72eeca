/*
 * pprof.c: the profile as pprof's profile.proto, gzipped.
 *
 * The message is small enough to encode by hand (varints and length-
 * delimited fields), so there is no protobuf library: protobuf-c would bring
 * a generated file and a dependency for a dozen fields.  The gzip stream uses
 * deflate's stored blocks (no compression, a CRC-32 we compute): every gzip
 * reader takes it, and it needs no zlib and no compressor state; a profile
 * is a few hundred bytes per distinct stack.
 *
 * What goes in, as Go's runtime writes it: sample types alloc_objects/count,
 * alloc_space/bytes, inuse_objects/count, inuse_space/bytes (the default),
 * values already divided by the sampling probability; period_type
 * space/bytes, period = the rate; one mapping per executable mapping of
 * /proc/self/maps with its object's GNU build id, the main executable
 * first; one location per distinct return address (minus one, so that it
 * falls in the call instruction) and no functions: pprof symbolises the
 * addresses from the binaries.
 *
 * Working memory is mapped for the write and unmapped after it: writing a
 * profile does not touch the heap it describes.  sa_prof_lock is held only
 * while the bucket counts are copied.
 */
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../alloc/internal.h"
#include "profile_internal.h"

/* ---- A growable buffer in mapped memory */

struct buf {
    uint8_t *data;
    size_t len, cap;
    bool failed;
};

static bool buf_reserve(struct buf *b, size_t more)
{
    if (b->failed)
        return false;
    if (b->len + more <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64 << 10;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *d = sa_prof_map(cap);
    if (d == NULL) {
        b->failed = true;
        return false;
    }
    if (b->data != NULL) {
        memcpy(d, b->data, b->len);
        sa_prof_unmap(b->data, b->cap);
    }
    b->data = d;
    b->cap = cap;
    return true;
}

static void buf_put(struct buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n)) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}

static void buf_free(struct buf *b)
{
    if (b->data != NULL)
        sa_prof_unmap(b->data, b->cap);
    b->data = NULL;
}

/* ---- Protobuf wire format */

struct msg { /* a small message being built on the stack */
    uint8_t data[2048];
    size_t len;
};

static void msg_varint(struct msg *m, uint64_t v)
{
    while (v >= 0x80 && m->len < sizeof(m->data)) {
        m->data[m->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    if (m->len < sizeof(m->data))
        m->data[m->len++] = (uint8_t)v;
}

static void msg_field(struct msg *m, unsigned field, uint64_t v) /* varint field */
{
    msg_varint(m, (uint64_t)field << 3);
    msg_varint(m, v);
}

static void put_varint(struct buf *b, uint64_t v)
{
    struct msg m = {.len = 0};
    msg_varint(&m, v);
    buf_put(b, m.data, m.len);
}

static void put_bytes(struct buf *b, unsigned field, const void *p, size_t n)
{
    put_varint(b, (uint64_t)field << 3 | 2);
    put_varint(b, n);
    buf_put(b, p, n);
}

static void put_msg(struct buf *b, unsigned field, const struct msg *m)
{
    put_bytes(b, field, m->data, m->len);
}

static void put_field(struct buf *b, unsigned field, uint64_t v)
{
    put_varint(b, (uint64_t)field << 3);
    put_varint(b, v);
}

/* ---- String table: indices handed out in order */

struct strings {
    struct buf enc; /* the string_table fields, encoded as they come */
    int64_t next;
};

static int64_t string_add(struct strings *s, const char *str)
{
    put_bytes(&s->enc, 6, str, strlen(str));
    return s->next++;
}

/* ---- Mappings: the executable mappings of /proc/self/maps */

struct mapping {
    uintptr_t start, limit, offset;
    char path[512];
    char build_id[2 * 64 + 1];
};

struct mappings {
    struct mapping *m;
    size_t n, cap;
};

static bool read_file(const char *path, struct buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    for (;;) {
        if (!buf_reserve(out, 16 << 10))
            break;
        ssize_t r = read(fd, out->data + out->len, out->cap - out->len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        out->len += (size_t)r;
    }
    close(fd);
    if (out->failed)
        return false;
    out->data[out->len] = '\0';
    return true;
}

static uintptr_t parse_hex(const char **p)
{
    uintptr_t v = 0;
    for (;; (*p)++) {
        char c = **p;
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : 16;
        if (d == 16)
            return v;
        v = v << 4 | d;
    }
}

/* "start-limit perms offset dev inode   path" */
static bool parse_maps_line(const char *line, const char *end, struct mapping *out)
{
    const char *p = line;
    out->start = parse_hex(&p);
    if (*p++ != '-')
        return false;
    out->limit = parse_hex(&p);
    if (*p++ != ' ' || end - p < 5 || p[2] != 'x')
        return false;
    p += 5;
    out->offset = parse_hex(&p);
    for (int word = 0; word < 2; word++) { /* skip " dev" and " inode" */
        while (p < end && *p == ' ')
            p++;
        while (p < end && *p != ' ')
            p++;
    }
    while (p < end && *p == ' ')
        p++;
    size_t n = (size_t)(end - p);
    if (n == 0 || *p != '/' || n >= sizeof(out->path))
        return false; /* anonymous, [vdso], or a path we cannot hold */
    memcpy(out->path, p, n);
    out->path[n] = '\0';
    out->build_id[0] = '\0';
    return true;
}

static int add_build_id(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct mappings *ms = arg;
    const char *id = NULL;
    size_t id_len = 0;
    for (unsigned i = 0; i < info->dlpi_phnum && id == NULL; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            const char *name = p + sizeof(*nh);
            const char *desc = name + ((nh->n_namesz + 3) & ~3u);
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && memcmp(name, "GNU", 4) == 0) {
                id = desc;
                id_len = nh->n_descsz;
                break;
            }
            p = desc + ((nh->n_descsz + 3) & ~3u);
        }
    }
    if (id == NULL || id_len > 64)
        return 0;
    for (unsigned i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        for (size_t k = 0; k < ms->n; k++) {
            struct mapping *m = &ms->m[k];
            if (m->start >= (lo & ~(uintptr_t)4095) && m->start < hi) {
                static const char hex[] = "0123456789abcdef";
                for (size_t j = 0; j < id_len; j++) {
                    m->build_id[2 * j] = hex[(uint8_t)id[j] >> 4];
                    m->build_id[2 * j + 1] = hex[(uint8_t)id[j] & 15];
                }
                m->build_id[2 * id_len] = '\0';
            }
        }
    }
    return 0;
}

static bool read_mappings(struct mappings *ms, struct buf *raw)
{
    if (!read_file("/proc/self/maps", raw))
        return false;
    size_t lines = 1;
    for (size_t i = 0; i < raw->len; i++)
        lines += raw->data[i] == '\n';
    ms->cap = lines;
    ms->m = sa_prof_map(lines * sizeof(*ms->m));
    if (ms->m == NULL)
        return false;
    char exe[512];
    ssize_t exe_len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[exe_len > 0 ? exe_len : 0] = '\0';
    const char *p = (const char *)raw->data, *end = p + raw->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        if (ms->n < ms->cap && parse_maps_line(p, eol, &ms->m[ms->n])) {
            /* pprof takes the first mapping for the main binary. */
            if (strcmp(ms->m[ms->n].path, exe) == 0 && ms->n > 0) {
                struct mapping t = ms->m[ms->n];
                memmove(&ms->m[1], &ms->m[0], ms->n * sizeof(*ms->m));
                ms->m[0] = t;
            }
            ms->n++;
        }
        p = eol + 1;
    }
    dl_iterate_phdr(add_build_id, ms);
    return true;
}

static uint64_t mapping_of(const struct mappings *ms, uintptr_t addr)
{
    for (size_t i = 0; i < ms->n; i++)
        if (addr >= ms->m[i].start && addr < ms->m[i].limit)
            return i + 1;
    return 0;
}

/* ---- Locations: one per distinct address, open addressing */

struct loc_table {
    uintptr_t *addr; /* 0 = empty */
    uint64_t *id;
    size_t mask;
    uint64_t next_id;
};

static uint64_t location_id(struct loc_table *t, uintptr_t addr, bool *fresh)
{
    size_t i = (size_t)((addr * 0x9e3779b97f4a7c15ull) >> 20) & t->mask;
    while (t->addr[i] != 0 && t->addr[i] != addr)
        i = (i + 1) & t->mask;
    *fresh = t->addr[i] == 0;
    if (*fresh) {
        t->addr[i] = addr;
        t->id[i] = ++t->next_id;
    }
    return t->id[i];
}

/* ---- The bucket counts, copied under the lock */

struct snap {
    const struct sa_prof_bucket *b; /* depth and pcs never change */
    double alloc_objects, alloc_bytes, free_objects, free_bytes;
};

static struct snap *copy_buckets(size_t *n, size_t *bytes, size_t *total_pcs)
{
    sa_lock_acquire(&sa_prof_lock);
    size_t count = 0, pcs = 0;
    for (const struct sa_prof_bucket *b = sa_prof_buckets; b != NULL; b = b->all_next) {
        count++;
        pcs += b->depth;
    }
    *bytes = (count ? count : 1) * sizeof(struct snap);
    struct snap *s = sa_prof_map(*bytes);
    if (s != NULL) {
        size_t i = 0;
        for (const struct sa_prof_bucket *b = sa_prof_buckets; b != NULL; b = b->all_next)
            s[i++] = (struct snap){b, b->alloc_objects, b->alloc_bytes, b->free_objects,
                                   b->free_bytes};
    }
    sa_lock_release(&sa_prof_lock);
    *n = count;
    *total_pcs = pcs;
    return s;
}

/* ---- Encoding */

static int64_t rounded(double v)
{
    return v < 0.5 ? 0 : (int64_t)llround(v);
}

static void put_value_type(struct buf *b, unsigned field, int64_t type, int64_t unit)
{
    struct msg m = {.len = 0};
    msg_field(&m, 1, (uint64_t)type);
    msg_field(&m, 2, (uint64_t)unit);
    put_msg(b, field, &m);
}

static bool encode(struct buf *out, const struct snap *snaps, size_t n, size_t total_pcs,
                   const struct mappings *ms)
{
    struct strings st = {.next = 0};
    string_add(&st, "");
    int64_t s_alloc_objects = string_add(&st, "alloc_objects");
    int64_t s_count = string_add(&st, "count");
    int64_t s_alloc_space = string_add(&st, "alloc_space");
    int64_t s_bytes = string_add(&st, "bytes");
    int64_t s_inuse_objects = string_add(&st, "inuse_objects");
    int64_t s_inuse_space = string_add(&st, "inuse_space");
    int64_t s_space = string_add(&st, "space");

    put_value_type(out, 1, s_alloc_objects, s_count);
    put_value_type(out, 1, s_alloc_space, s_bytes);
    put_value_type(out, 1, s_inuse_objects, s_count);
    put_value_type(out, 1, s_inuse_space, s_bytes);

    for (size_t i = 0; i < ms->n; i++) {
        const struct mapping *mp = &ms->m[i];
        struct msg m = {.len = 0};
        msg_field(&m, 1, i + 1);
        msg_field(&m, 2, mp->start);
        msg_field(&m, 3, mp->limit);
        msg_field(&m, 4, mp->offset);
        msg_field(&m, 5, (uint64_t)string_add(&st, mp->path));
        if (mp->build_id[0] != '\0')
            msg_field(&m, 6, (uint64_t)string_add(&st, mp->build_id));
        put_msg(out, 3, &m);
    }

    size_t slots = 64;
    while (slots < 2 * total_pcs)
        slots *= 2;
    struct loc_table lt = {.mask = slots - 1};
    lt.addr = sa_prof_map(slots * (sizeof(*lt.addr) + sizeof(*lt.id)));
    if (lt.addr == NULL)
        return false;
    lt.id = (uint64_t *)(lt.addr + slots);

    for (size_t i = 0; i < n; i++) {
        const struct snap *s = &snaps[i];
        struct msg m = {.len = 0};
        struct msg ids = {.len = 0}, vals = {.len = 0};
        for (unsigned f = 0; f < s->b->depth; f++) {
            uintptr_t addr = s->b->pcs[f] - 1; /* inside the call instruction */
            bool fresh;
            uint64_t id = location_id(&lt, addr, &fresh);
            if (fresh) {
                struct msg loc = {.len = 0};
                msg_field(&loc, 1, id);
                msg_field(&loc, 2, mapping_of(ms, addr));
                msg_field(&loc, 3, addr);
                put_msg(out, 4, &loc);
            }
            msg_varint(&ids, id);
        }
        msg_varint(&vals, (uint64_t)rounded(s->alloc_objects));
        msg_varint(&vals, (uint64_t)rounded(s->alloc_bytes));
        msg_varint(&vals, (uint64_t)rounded(s->alloc_objects - s->free_objects));
        msg_varint(&vals, (uint64_t)rounded(s->alloc_bytes - s->free_bytes));
        msg_varint(&m, 1 << 3 | 2); /* location_id, packed */
        msg_varint(&m, ids.len);
        memcpy(m.data + m.len, ids.data, ids.len); /* 64 frames: at most 640 bytes */
        m.len += ids.len;
        msg_varint(&m, 2 << 3 | 2); /* value, packed */
        msg_varint(&m, vals.len);
        memcpy(m.data + m.len, vals.data, vals.len);
        m.len += vals.len;
        put_msg(out, 2, &m);
    }
    sa_prof_unmap(lt.addr, slots * (sizeof(*lt.addr) + sizeof(*lt.id)));

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    put_field(out, 9, (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec);
    put_value_type(out, 11, s_space, s_bytes);
    put_field(out, 12, sa_profile_options.rate ? sa_profile_options.rate : 1);
    put_field(out, 14, (uint64_t)s_inuse_space);
    buf_put(out, st.enc.data, st.enc.len);
    bool ok = !st.enc.failed && !out->failed;
    buf_free(&st.enc);
    return ok;
}

/* ---- gzip with stored deflate blocks */

static uint32_t crc_table[256];
static _Atomic int crc_ready;

static void crc_init(void)
{
    if (atomic_load_explicit(&crc_ready, memory_order_acquire))
        return;
    for (uint32_t i = 0; i < 256; i++) { /* racing writers store the same values */
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        __atomic_store_n(&crc_table[i], c, __ATOMIC_RELAXED);
    }
    atomic_store_explicit(&crc_ready, 1, memory_order_release);
}

static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = __atomic_load_n(&crc_table[(c ^ p[i]) & 0xff], __ATOMIC_RELAXED) ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno;
        if (w == 0)
            return EIO;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int write_gzip(int fd, const uint8_t *data, size_t len)
{
    static const uint8_t header[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    int err = write_all(fd, header, sizeof(header));
    size_t at = 0;
    do {
        size_t n = len - at < 65535 ? len - at : 65535;
        uint8_t block[5] = {at + n == len ? 1 : 0, (uint8_t)n, (uint8_t)(n >> 8),
                            (uint8_t)~n, (uint8_t)(~n >> 8)};
        if (err == 0)
            err = write_all(fd, block, sizeof(block));
        if (err == 0)
            err = write_all(fd, data + at, n);
        at += n;
    } while (err == 0 && at < len);
    uint8_t trailer[8];
    put_le32(trailer, crc32_of(data, len));
    put_le32(trailer + 4, (uint32_t)len);
    return err ? err : write_all(fd, trailer, sizeof(trailer));
}

int sa_pprof_write_fd(int fd)
{
    crc_init();
    size_t n, snap_bytes, total_pcs;
    struct snap *snaps = copy_buckets(&n, &snap_bytes, &total_pcs);
    if (snaps == NULL)
        return ENOMEM;
    struct buf raw = {0}, out = {0};
    struct mappings ms = {0};
    int err = ENOMEM;
    if (read_mappings(&ms, &raw) && encode(&out, snaps, n, total_pcs, &ms))
        err = write_gzip(fd, out.data, out.len);
    buf_free(&raw);
    buf_free(&out);
    if (ms.m != NULL)
        sa_prof_unmap(ms.m, ms.cap * sizeof(*ms.m));
    sa_prof_unmap(snaps, snap_bytes);
    return err;
}
