/*
 * options.c: the SPANALLOC_* environment variables, read once at start-up.
 *
 * One table names every variable, the field it sets and how its value is
 * parsed; one loop reads them in the table's order (the order of the
 * warnings).  They are read at load time, by the thread that initialises:
 * some servers (nginx) clear the environment of their workers later.
 * Nothing here allocates (the allocator is not ready yet).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "internal.h"
#include "profile.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define STATS_INTERVAL_DEFAULT_NS (10 * NS_PER_S)

/* Written by the initialising thread before sa_init_state becomes 2, and
 * by tests before they start threads; read without a lock afterwards
 * (memory_limit is read once, into the scavenger's own atomic). */
struct sa_options sa_options = {
    .scavenge_idle_ns = 5 * 60 * NS_PER_S,
    /* Idle memory beyond 10% of the heap in use (at least 4 MiB) goes back
     * once idle for 150 ms: a churning heap's fragments do not wait for the
     * age rule, memory reused within the delay never pays a fault
     * (docs/tuning.md, docs/benchmarks.md). */
    .idle_limit_pct = 10,
    .idle_delay_ns = 150 * NS_PER_MS,
    .scavenger_enabled = true,
    .percpu = true,
    .stats_at_exit = -1,
    .stats_interval_ns = STATS_INTERVAL_DEFAULT_NS,
};

/* "250ms", "2s", "5m", "1h"; a bare number means seconds. */
bool sa_parse_duration(const char *s, uint64_t *ns)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t unit;
    if (strcmp(end, "ms") == 0)
        unit = NS_PER_MS;
    else if (strcmp(end, "s") == 0 || *end == '\0')
        unit = NS_PER_S;
    else if (strcmp(end, "m") == 0)
        unit = 60 * NS_PER_S;
    else if (strcmp(end, "h") == 0)
        unit = 3600 * NS_PER_S;
    else
        return false;
    if (v > UINT64_MAX / unit)
        return false;
    *ns = v * unit;
    return true;
}

/* SPANALLOC_IDLE_LIMIT's form: "N%" with N from 0 to 1000, or "off" or "0"
 * (both 0: off).  A bare number other than 0 is refused: "10" might mean a
 * fraction or bytes. */
bool sa_parse_percent(const char *s, uint32_t *pct)
{
    if (strcmp(s, "off") == 0 || strcmp(s, "0") == 0) {
        *pct = 0;
        return true;
    }
    uint32_t v = 0;
    const char *c = s;
    for (; *c >= '0' && *c <= '9'; c++) {
        v = v * 10 + (uint32_t)(*c - '0');
        if (v > 1000)
            return false;
    }
    if (c == s || c[0] != '%' || c[1] != '\0')
        return false;
    *pct = v;
    return true;
}

/* "512M", "2G", "64K", "4096"; binary units. */
bool sa_parse_bytes(const char *s, uint64_t *bytes)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: return false;
    }
    if (*end == 'i' || *end == 'B')
        end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return false;
    *bytes = (uint64_t)v << shift;
    return true;
}

/* A bad value asks for output: say so on stderr, keep the default. */
static void warn_option(const char *name, const char *value)
{
    const char *parts[] = {"spanalloc: ignoring ", name, "=", value,
                           " (see docs/tuning.md)\n"};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        ssize_t ignored = write(STDERR_FILENO, parts[i], strlen(parts[i]));
        (void)ignored;
    }
}

/* Every SPANALLOC_* variable is read through here.  In a secure-execution
 * process (setuid, setgid, file capabilities: AT_SECURE) the environment
 * belongs to a less privileged user, so secure_getenv() hides it: every
 * option keeps its default, and in particular the ones that write files
 * (SPANALLOC_STATS_FILE) or print (SPANALLOC_STATS, SPANALLOC_TRACE, and the
 * warning about a bad value) cannot be used to make the program write where
 * its user could not.  Written once, by the initialising thread. */
bool sa_secure_exec;

enum option_kind {
    OPT_DURATION,          /* sa_parse_duration into a uint64_t */
    OPT_INTERVAL,          /* a duration above 0; a bad one restores the default */
    OPT_BYTES,             /* sa_parse_bytes into a uint64_t */
    OPT_BYTES_OR_OFF,      /* the same, or "off" (0) */
    OPT_PERCENT,           /* sa_parse_percent into a uint32_t */
    OPT_SWITCH,            /* bool: "on"/"1" true, "off"/"0" false */
    OPT_FLAG,              /* bool: true unless "" or "0"; never warns */
    OPT_PATH,              /* a non-empty path into char[size] */
    OPT_MADVISE,           /* "free" sets the bool, "dontneed" keeps it */
    OPT_STATS_FORMAT,      /* "text"/"1", "json"; "" and "0": none */
};

