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
#include <sys/fanotify.h>
#include <sys/personality.h>
#include <linux/netlink.h>
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
    case EAFNOSUPPORT: return "EAFNOSUPPORT"; case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
    }
}
static int out(const char *probe, long r) {
    printf("RESULT %s %s\n", probe, r < 0 ? name(errno) : "SUCCEEDED");
    fflush(stdout);
    return 0;
}

/* Runs `fn` in a child and reports how the child ended: "SIG<n>" if a signal killed it,
 * else the errno name it exited with (0 = the call succeeded). */
static int in_child(const char *probe, long (*fn)(void)) {
    pid_t c = fork();
    if (c == 0) { long r = fn(); _exit(r < 0 ? errno : 0); }
    int st = 0;
    waitpid(c, &st, 0);
    if (WIFSIGNALED(st)) printf("RESULT %s %s\n", probe, WTERMSIG(st) == SIGSYS ? "SIGSYS" : "SIGNAL");
    else if (WEXITSTATUS(st) == 0) printf("RESULT %s SUCCEEDED\n", probe);
    else printf("RESULT %s %s\n", probe, name(WEXITSTATUS(st)));
    fflush(stdout);
    return 0;
}
static long x32_unshare(void) { return syscall(0x40000000 | SYS_unshare, CLONE_NEWUSER); }
static long x32_getpid(void) { return syscall(0x40000000 | SYS_getpid); }
static long i386_getpid(void) { long r; __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory"); return r < 0 ? (errno = -r, -1) : r; }
/* Reads a file: "EMPTY" if it reads as nothing, "READ <n>" if it has content, else errno. */
static int read_file(const char *probe, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return out(probe, -1);
    char b[4096]; long n = read(fd, b, sizeof b);
    if (n < 0) return out(probe, -1);
    if (n == 0) printf("RESULT %s EMPTY\n", probe); else printf("RESULT %s READ %ld\n", probe, n);
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
    if (!strcmp(p, "vsock")) return out(p, socket(AF_VSOCK, SOCK_STREAM, 0));
    if (!strcmp(p, "packet")) return out(p, socket(AF_PACKET, SOCK_RAW, htons(0x0003)));
    if (!strcmp(p, "alg")) return out(p, socket(AF_ALG, SOCK_SEQPACKET, 0));
    if (!strcmp(p, "netlink_audit")) return out(p, socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT));
    if (!strcmp(p, "netlink_route")) return out(p, socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (!strcmp(p, "socketpair_inet")) { int sv[2]; return out(p, socketpair(AF_INET, SOCK_STREAM, 0, sv)); }
    if (!strcmp(p, "x32_unshare")) return in_child(p, x32_unshare);
    if (!strcmp(p, "x32_getpid")) return in_child(p, x32_getpid);
    if (!strcmp(p, "i386_getpid")) return in_child(p, i386_getpid);
    if (!strcmp(p, "beyond_table")) return out(p, syscall(1000, 0, 0, 0));
    if (!strcmp(p, "fanotify")) return out(p, fanotify_init(FAN_CLASS_NOTIF, O_RDONLY));
    if (!strcmp(p, "personality")) return out(p, personality(ADDR_NO_RANDOMIZE));
    if (!strcmp(p, "io_uring")) { char params[120] = {0}; return out(p, syscall(425 /* io_uring_setup */, 1, params)); }
    if (!strcmp(p, "read_cmdline")) return read_file(p, "/proc/cmdline");
    if (!strcmp(p, "read_keys")) return read_file(p, "/proc/keys");
    if (!strcmp(p, "read_kcore")) return read_file(p, "/proc/kcore");
    if (!strcmp(p, "read_timer_list")) return read_file(p, "/proc/timer_list");
    if (!strcmp(p, "read_sched_debug")) return read_file(p, "/proc/sched_debug");
    if (!strcmp(p, "read_meminfo")) return read_file(p, "/proc/meminfo");
    if (!strcmp(p, "write_sysctl")) return out(p, open("/proc/sys/kernel/domainname", O_WRONLY));
    if (!strcmp(p, "sysrq")) return out(p, open("/proc/sysrq-trigger", O_WRONLY));
    if (!strcmp(p, "sys")) return out(p, open("/sys", O_RDONLY | O_DIRECTORY));
    if (!strcmp(p, "mount_opts")) {
        /* The options of the mount at argv[2], from mountinfo: "ro" or "rw", or ABSENT. */
        FILE *f = fopen("/proc/self/mountinfo", "r"); char l[1024]; const char *want = argc > 2 ? argv[2] : "";
        const char *res = "ABSENT";
        while (f && fgets(l, sizeof l, f)) {
            char mp[512], opts[256];
            if (sscanf(l, "%*s %*s %*s %*s %511s %255s", mp, opts) == 2 && !strcmp(mp, want))
                res = !strncmp(opts, "ro", 2) ? "ro" : "rw";
        }
        printf("RESULT %s %s\n", p, res); return 0;
    }
    if (!strcmp(p, "cgroup")) {
        FILE *f = fopen("/proc/self/cgroup", "r"); char l[512]; int n = 0;
        if (!f) return out(p, -1);
        while (fgets(l, sizeof l, f)) { printf("CG %s", l); n++; }
        printf("RESULT %s %d\n", p, n); return 0;
    }
    printf("unknown probe %s\n", p);
    return 2;
}
