/*
 * percpu.c: the per-CPU caches, as Go keeps one mcache per P.
 *
 * One slab per CPU (alloc/percpu.h), in a reservation of ncpus slabs of
 * address space taken once, reached through a table of ncpus pointers; a
 * CPU's slab is set up (its pages touched, its pointer published) the first
 * time a thread runs a cache operation there, so memory follows the CPUs the
 * process actually uses.  Until then its entry is the zero slab.  Threads reach the slab of the CPU they run
 * on through glibc's rseq registration; the kernel restarts a section that is
 * preempted, migrated or signalled before its commit, so two threads on one
 * CPU never interleave inside one.
 *
 * Draining a CPU's slab from another CPU (the scavenger's idle drain,
 * free_os_memory, the memory limit): point the CPU's table entry at the zero
 * slab (every section that loads it fails and goes to the slow path), fence
 * with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) on that CPU, which
 * restarts any section running or preempted there, so none that loaded the
 * old pointer can commit; then the drainer owns the slab, empties it and
 * publishes it again.  Without the rseq fence the process stays on
 * per-thread caches.
 */
#include <fcntl.h>
#include <linux/membarrier.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "percpu.h"
#if defined(SA_PERCPU_ASM)
#include <sys/rseq.h>
#endif

enum { PC_UNKNOWN = 0, PC_ON, PC_OFF };

struct cpu_state {
    _Atomic bool ready;
    uint64_t activity; /* the header words' sum at the last idle check */
};

/* Ownership: mode is decided once under setup_lock and read with acquire
 * anywhere after; slabs, table, cpus, ncpus and fence_per_cpu are written
 * once by that set-up, before mode says PC_ON (which publishes them).  A
 * CPU's table entry and cpus[].ready are written under setup_lock (its
 * first use) or drain_lock (a drain), and read by the sections with no lock;
 * cpus[].activity under drain_lock; cpus_ready is a relaxed counter. */
static _Atomic int mode;
static pthread_mutex_t setup_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t drain_lock = PTHREAD_MUTEX_INITIALIZER;
static char *slabs;              /* ncpus slabs, sa_slab_bytes() apart */
static char **table;             /* what the sections index by CPU */
static struct cpu_state *cpus;
static unsigned ncpus;
static _Atomic unsigned cpus_ready;
static bool fence_per_cpu = true;

static long membarrier(int cmd, unsigned flags, int cpu)
{
    return syscall(__NR_membarrier, cmd, flags, cpu);
}

#if defined(SA_PERCPU_ASM)
/* The highest possible CPU + 1, from the kernel's list ("0-1", "0,2-5"),
 * read without stdio (no malloc on this path). */
static unsigned possible_cpus(void)
{
    char buf[256];
    int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    unsigned max = 0, v = 0;
    bool digits = false;
    for (char *c = buf; *c != '\0'; c++) {
        if (*c >= '0' && *c <= '9') {
            v = v * 10 + (unsigned)(*c - '0');
            digits = true;
            if (v > (1u << 20))
                return 0;
        } else {
            if (digits && v + 1 > max)
                max = v + 1;
            v = 0;
            digits = false;
        }
    }
    if (digits && v + 1 > max)
        max = v + 1;
    return max;
}
#endif

static bool setup(void)
{
#if defined(SA_PERCPU_ASM)
    if (!sa_options.percpu || sa_on_valgrind || __rseq_size == 0)
        return false;
    long cmds = membarrier(MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ))
        return false;
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0)
        return false;
    if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, 0) != 0)
        fence_per_cpu = false; /* before Linux 5.10: fence every CPU */
    unsigned n = possible_cpus();
    if (n == 0)
        return false;
    size_t meta = sizeof(struct sa_size_index) + n * (sizeof(struct cpu_state) + sizeof(char *));
    char *s = sa_os_map((size_t)n * sa_slab_bytes(), 0);
    char *m = sa_os_map(meta, 0);
    if (s == NULL || m == NULL) {
        if (s != NULL)
            sa_os_unmap(s, (size_t)n * sa_slab_bytes());
        if (m != NULL)
            sa_os_unmap(m, meta);
        return false;
    }
    slabs = s;
    sa_size_index_init((struct sa_size_index *)m);
    table = (char **)(m + sizeof(struct sa_size_index));
    cpus = (struct cpu_state *)((char *)table + n * sizeof(char *));
    for (unsigned i = 0; i < n; i++)
        table[i] = (char *)sa_zero_slab;
    ncpus = n;
    return true;
#else
    return false;
#endif
}

bool sa_percpu_enabled(void)
{
    int m = atomic_load_explicit(&mode, memory_order_acquire);
    if (SA_LIKELY(m != PC_UNKNOWN))
        return m == PC_ON;
    pthread_mutex_lock(&setup_lock);
    m = atomic_load_explicit(&mode, memory_order_relaxed);
    if (m == PC_UNKNOWN) {
        m = setup() ? PC_ON : PC_OFF;
        atomic_store_explicit(&mode, m, memory_order_release);
    }
    pthread_mutex_unlock(&setup_lock);
    return m == PC_ON;
}

bool sa_percpu_attach_thread(void)
{
#if defined(SA_PERCPU_ASM)
    char *tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp));
    struct sa_rseq_view *area = (struct sa_rseq_view *)(tp + __rseq_offset);
    if ((int32_t)__atomic_load_n(&area->cpu_id, __ATOMIC_RELAXED) < 0)
        return false; /* this thread's registration failed */
    sa_tls.cpu = area;
    sa_tls.table = table;
    return true;
#else
    return false;
#endif
}