struct option {
    const char *name;
    enum option_kind kind;
    void *field;
    size_t size;           /* OPT_PATH: the field's size */
};

/* In the order they are read (and warned about). */
static const struct option options[] = {
    {"SPANALLOC_PROFILE_RATE", OPT_BYTES_OR_OFF, &sa_profile_options.rate, 0},
    {"SPANALLOC_PROFILE_FILE", OPT_PATH, sa_profile_options.file, sizeof(sa_profile_options.file)},
    {"SPANALLOC_PROFILE_INTERVAL", OPT_DURATION, &sa_profile_options.interval_ns, 0},
    {"SPANALLOC_PROFILE_LEAKS", OPT_FLAG, &sa_profile_options.leaks, 0},
    {"SPANALLOC_SCAVENGE_IDLE", OPT_DURATION, &sa_options.scavenge_idle_ns, 0},
    {"SPANALLOC_MEMORY_LIMIT", OPT_BYTES, &sa_options.memory_limit, 0},
    {"SPANALLOC_IDLE_LIMIT", OPT_PERCENT, &sa_options.idle_limit_pct, 0},
    {"SPANALLOC_IDLE_DELAY", OPT_DURATION, &sa_options.idle_delay_ns, 0},
    {"SPANALLOC_MADVISE", OPT_MADVISE, &sa_options.madvise_free, 0},
    {"SPANALLOC_SCAVENGER", OPT_SWITCH, &sa_options.scavenger_enabled, 0},
    {"SPANALLOC_PERCPU", OPT_SWITCH, &sa_options.percpu, 0},
    {"SPANALLOC_TRACE", OPT_FLAG, &sa_options.trace, 0},
    {"SPANALLOC_STATS_FILE", OPT_PATH, sa_options.stats_file, sizeof(sa_options.stats_file)},
    {"SPANALLOC_STATS_INTERVAL", OPT_INTERVAL, &sa_options.stats_interval_ns, 0},
    {"SPANALLOC_STATS", OPT_STATS_FORMAT, &sa_options.stats_at_exit, 0},
};

static bool is(const char *v, const char *a, const char *b)
{
    return strcmp(v, a) == 0 || (b != NULL && strcmp(v, b) == 0);
}

/* Parse v into o's field.  Returns NULL, or what the warning shows. */
static const char *parse_option(const struct option *o, const char *v)
{
    switch (o->kind) {
    case OPT_DURATION:
        return sa_parse_duration(v, o->field) ? NULL : v;
    case OPT_INTERVAL:
        if (sa_parse_duration(v, o->field) && *(uint64_t *)o->field != 0)
            return NULL;
        *(uint64_t *)o->field = STATS_INTERVAL_DEFAULT_NS;
        return v;
    case OPT_BYTES:
        return sa_parse_bytes(v, o->field) ? NULL : v;
    case OPT_BYTES_OR_OFF:
        if (is(v, "off", NULL)) {
            *(uint64_t *)o->field = 0;
            return NULL;
        }
        return sa_parse_bytes(v, o->field) ? NULL : v;
    case OPT_PERCENT:
        return sa_parse_percent(v, o->field) ? NULL : v;
    case OPT_SWITCH:
        if (is(v, "off", "0"))
            *(bool *)o->field = false;
        else if (!is(v, "on", "1"))
            return v;
        return NULL;
    case OPT_FLAG:
        *(bool *)o->field = strcmp(v, "0") != 0 && *v != '\0';
        return NULL;
    case OPT_PATH:
        if (*v == '\0')
            return NULL;
        if (strlen(v) >= o->size)
            return "(path too long)";
        memcpy(o->field, v, strlen(v) + 1);
        return NULL;
    case OPT_MADVISE:
        if (is(v, "free", NULL))
            *(bool *)o->field = true;
        else if (!is(v, "dontneed", NULL))
            return v;
        return NULL;
    case OPT_STATS_FORMAT:
        if (is(v, "text", "1"))
            *(int *)o->field = SPANALLOC_STATS_TEXT;
        else if (is(v, "json", NULL))
            *(int *)o->field = SPANALLOC_STATS_JSON;
        else if (*v != '\0' && strcmp(v, "0") != 0)
            return v;
        return NULL;
    }
    return v;
}

void sa_read_options(void)
{
    sa_secure_exec = getauxval(AT_SECURE) != 0;
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        const char *v = secure_getenv(options[i].name);
        const char *bad = v != NULL ? parse_option(&options[i], v) : NULL;
        if (bad != NULL)
            warn_option(options[i].name, bad);
    }
    if (sa_secure_exec) { /* whatever set them: no file, no output */
        sa_options.stats_file[0] = '\0';
        sa_options.stats_at_exit = -1;
        sa_options.trace = false;
    }
}
