/* Runs a program of the rig's /usr inside a session: execwrap PATH ARGV0 [ARGS...]
 * (an uploaded binary can then start busybox, python3 or gdbserver as the session). */
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: execwrap PATH ARGV0 [ARGS...]\n"); return 2; }
    execv(argv[1], argv + 2);
    perror("execv");
    return 127;
}
