/*
 * init.c: bootstrap and options (the order of start-up, fork and exit is
 * lifecycle/lifecycle.c's).
 *
 * Nothing here may recurse into malloc before the allocator can serve it:
 * no stdio, no dlsym, no pthread_once.  The first malloc may come from any
 * thread or from a constructor that runs before ours, so initialisation is
 * a small state machine (none -> running -> done) that every slow path
 * checks.  SPANALLOC_* variables are read once, here, at load time: some
 * servers (nginx) clear the environment of their workers later.
 */
#include <sched.h>
#include <sys/auxv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "profile.h"
#include "valgrind_hooks.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

_Atomic int sa_init_state;
bool sa_on_valgrind;
uintptr_t sa_link_key, sa_mark_key;
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
    .stats_interval_ns = 10 * NS_PER_S,
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

/* "512M", "2G", "64K", "4096"; binary units. */
/* "10%" (0..1000) or "off" (0). */
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
 * its user could not. */
bool sa_secure_exec;

static const char *option_env(const char *name)
{
    return secure_getenv(name);
}

/* ---- The heap profile's options (profile/, docs/tuning.md) */
static void read_profile_options(void)
{
    const char *v;
    if ((v = option_env("SPANALLOC_PROFILE_RATE")) != NULL &&
        strcmp(v, "off") != 0 && !sa_parse_bytes(v, &sa_profile_options.rate))
        warn_option("SPANALLOC_PROFILE_RATE", v);
    if (v != NULL && strcmp(v, "off") == 0)
        sa_profile_options.rate = 0;
    if ((v = option_env("SPANALLOC_PROFILE_FILE")) != NULL && *v != '\0') {
        if (strlen(v) < sizeof(sa_profile_options.file))
            memcpy(sa_profile_options.file, v, strlen(v) + 1);
        else
            warn_option("SPANALLOC_PROFILE_FILE", "(path too long)");
    }
    if ((v = option_env("SPANALLOC_PROFILE_INTERVAL")) != NULL &&
        !sa_parse_duration(v, &sa_profile_options.interval_ns))
        warn_option("SPANALLOC_PROFILE_INTERVAL", v);
    if ((v = option_env("SPANALLOC_PROFILE_LEAKS")) != NULL)
        sa_profile_options.leaks = strcmp(v, "0") != 0 && *v != '\0';
}

void sa_read_options(void)
{
    const char *v;
    sa_secure_exec = getauxval(AT_SECURE) != 0;
    read_profile_options();
    if ((v = option_env("SPANALLOC_SCAVENGE_IDLE")) != NULL &&
        !sa_parse_duration(v, &sa_options.scavenge_idle_ns))
        warn_option("SPANALLOC_SCAVENGE_IDLE", v);
    if ((v = option_env("SPANALLOC_MEMORY_LIMIT")) != NULL &&
        !sa_parse_bytes(v, &sa_options.memory_limit))
        warn_option("SPANALLOC_MEMORY_LIMIT", v);
    if ((v = option_env("SPANALLOC_IDLE_LIMIT")) != NULL &&
        !sa_parse_percent(v, &sa_options.idle_limit_pct))
        warn_option("SPANALLOC_IDLE_LIMIT", v);
    if ((v = option_env("SPANALLOC_IDLE_DELAY")) != NULL &&
        !sa_parse_duration(v, &sa_options.idle_delay_ns))
        warn_option("SPANALLOC_IDLE_DELAY", v);
    if ((v = option_env("SPANALLOC_MADVISE")) != NULL) {
        if (strcmp(v, "free") == 0)
            sa_options.madvise_free = true;
        else if (strcmp(v, "dontneed") != 0)
            warn_option("SPANALLOC_MADVISE", v);
    }
    if ((v = option_env("SPANALLOC_SCAVENGER")) != NULL) {
        if (strcmp(v, "off") == 0 || strcmp(v, "0") == 0)
            sa_options.scavenger_enabled = false;
        else if (strcmp(v, "on") != 0 && strcmp(v, "1") != 0)
            warn_option("SPANALLOC_SCAVENGER", v);
    }
    if ((v = option_env("SPANALLOC_PERCPU")) != NULL) {
        if (strcmp(v, "off") == 0 || strcmp(v, "0") == 0)
            sa_options.percpu = false;
        else if (strcmp(v, "on") != 0 && strcmp(v, "1") != 0)
            warn_option("SPANALLOC_PERCPU", v);
    }
    if ((v = option_env("SPANALLOC_TRACE")) != NULL)
        sa_options.trace = strcmp(v, "0") != 0 && *v != '\0';
    if ((v = option_env("SPANALLOC_STATS_FILE")) != NULL && *v != '\0') {
        if (strlen(v) < sizeof(sa_options.stats_file))
            memcpy(sa_options.stats_file, v, strlen(v) + 1);
        else
            warn_option("SPANALLOC_STATS_FILE", "(path too long)");
    }
    if ((v = option_env("SPANALLOC_STATS_INTERVAL")) != NULL &&
        (!sa_parse_duration(v, &sa_options.stats_interval_ns) ||
         sa_options.stats_interval_ns == 0)) {
        sa_options.stats_interval_ns = 10 * NS_PER_S;
        warn_option("SPANALLOC_STATS_INTERVAL", v);
    }
    if ((v = option_env("SPANALLOC_STATS")) != NULL) {
        if (strcmp(v, "text") == 0 || strcmp(v, "1") == 0)
            sa_options.stats_at_exit = SPANALLOC_STATS_TEXT;
        else if (strcmp(v, "json") == 0)
            sa_options.stats_at_exit = SPANALLOC_STATS_JSON;
        else if (*v != '\0' && strcmp(v, "0") != 0)
            warn_option("SPANALLOC_STATS", v);
    }
    if (sa_secure_exec) { /* whatever set them: no file, no output */
        sa_options.stats_file[0] = '\0';
        sa_options.stats_at_exit = -1;
        sa_options.trace = false;
    }
}

/* sa_init_state: 0 none, 2 done, or -pid while the process `pid` runs it.
 * A fork while another thread initialises leaves the child with that state
 * and without that thread: the child sees a pid not its own and starts over
 * (nothing is allocated before the state is 2, so there is nothing to lose). */
void (*sa_init_pause_hook)(void);

static bool claim_init(void)
{
    int me = -(int)getpid();
    for (;;) {
        int state = atomic_load_explicit(&sa_init_state, memory_order_acquire);
        if (state == 2)
            return false;
        if (state == 0 || (state < 0 && state != me)) {
            if (atomic_compare_exchange_strong(&sa_init_state, &state, me))
                return true;
            continue;
        }
        sched_yield(); /* another thread is initialising; it takes no lock */
    }
}

void sa_init_slow(void)
{
    if (!claim_init())
        return;
    if (sa_init_pause_hook != NULL)
        sa_init_pause_hook();
    sa_lifecycle_start();
}

/* The tiers' part of start-up (sa_lifecycle_start calls it after the
 * options): once it returns, the allocator serves any thread. */
void sa_alloc_bootstrap(void)
{
    sa_on_valgrind = SA_ON_VALGRIND();
    uintptr_t keys[2];
    sa_os_random(keys, sizeof(keys));
    sa_link_key = keys[0];
    sa_mark_key = keys[1] | 1; /* never 0, so zeroed memory never looks free */
    sa_mcache_thread_init();
    atomic_store_explicit(&sa_init_state, 2, memory_order_release);
}
