/* Run as root inside a guest: try each system call the default filter denies, each in a child of its own (an
 * unconfined guest may really create a namespace), and print "NAME ERRNO" (0: the call succeeded).
 * Arguments are chosen so that, without the filter, the kernel answers something else than EPERM where it can.
 * i386 calls go through `int $0x80` (AUDIT_ARCH_I386, its own numbers), x32 ones through bit 0x40000000.
 * With an argument NAME, only that probe runs (only_* probes run only so). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#define NR_open_tree 428
#define NR_move_mount 429
#define NR_fsopen 430
#define NR_fsconfig 431
#define NR_fsmount 432
#define NR_fspick 433
#define NR_clone3 435
#define NR_mount_setattr 442
#define NR_io_uring_setup 425
#define X32 0x40000000L

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;   /* -errno on failure */
}

static long sc(long nr, long a, long b, long c, long d, long e) {
    long r = syscall(nr, a, b, c, d, e);
    return r < 0 ? -errno : r;
}


static long clone_ns(void) {
    long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r < 0) return -errno;
    waitpid(r, NULL, 0);
    return 0;
}

static long clone3_ns(void) {
    uint64_t args[11];
    memset(args, 0, sizeof(args));
    args[0] = CLONE_NEWUSER;    /* flags */
    args[4] = SIGCHLD;          /* exit_signal */
    long r = syscall(NR_clone3, args, 88);
    if (r == 0) _exit(0);
    if (r < 0) return -errno;
    waitpid(r, NULL, 0);
    return 0;
}

/* an ICMP echo to 127.0.0.1 over a datagram ("ping") socket: what raw_icmp allows without CAP_NET_RAW */
static long icmp_ping(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (fd < 0) return -errno;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    unsigned char echo[16] = {8, 0};   /* type 8 (echo request), code 0; the kernel fills id and checksum */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (sendto(fd, echo, sizeof(echo), 0, (struct sockaddr *)&to, sizeof(to)) < 0) return -errno;
    unsigned char reply[64];
    ssize_t n = recv(fd, reply, sizeof(reply), 0);
    if (n < 0) return -errno;
    return reply[0] == 0 ? 0 : -EPROTO;   /* type 0: echo reply */
}

static long fork_plain(void) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    if (p < 0) return -errno;
    waitpid(p, NULL, 0);
    return 0;
}

static const char *NAMES[] = {
    "keyctl",
    "add_key",
    "request_key",
    "unshare_user",
    "unshare_cgroup",
    "unshare_files",
    "clone_user",
    "clone3_user",
    "fork",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "kexec_load",
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "acct",
    "swapon",
    "swapoff",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "personality_norandom",
    "personality_query",
    "i386_unshare_user",
    "i386_keyctl",
    "i386_mount",
    "i386_getpid",
    "x32_unshare_user",
    "x32_getpid",
    "only_icmp_ping",
};

