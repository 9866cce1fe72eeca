/*
 * bench_run: run one command with an allocator preloaded and report its wall
 * time and peak RSS.
 *
 * /usr/bin/time prints wall time to 10 ms; the workloads run ~0.5 s, so this
 * wrapper measures with CLOCK_MONOTONIC and takes the child's ru_maxrss from
 * wait4().  LD_PRELOAD is set for the child only, never for the wrapper.
 *
 * usage: bench_run [--preload LIB] [--out FILE] -- COMMAND [ARGS...]
 * Writes "WALL_SECONDS MAXRSS_KIB STATUS" (STATUS: exit code, or 128+signal)
 * to FILE (default stderr) and exits with STATUS.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_run [--preload LIB] [--out FILE] -- COMMAND [ARGS...]\n"
               "Runs COMMAND with LD_PRELOAD=LIB (none if LIB is empty or absent), then writes\n"
               "'WALL_SECONDS MAXRSS_KIB STATUS' to FILE (default stderr); exits with STATUS.\n");
}

int main(int argc, char **argv)
{
    const char *preload = NULL, *out = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--preload") == 0 && i + 1 < argc) {
            preload = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    uint64_t t0 = bench_now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        if (preload != NULL && *preload != '\0')
            setenv("LD_PRELOAD", preload, 1);
        else
            unsetenv("LD_PRELOAD");
        execvp(argv[i], &argv[i]);
        fprintf(stderr, "bench_run: %s: %s\n", argv[i], strerror(errno));
        _exit(127);
    }
    int wstatus;
    struct rusage ru;
    while (wait4(pid, &wstatus, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("wait4");
            return 1;
        }
    }
    double wall = (double)(bench_now_ns() - t0) / 1e9;
    int status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    FILE *f = stderr;
    if (out != NULL && (f = fopen(out, "w")) == NULL) {
        perror(out);
        return 1;
    }
    fprintf(f, "%.4f %ld %d\n", wall, ru.ru_maxrss, status);
    if (f != stderr)
        fclose(f);
    return status;
}
