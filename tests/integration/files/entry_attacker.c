/* Run as the init of a guest (root inside, with whatever bounding set the guest has): watch the guest's PID
 * namespace and attack every new process the way a hostile guest root would attack the admin's `vserver exec`:
 * ptrace it, signal it, read and write its memory, take its /proc/PID/{exe,cwd,root,fd/N} and, through every
 * directory reached, try to open a marker file that exists only on the host. Every success is reported (one
 * line each, to LOG inside the guest) with the target's capabilities at that moment and the device/inode of
 * what was obtained, so the test on the host can tell what the guest reached. Exe descriptors are kept and
 * tried for writing again at the end, after their processes exited (the runc CVE-2019-5736 pattern); a write
 * is only ever an open(O_WRONLY), never a byte written.
 * usage: entry_attacker MARKER LOG STOPFILE */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXPID 4194304
static unsigned char seen[MAXPID / 8 + 1];
static FILE *out;
static const char *marker;
static int held[512];
static int nheld;

static void caps_of(int pid, char *name, size_t nlen, char *eff, size_t elen) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    snprintf(name, nlen, "?");
    snprintf(eff, elen, "?");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Name:", 5)) sscanf(line + 5, "%63s", name);
        if (!strncmp(line, "CapEff:", 7)) sscanf(line + 7, "%31s", eff);
    }
    fclose(f);
}

static void report_fd(const char *what, int pid, int fd, const char *eff) {
    struct stat st;
    struct statvfs vfs;
    if (fstat(fd, &st) != 0) return;
    int ro = fstatvfs(fd, &vfs) == 0 && (vfs.f_flag & ST_RDONLY);
    fprintf(out, "%s pid=%d dev=%lu ino=%lu mode=%o ro=%d eff=%s\n", what, pid, (unsigned long)st.st_dev,
            (unsigned long)st.st_ino, (unsigned)st.st_mode, ro, eff);
    if (S_ISDIR(st.st_mode)) {
        int m = openat(fd, marker + 1, O_RDONLY);
        if (m >= 0) {
            char buf[128] = {0};
            read(m, buf, sizeof buf - 1);
            fprintf(out, "REACHED via %s pid=%d: %s\n", what, pid, buf);
            close(m);
        }
    }
}

static void try_write(const char *what, int fd, int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int w = open(path, O_WRONLY);
    struct stat st;
    fstat(fd, &st);
    fprintf(out, "%s pid=%d dev=%lu ino=%lu %s\n", what, pid, (unsigned long)st.st_dev, (unsigned long)st.st_ino,
            w >= 0 ? "WRITABLE" : strerror(errno));
    if (w >= 0) close(w);
}

static void attack(int pid) {
    char path[96], name[64], eff[32];
    caps_of(pid, name, sizeof name, eff, sizeof eff);
    fprintf(out, "NEW pid=%d name=%s eff=%s\n", pid, name, eff);
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    int cmd = open(path, O_RDONLY);
    if (cmd >= 0) {
        char buf[1024];
        ssize_t n = read(cmd, buf, sizeof buf - 1);
        close(cmd);
        for (ssize_t i = 0; i < n; i++) if (buf[i] == 0 || buf[i] == '\n') buf[i] = ' ';
        buf[n > 0 ? n : 0] = 0;
        fprintf(out, "CMDLINE pid=%d %s\n", pid, buf);
    }
    if (kill(pid, 0) == 0) fprintf(out, "SIGNAL pid=%d eff=%s\n", pid, eff);
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
        int status;
        ptrace(PTRACE_INTERRUPT, pid, 0, 0);
        waitpid(pid, &status, __WALL);
        caps_of(pid, name, sizeof name, eff, sizeof eff);
        fprintf(out, "PTRACE pid=%d name=%s eff=%s\n", pid, name, eff);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int mem = open(path, O_RDWR);
    if (mem >= 0) {
        char buf[8];
        FILE *maps;
        unsigned long start = 0;
        snprintf(path, sizeof path, "/proc/%d/maps", pid);
        if ((maps = fopen(path, "r"))) { fscanf(maps, "%lx", &start); fclose(maps); }
        fprintf(out, "MEM pid=%d eff=%s read=%s\n", pid, eff, pread(mem, buf, 8, start) == 8 ? "yes" : "no");
        close(mem);
    }
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    int exe = open(path, O_PATH);
    if (exe >= 0) {
        report_fd("EXE", pid, exe, eff);
        try_write("EXEW", exe, pid);
        if (nheld < 512) held[nheld++] = exe; else close(exe);
    }
    const char *links[] = {"cwd", "root"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "/proc/%d/%s", pid, links[i]);
        int fd = open(path, O_PATH);
        if (fd >= 0) { report_fd(links[i][0] == 'c' ? "CWD" : "ROOT", pid, fd, eff); close(fd); }
        snprintf(path, sizeof path, "/proc/%d/%s%s", pid, links[i], marker);
        int m = open(path, O_RDONLY);
        if (m >= 0) { fprintf(out, "REACHED via /proc/%d/%s\n", pid, links[i]); close(m); }
    }
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char fpath[128];
            snprintf(fpath, sizeof fpath, "/proc/%d/fd/%s", pid, e->d_name);
            int fd = open(fpath, O_PATH);
            if (fd >= 0) { report_fd("FD", pid, fd, eff); close(fd); }
        }
        closedir(d);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    marker = argv[1];
    out = fopen(argv[2], "w");
    if (!out) return 3;
    setvbuf(out, NULL, _IOFBF, 1 << 16);
    signal(SIGCHLD, SIG_IGN);
    int self = getpid();
    for (;;) {
        if (access(argv[3], F_OK) == 0) break;
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 1 || pid == self || pid >= MAXPID) continue;
            if (seen[pid / 8] & (1 << (pid % 8))) continue;
            seen[pid / 8] |= 1 << (pid % 8);
            attack(pid);
        }
        if (d) closedir(d);
    }
    for (int i = 0; i < nheld; i++) try_write("EXEW-LATE", held[i], 0);
    fprintf(out, "DONE\n");
    fclose(out);
    for (;;) pause();
}
