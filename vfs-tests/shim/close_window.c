/*
 * LD_PRELOAD shim for the check-then-close regression test (issue 10, defect 1).
 *
 * Stands for another SQLite runtime of the same process that takes a POSIX lock at the
 * worst moment: right between a descriptor's F_OFD_GETLK probe ("nobody holds a lock
 * that closing this descriptor could cancel") and its close(). When close() is called on
 * a descriptor whose most recent fcntl was F_OFD_GETLK and which names the database or
 * its -shm (environment CLOSE_WINDOW_DB: the database path), the shim first opens the
 * same inode through its own, separate descriptor (kept open for the life of the process,
 * as the other runtime keeps its file open) and takes a POSIX read lock there:
 *   database: the first byte of SQLite's SHARED range (PENDING_BYTE + 2);
 *   -shm:     the dead-man-switch byte (128).
 * Then it lets the close go on. Every lock taken is appended to CLOSE_WINDOW_LOG as
 * "locked <inode> <byte> <path>"; the first OFD request seen on a watched file is logged
 * as "ofd-seen <path>" (proof the shim sits under the code it watches).
 *
 * Both fcntl and fcntl64 are interposed: a caller may bind to either.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FD 65536
#define PENDING_BYTE 0x40000000L

typedef int (*fcntl_fn)(int, int, ...);
typedef int (*close_fn)(int);

static unsigned char armed[MAX_FD];
static int ofd_logged;
static __thread int inside;

static fcntl_fn real_fcntl(void) {
    static fcntl_fn f;
    if (!f) {
        f = (fcntl_fn)dlsym(RTLD_NEXT, "fcntl64");
        if (!f) f = (fcntl_fn)dlsym(RTLD_NEXT, "fcntl");
    }
    return f;
}

static close_fn real_close(void) {
    static close_fn f;
    if (!f) f = (close_fn)dlsym(RTLD_NEXT, "close");
    return f;
}

static void log_line(const char *line) {
    const char *path = getenv("CLOSE_WINDOW_LOG");
    if (!path) return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, strlen(line));
    (void)ignored;
    real_close()(fd);
}

/* 1: the database, 2: its -shm, 0: anything else. */
static int watched(int fd, char *target, size_t size) {
    const char *db = getenv("CLOSE_WINDOW_DB");
    if (!db || fd < 0) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, size - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    size_t dl = strlen(db);
    if (strncmp(target, db, dl) != 0) return 0;
    if (target[dl] == 0) return 1;
    if (strcmp(target + dl, "-shm") == 0) return 2;
    return 0;
}

static int is_ofd(int cmd) {
    return cmd == F_OFD_GETLK || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW;
}

static int wrapped_fcntl(int fd, int cmd, void *arg) {
    int rc = real_fcntl()(fd, cmd, arg);
    if (inside || fd < 0 || fd >= MAX_FD) return rc;
    inside = 1;
    if (is_ofd(cmd) && !__atomic_load_n(&ofd_logged, __ATOMIC_RELAXED)) {
        char target[4096];
        if (watched(fd, target, sizeof target)) {
            __atomic_store_n(&ofd_logged, 1, __ATOMIC_RELAXED);
            char line[4200];
            snprintf(line, sizeof line, "ofd-seen %s\n", target);
            log_line(line);
        }
    }
    __atomic_store_n(&armed[fd], cmd == F_OFD_GETLK, __ATOMIC_RELAXED);
    inside = 0;
    return rc;
}

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return wrapped_fcntl(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return wrapped_fcntl(fd, cmd, arg);
}

int close(int fd) {
    if (!inside && fd >= 0 && fd < MAX_FD &&
        __atomic_exchange_n(&armed[fd], 0, __ATOMIC_RELAXED)) {
        inside = 1;
        char target[4096];
        int kind = watched(fd, target, sizeof target);
        if (kind) {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            /* The other runtime's own descriptor of the same inode, never closed. */
            int other = open(link, O_RDONLY | O_CLOEXEC);
            if (other >= 0) {
                struct flock fl;
                memset(&fl, 0, sizeof fl);
                fl.l_type = F_RDLCK;
                fl.l_whence = SEEK_SET;
                fl.l_start = kind == 1 ? PENDING_BYTE + 2 : 128;
                fl.l_len = 1;
                struct stat st;
                if (real_fcntl()(other, F_SETLK, &fl) == 0 && fstat(other, &st) == 0) {
                    char line[4200];
                    snprintf(line, sizeof line, "locked %llu %lld %s\n",
                             (unsigned long long)st.st_ino, (long long)fl.l_start, target);
                    log_line(line);
                }
            }
        }
        inside = 0;
    }
    return real_close()(fd);
}
