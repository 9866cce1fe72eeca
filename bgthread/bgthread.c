/*
 * bgthread.c: the background threads' one way to start, to survive fork and
 * to end (bgthread.h), and the check that the program's own threads still
 * run.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "bgthread.h"

/* ---- Start, fork, state */

bool sa_bgthread_claim(struct sa_bgthread *t)
{
    int expected = SA_BGTHREAD_OFF;
    return atomic_compare_exchange_strong(&t->state, &expected, SA_BGTHREAD_RUNNING) ||
           (expected == SA_BGTHREAD_START_IN_CHILD &&
            atomic_compare_exchange_strong(&t->state, &expected, SA_BGTHREAD_RUNNING));
}

void sa_bgthread_unclaim(struct sa_bgthread *t)
{
    atomic_store(&t->state, SA_BGTHREAD_OFF);
}

bool sa_bgthread_spawn(struct sa_bgthread *t, void *(*main)(void *))
{
    /* The thread must take none of the program's signals: it inherits this
     * mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    bool ok = pthread_create(&tid, NULL, main, NULL) == 0;
    if (ok)
        pthread_detach(tid);
    else
        sa_bgthread_unclaim(t); /* try again at the next claim */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return ok;
}

bool sa_bgthread_running(const struct sa_bgthread *t)
{
    return atomic_load(&t->state) == SA_BGTHREAD_RUNNING;
}

void sa_bgthread_fork_child(struct sa_bgthread *t)
{
    if (atomic_load(&t->state) == SA_BGTHREAD_RUNNING)
        atomic_store(&t->state, SA_BGTHREAD_START_IN_CHILD);
}

/* ---- The program's own threads
 *
 * spanalloc's background threads must not keep a process alive: a program
 * whose main thread calls pthread_exit() (or a child forked from a thread,
 * whose only thread then exits) ends when its last thread does.  Each background thread registers its tid and asks,
 * about once a second, whether any other thread still runs; when none does,
 * it exits.  The check reads /proc with raw system calls (no malloc: the
 * snapshot writer must not allocate). */
#define SA_MAX_BACKGROUND 4
/* Registered tids, 0 for a free slot: each thread writes its own slot, the
 * fork child handler all of them; read by every thread's liveness check. */
static _Atomic pid_t background_tids[SA_MAX_BACKGROUND];

void sa_bgthread_enter(void)
{
    pid_t me = (pid_t)syscall(SYS_gettid);
    for (int i = 0; i < SA_MAX_BACKGROUND; i++) {
        pid_t expected = 0;
        if (atomic_compare_exchange_strong(&background_tids[i], &expected, me))
            return;
    }
}

static void unregister_self(void)
{
    pid_t me = (pid_t)syscall(SYS_gettid);
    for (int i = 0; i < SA_MAX_BACKGROUND; i++) {
        pid_t expected = me;
        atomic_compare_exchange_strong(&background_tids[i], &expected, 0);
    }
}

/* After fork the child has none of the parent's background threads. */
void sa_bgthread_forget_all(void)
{
    for (int i = 0; i < SA_MAX_BACKGROUND; i++)
        atomic_store(&background_tids[i], 0);
}

static bool is_background(pid_t tid)
{
    for (int i = 0; i < SA_MAX_BACKGROUND; i++)
        if (atomic_load(&background_tids[i]) == tid)
            return true;
    return false;
}

/* Is thread tid of this process still running (not a zombie)? */
static bool task_running(pid_t tid)
{
    char path[64] = "/proc/self/task/";
    size_t n = strlen(path);
    char digits[16];
    int d = 0;
    for (pid_t v = tid; v > 0 && d < 15; v /= 10)
        digits[d++] = (char)('0' + v % 10);
    while (d > 0)
        path[n++] = digits[--d];
    memcpy(path + n, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char buf[512];
    ssize_t got = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (got <= 0)
        return false;
    buf[got] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren != NULL && paren[1] == ' ' && paren[2] != 'Z' && paren[2] != 'X';
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static bool user_threads_alive(void)
{
    int fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return true; /* no /proc: assume the program runs */
    char buf[4096] __attribute__((aligned(8)));
    bool alive = false;
    long got;
    while (!alive && (got = syscall(SYS_getdents64, fd, buf, sizeof(buf))) > 0) {
        for (long off = 0; off < got && !alive;) {
            struct linux_dirent64 *e = (struct linux_dirent64 *)(buf + off);
            off += e->d_reclen;
            pid_t tid = (pid_t)strtol(e->d_name, NULL, 10);
            if (tid > 0 && !is_background(tid) && task_running(tid))
                alive = true;
        }
    }
    close(fd);
    return alive;
}

void sa_bgthread_leave(struct sa_bgthread *t)
{
    atomic_store(&t->state, SA_BGTHREAD_OFF);
    unregister_self();
}

bool sa_bgthread_orphaned(void)
{
    return !user_threads_alive();
}
