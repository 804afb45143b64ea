/* Hostile probes for the escape suite (tests/tests/escape.rs). Each probe tries one thing
 * a session must not be able to do and prints one line: "RESULT <probe> <outcome>", where
 * outcome is an errno name (the attempt failed that way) or "SUCCEEDED" (it worked: a hole). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EACCES: return "EACCES";
    case EROFS: return "EROFS"; case ESRCH: return "ESRCH"; case ENOSYS: return "ENOSYS";
    case ECONNREFUSED: return "ECONNREFUSED"; case ENETUNREACH: return "ENETUNREACH";
    case EAGAIN: return "EAGAIN"; case ENOMEM: return "ENOMEM"; case EMFILE: return "EMFILE";
    case ENOSPC: return "ENOSPC"; case ETXTBSY: return "ETXTBSY"; case EINVAL: return "EINVAL";
    case EBADF: return "EBADF"; case EFBIG: return "EFBIG"; case EDQUOT: return "EDQUOT";
    default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
    }
}
static int out(const char *probe, long r) {
    printf("RESULT %s %s\n", probe, r < 0 ? name(errno) : "SUCCEEDED");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    const char *p = argc > 1 ? argv[1] : "";
    if (!strcmp(p, "read_shadow")) return out(p, open("/etc/shadow", O_RDONLY));
    if (!strcmp(p, "read_root")) return out(p, open("/root", O_RDONLY | O_DIRECTORY));
    if (!strcmp(p, "read_home")) return out(p, open("/home", O_RDONLY | O_DIRECTORY));
    if (!strcmp(p, "write_usr")) return out(p, open("/usr/pwned", O_CREAT | O_WRONLY, 0644));
    if (!strcmp(p, "write_etc")) return out(p, open("/etc/passwd", O_WRONLY | O_APPEND));
    if (!strcmp(p, "see_pids")) {
        DIR *d = opendir("/proc"); struct dirent *e; int n = 0;
        if (!d) return out(p, -1);
        while ((e = readdir(d))) if (e->d_name[0] >= '0' && e->d_name[0] <= '9') { printf("pid %s\n", e->d_name); n++; }
        printf("RESULT %s %d\n", p, n); return 0;
    }
    if (!strcmp(p, "kill_all")) return out(p, kill(-1, SIGKILL));
    if (!strcmp(p, "kill_init")) { long r = kill(1, SIGKILL); usleep(100000); return out(p, r < 0 ? r : (kill(1, 0) == 0 ? (errno = ESRCH, -1) : 0)); }
    if (!strcmp(p, "ptrace_init")) return out(p, ptrace(PTRACE_ATTACH, 1, 0, 0));
    if (!strcmp(p, "tcp_control")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(argc > 2 ? atoi(argv[2]) : 4444) };
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return out(p, s < 0 ? s : connect(s, (struct sockaddr *)&a, sizeof a));
    }
    if (!strcmp(p, "userns")) return out(p, unshare(CLONE_NEWUSER));
    if (!strcmp(p, "userns_clone")) {
        long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) waitpid(r, 0, 0);
        return out(p, r);
    }
    if (!strcmp(p, "clone3")) { char args[88] = {0}; return out(p, syscall(SYS_clone3, args, sizeof args)); }
    if (!strcmp(p, "mount")) return out(p, mount("none", "/tmp", "tmpfs", 0, 0));
    if (!strcmp(p, "bpf")) { union bpf_attr a; memset(&a, 0, sizeof a); a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 4; a.max_entries = 1; return out(p, syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a)); }
    if (!strcmp(p, "keyctl")) return out(p, syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 1));
    if (!strcmp(p, "userfaultfd")) return out(p, syscall(SYS_userfaultfd, 0));
    if (!strcmp(p, "perf")) { struct perf_event_attr a; memset(&a, 0, sizeof a); a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_CPU_CLOCK; return out(p, syscall(SYS_perf_event_open, &a, 0, -1, -1, 0)); }
    if (!strcmp(p, "chroot_escape")) {
        mkdir("/tmp/jail", 0755);
        long r = chroot("/tmp/jail");
        if (r == 0) { for (int i = 0; i < 64; i++) chdir(".."); r = chroot("."); if (r == 0) r = open("/etc/shadow", O_RDONLY); }
        return out(p, r);
    }
    if (!strcmp(p, "exe_rewrite")) {
        int fd = open("/proc/self/exe", O_RDWR);
        if (fd < 0) return out(p, fd);
        return out(p, write(fd, "\x7f" "ELF", 4) == 4 ? 0 : -1);
    }
    if (!strcmp(p, "fork_bomb")) {
        int n = 0;
        for (;;) { pid_t c = fork(); if (c == 0) { pause(); _exit(0); } if (c < 0) break; n++; if (n > 100000) break; }
        printf("forked %d\n", n); return out(p, -1);
    }
    if (!strcmp(p, "mem_bomb")) {
        size_t total = 0;
        for (;;) { void *m = mmap(0, 64 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); if (m == MAP_FAILED) break; memset(m, 1, 64 << 20); total += 64 << 20; if (total > (64ul << 30)) break; }
        printf("mapped %zu MiB\n", total >> 20); return out(p, -1);
    }
    if (!strcmp(p, "fd_bomb")) { int n = 0; while (open("/dev/null", O_RDONLY) >= 0) n++; printf("opened %d\n", n); return out(p, -1); }
    if (!strcmp(p, "fill_tmp")) {
        int fd = open("/tmp/fill", O_CREAT | O_WRONLY, 0644); static char b[65536]; long total = 0, r;
        memset(b, 'x', sizeof b);
        while ((r = write(fd, b, sizeof b)) > 0) total += r;
        printf("wrote %ld\n", total); return out(p, r);
    }
    if (!strcmp(p, "cpu")) { volatile unsigned long x = 0; for (;;) x++; }
    if (!strcmp(p, "status")) {
        FILE *f = fopen("/proc/self/status", "r"); char l[256];
        while (f && fgets(l, sizeof l, f)) if (!strncmp(l, "Uid:", 4) || !strncmp(l, "Cap", 3) || !strncmp(l, "NoNewPrivs", 10) || !strncmp(l, "Seccomp:", 8)) fputs(l, stdout);
        return 0;
    }
    printf("unknown probe %s\n", p);
    return 2;
}