static long call(int i) {
    switch (i) {
    case 0: return sc(SYS_keyctl, 0, -4, 0, 0, 0);
    case 1: return sc(SYS_add_key, (long)"user", (long)"probe", (long)"x", 1, -2 /* thread keyring */);
    case 2: return sc(SYS_request_key, (long)"user", (long)"no-such-key-probe", 0, 0, 0);
    case 3: return sc(SYS_unshare, CLONE_NEWUSER, 0, 0, 0, 0);
    case 4: return sc(SYS_unshare, CLONE_NEWCGROUP, 0, 0, 0, 0);
    case 5: return sc(SYS_unshare, CLONE_FILES, 0, 0, 0, 0);         /* allowed */
    case 6: return clone_ns();
    case 7: return clone3_ns();
    case 8: return fork_plain();                                                /* allowed */
    case 9: return sc(SYS_setns, 0, CLONE_NEWNET, 0, 0, 0);
    case 10: return sc(SYS_mount, (long)"none", (long)"/no-such-dir", (long)"tmpfs", 0, 0);
    case 11: return sc(SYS_umount2, (long)"/no-such-dir", 0, 0, 0, 0);
    case 12: return sc(SYS_pivot_root, (long)"/no-such-dir", (long)"/no-such-dir", 0, 0, 0);
    case 13: return sc(NR_fsopen, (long)"tmpfs", 0, 0, 0, 0);
    case 14: return sc(NR_fsconfig, -1, 0, 0, 0, 0);
    case 15: return sc(NR_fsmount, -1, 0, 0, 0, 0);
    case 16: return sc(NR_fspick, -1, (long)"/no-such-dir", 0, 0, 0);
    case 17: return sc(NR_move_mount, -1, (long)"", -1, (long)"", 0);
    case 18: return sc(NR_open_tree, -1, (long)"/no-such-dir", 0, 0, 0);
    case 19: return sc(NR_mount_setattr, -1, (long)"/no-such-dir", 0, 0, 0);
    case 20: return sc(SYS_bpf, 9999, 0, 0, 0, 0);
    case 21: return sc(SYS_perf_event_open, 0, 0, -1, -1, 0);
    case 22: return sc(SYS_userfaultfd, 0, 0, 0, 0, 0);
    case 23: return sc(NR_io_uring_setup, 1, 0, 0, 0, 0);
    case 24: return sc(SYS_kexec_load, 0, 0, 0, 0xffff0000L, 0);
    case 25: return sc(SYS_open_by_handle_at, -1, 0, 0, 0, 0);
    case 26: return sc(SYS_name_to_handle_at, -1, (long)"/", 0, 0, 0);
    case 27: return sc(SYS_init_module, 0, 0, 0, 0, 0);
    case 28: return sc(SYS_finit_module, -1, 0, 0, 0, 0);
    case 29: return sc(SYS_delete_module, (long)"no_such_module_probe", 0, 0, 0, 0);
    case 30: return sc(SYS_acct, (long)"/no-such-file", 0, 0, 0, 0);
    case 31: return sc(SYS_swapon, (long)"/no-such-file", 0, 0, 0, 0);
    case 32: return sc(SYS_swapoff, (long)"/no-such-file", 0, 0, 0, 0);
    case 33: return sc(SYS_iopl, 0, 0, 0, 0, 0);
    case 34: return sc(SYS_ioperm, 0x80, 1, 0, 0, 0);
    case 35: return sc(SYS_lookup_dcookie, 0, 0, 0, 0, 0);
    case 36: return sc(SYS_personality, 0x0040000, 0, 0, 0, 0);
    case 37: return sc(SYS_personality, 0xffffffffL, 0, 0, 0, 0) >= 0 ? 0 : -1; /* allowed */
    case 38: return int80(310, CLONE_NEWUSER, 0, 0);
    case 39: return int80(288, 0, -4, 0);
    case 40: return int80(21, 0, 0, 0);
    case 41: return int80(20, 0, 0, 0) > 0 ? 0 : -1;                      /* allowed */
    case 42: return sc(X32 | 272, CLONE_NEWUSER, 0, 0, 0, 0);
    case 43: return sc(X32 | 39, 0, 0, 0, 0, 0);
    case 44: return icmp_ping();
    }
    return -EINVAL;
}

/* Run one probe in a child: exit code = errno (0 on success). */
static void probe(int i) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        long r = call(i);
        _exit(r < 0 ? (int)-r : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status)) printf("%s %d\n", NAMES[i], WEXITSTATUS(status));
    else printf("%s signal%d\n", NAMES[i], WTERMSIG(status));
}

int main(int argc, char **argv) {
    const char *where = getenv("container");
    if (!where || strcmp(where, "vserver") != 0) {  /* never on the host: it would really unshare, mount... */
        fprintf(stderr, "syscall_probe: runs only inside a guest (container=vserver)\n");
        return 2;
    }
    int n = (int)(sizeof(NAMES) / sizeof(NAMES[0]));
    for (int i = 0; i < n; i++)
        if (argc < 2 ? strncmp(NAMES[i], "only_", 5) != 0 : strcmp(argv[1], NAMES[i]) == 0) probe(i);
    return 0;
}
