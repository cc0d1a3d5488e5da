/*
 * LD_PRELOAD shim for issue 17, defect 1 (the fork window of the -shm descriptor).
 *
 * Stands for a host thread that calls fork() at the worst moment: while another thread
 * of the process is between opening the -shm and whatever the VFS does next with the
 * new descriptor (record it, lock through it). The first open()/open64()/openat()/
 * openat64() in the process of a path ending in "-shm" calls the real open first; if it
 * returned a descriptor, it starts a thread that fork()s, and waits (at most
 * FORK_WINDOW_WAIT_MS, default 2000 ms) for that fork to return before it returns the
 * descriptor itself. The wait is bounded so that a VFS which holds a lock across
 * open+record (a lock its pthread_atfork prepare handler also takes) does not deadlock
 * the test: the fork then simply happens after the descriptor was recorded.
 *
 * The child never execs (as a prefork server's worker would not): it points 0, 1 and 2
 * at /dev/null (so the parent's pipes see EOF when the parent dies) and sleeps until it
 * is killed, or FORK_WINDOW_CHILD_SECS (default 60) seconds, then _exit(0). It keeps
 * every other descriptor it inherited and its fork handlers did not close.
 *
 * FORK_WINDOW_LOG (a file, appended): "open <fd> <path>" for the -shm open that armed
 * the shim, "forked <child pid>" from the forking thread, "returned waited|timeout" from
 * the opener. Without FORK_WINDOW_LOG the shim does nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static int armed_once;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int forked;

static void log_line(const char *line) {
    const char *path = getenv("FORK_WINDOW_LOG");
    if (!path) return;
    static open_fn real;
    if (!real) real = (open_fn)dlsym(RTLD_NEXT, "open");
    int fd = real(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, strlen(line));
    (void)ignored;
    close(fd);
}

static long env_num(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    long n = strtol(v, NULL, 10);
    return n > 0 ? n : dflt;
}

static void child_body(void) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2) close(null);
    }
    long secs = env_num("FORK_WINDOW_CHILD_SECS", 60);
    struct timespec ts = {1, 0};
    for (long i = 0; i < secs; i++) nanosleep(&ts, NULL);
    _exit(0);
}

static void *forker(void *arg) {
    (void)arg;
    pid_t pid = fork();
    if (pid == 0) child_body();
    char line[64];
    if (pid > 0)
        snprintf(line, sizeof line, "forked %d\n", (int)pid);
    else
        snprintf(line, sizeof line, "fork-failed %d\n", errno);
    log_line(line);
    pthread_mutex_lock(&mu);
    forked = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static int ends_in_shm(const char *path) {
    size_t n = path ? strlen(path) : 0;
    return n >= 4 && strcmp(path + n - 4, "-shm") == 0;
}

/* After the real open of `path` returned `fd`: the first time, fork from another thread
 * and wait (bounded) for it. */
static void window(int fd, const char *path) {
    if (fd < 0 || !getenv("FORK_WINDOW_LOG") || !ends_in_shm(path)) return;
    if (__atomic_exchange_n(&armed_once, 1, __ATOMIC_SEQ_CST)) return;
    char line[4200];
    snprintf(line, sizeof line, "open %d %s\n", fd, path);
    log_line(line);
    pthread_t t;
    if (pthread_create(&t, NULL, forker, NULL) != 0) {
        log_line("thread-failed\n");
        return;
    }
    pthread_detach(t);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long ms = env_num("FORK_WINDOW_WAIT_MS", 2000);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    int timed_out = 0;
    pthread_mutex_lock(&mu);
    while (!forked && !timed_out)
        timed_out = pthread_cond_timedwait(&cv, &mu, &until) == ETIMEDOUT;
    pthread_mutex_unlock(&mu);
    log_line(timed_out ? "returned timeout\n" : "returned waited\n");
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    static open_fn real;
    if (!real) real = (open_fn)dlsym(RTLD_NEXT, "open");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real(path, flags, mode);
    int saved = errno;
    window(fd, path);
    errno = saved;
    return fd;
}

int open64(const char *path, int flags, ...) {
    static open_fn real;
    if (!real) real = (open_fn)dlsym(RTLD_NEXT, "open64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real(path, flags, mode);
    int saved = errno;
    window(fd, path);
    errno = saved;
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    static openat_fn real;
    if (!real) real = (openat_fn)dlsym(RTLD_NEXT, "openat");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real(dirfd, path, flags, mode);
    int saved = errno;
    window(fd, path);
    errno = saved;
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    static openat_fn real;
    if (!real) real = (openat_fn)dlsym(RTLD_NEXT, "openat64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real(dirfd, path, flags, mode);
    int saved = errno;
    window(fd, path);
    errno = saved;
    return fd;
}