void sa_percpu_prepare_current(void)
{
    unsigned cpu = __atomic_load_n(&sa_tls.cpu->cpu_id_start, __ATOMIC_RELAXED);
    if (cpu >= ncpus || atomic_load_explicit(&cpus[cpu].ready, memory_order_acquire))
        return;
    pthread_mutex_lock(&setup_lock);
    if (!atomic_load_explicit(&cpus[cpu].ready, memory_order_relaxed)) {
        char *slab = slabs + (size_t)cpu * sa_slab_bytes();
        sa_slab_init(slab, true);
        __atomic_store_n(&table[cpu], slab, __ATOMIC_RELEASE);
        atomic_store_explicit(&cpus[cpu].ready, true, memory_order_release);
        atomic_fetch_add_explicit(&cpus_ready, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&setup_lock);
}

char *sa_percpu_slab_of(unsigned cpu)
{
    if (cpu >= ncpus || !atomic_load_explicit(&cpus[cpu].ready, memory_order_acquire))
        return NULL;
    return slabs + (size_t)cpu * sa_slab_bytes();
}

unsigned sa_percpu_ncpus(void)
{
    return atomic_load_explicit(&mode, memory_order_acquire) == PC_ON ? ncpus : 0;
}

unsigned sa_percpu_cpus_ready(void)
{
    return atomic_load_explicit(&cpus_ready, memory_order_relaxed);
}

uint64_t sa_percpu_sys_bytes(void)
{
    return (uint64_t)sa_percpu_cpus_ready() * sa_slab_bytes();
}

/* Restart every section running on (or preempted on) `cpu`; false if the
 * kernel refused (then nothing may touch that CPU's slab but its threads). */
static bool fence(unsigned cpu)
{
    if (fence_per_cpu)
        return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU,
                          (int)cpu) == 0;
    return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0;
}

static uint64_t activity_of(char *slab)
{
    uint64_t sum = 0;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
        sum += __atomic_load_n(&sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT)->word,
                               __ATOMIC_RELAXED);
    return sum;
}

/* drain_lock held. */
static void drain_locked(unsigned cpu)
{
    char *slab = sa_percpu_slab_of(cpu);
    if (slab == NULL)
        return;
    __atomic_store_n(&table[cpu], (char *)sa_zero_slab, __ATOMIC_SEQ_CST);
    if (fence(cpu))
        sa_slab_flush_exclusive(slab, false); /* fork takes the drain lock: no waiting */
    __atomic_store_n(&table[cpu], slab, __ATOMIC_RELEASE);
    cpus[cpu].activity = activity_of(slab);
}

void sa_percpu_drain_all(void)
{
    if (!sa_percpu_enabled())
        return;
    pthread_mutex_lock(&drain_lock);
    for (unsigned cpu = 0; cpu < ncpus; cpu++)
        drain_locked(cpu);
    pthread_mutex_unlock(&drain_lock);
}

/* A CPU whose header words are all as they were at the previous call did no
 * malloc, no free and no refill in between: its blocks are idle. */
unsigned sa_percpu_drain_idle(void)
{
    if (!sa_percpu_enabled())
        return 0;
    unsigned drained = 0;
    pthread_mutex_lock(&drain_lock);
    for (unsigned cpu = 0; cpu < ncpus; cpu++) {
        char *slab = sa_percpu_slab_of(cpu);
        if (slab == NULL)
            continue;
        uint64_t now = activity_of(slab);
        if (now != cpus[cpu].activity) {
            cpus[cpu].activity = now;
            continue;
        }
        bool holds = false;
        for (unsigned cls = 1; cls < SA_NUM_CLASSES && !holds; cls++)
            holds = (__atomic_load_n(&sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT)->word,
                                     __ATOMIC_RELAXED) & SA_SLAB_CUR_MASK) != sa_slab_region_base(cls);
        if (holds) {
            drain_locked(cpu);
            drained++;
        }
    }
    pthread_mutex_unlock(&drain_lock);
    return drained;
}

/* Registry lock held (it serialises the readers' `seen` updates).  The
 * drain lock keeps drains out meanwhile: a drain half done would show as
 * frees missing (see mcache.c, "Statistics"), even with every thread
 * stopped. */
void sa_percpu_fold_stats(uint64_t *mallocs, uint64_t *arrivals)
{
    if (sa_percpu_ncpus() == 0)
        return;
    pthread_mutex_lock(&drain_lock);
    for (unsigned cpu = 0; cpu < ncpus; cpu++) {
        char *slab = sa_percpu_slab_of(cpu);
        if (slab != NULL)
            sa_slab_fold(slab, mallocs, arrivals);
    }
    pthread_mutex_unlock(&drain_lock);
}

/* ---- fork: no drain or set-up may be half done in the child. */

void sa_percpu_fork_prepare(void)
{
    pthread_mutex_lock(&setup_lock);
    pthread_mutex_lock(&drain_lock);
}

void sa_percpu_fork_parent(void)
{
    pthread_mutex_unlock(&drain_lock);
    pthread_mutex_unlock(&setup_lock);
}

/* The child's memory is a copy of the parent's at one instant, and each
 * section either committed before it or not at all: the CPU slabs are whole
 * and the child's threads go on using them.  The forking thread keeps its
 * rseq registration; the membarrier registration is the new process's to
 * make again. */
void sa_percpu_fork_child(void)
{
    pthread_mutex_init(&setup_lock, NULL);
    pthread_mutex_init(&drain_lock, NULL);
    if (atomic_load_explicit(&mode, memory_order_relaxed) == PC_ON)
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0);
}
