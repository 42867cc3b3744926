/* Run as root inside a guest: reach for a key the host stored in host root's user keyring.
 * Usage: keyring_probe SERIAL DESCRIPTION [all|look]. Prints "NAME ERRNO" per attempt (0: the call succeeded);
 * "all" (the default) also tries to revoke the key and to add one of the guest's own, "look" only looks (the
 * contrast run in a guest without the filter must leave the host's key alone).
 * i386 keyctl through int 0x80 is in syscall_probe.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEY_SPEC_USER_KEYRING (-4L)
#define KEY_SPEC_USER_SESSION_KEYRING (-5L)
#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_REVOKE 3
#define KEYCTL_DESCRIBE 6
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11

static long sc(long nr, long a, long b, long c, long d, long e) {
    long r = syscall(nr, a, b, c, d, e);
    return r < 0 ? -errno : r;
}

static void report(const char *name, long r) {
    printf("%s %ld\n", name, r < 0 ? -r : 0L);
}

int main(int argc, char **argv) {
    const char *where = getenv("container");
    if (!where || strcmp(where, "vserver") != 0 || argc < 3) {  /* never on the host: it would revoke the key */
        fprintf(stderr, "keyring_probe SERIAL DESCRIPTION [all|look]: runs only inside a guest (container=vserver)\n");
        return 2;
    }
    long serial = strtol(argv[1], NULL, 10);
    const char *desc = argv[2];
    int all = argc < 4 || strcmp(argv[3], "all") == 0;
    char buf[256];
    memset(buf, 0, sizeof(buf));

    long r = sc(SYS_keyctl, KEYCTL_READ, serial, (long)buf, sizeof(buf) - 1, 0);
    report("read", r);
    if (r > 0) printf("read_data %s\n", buf);
    report("describe", sc(SYS_keyctl, KEYCTL_DESCRIBE, serial, (long)buf, sizeof(buf) - 1, 0));
    report("user_keyring", sc(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0, 0, 0));
    report("user_session_keyring", sc(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_SESSION_KEYRING, 0, 0, 0));
    report("search", sc(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, (long)"user", (long)desc, 0));
    if (all) {
        report("request_key", sc(SYS_request_key, (long)"user", (long)desc, 0, 0, 0));
        report("revoke", sc(SYS_keyctl, KEYCTL_REVOKE, serial, 0, 0, 0));
        report("add_key", sc(SYS_add_key, (long)"user", (long)"vstest-from-guest", (long)"x", 1,
                             KEY_SPEC_USER_KEYRING));
    }
    return 0;
}
