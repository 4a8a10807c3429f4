/*
 * The UDP floor the engine's UDP workers are measured against (issue 24): a minimal C echo over UDP, what a
 * careful C programmer writes for speed and nothing more. N processes, each with its own SO_REUSEPORT UDP
 * socket, each a loop of blocking recvmmsg (up to 32 datagrams) and one sendmmsg of the replies; no drain,
 * no control socket, no counters.
 *
 *   c_udp_echo -p PORT [-w N] [-H HOST]
 *
 * SIGTERM or SIGINT ends the parent; it forwards the signal to its children. Built by `make bench-udp`
 * (mk/bench.mk) into target/bench/.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define BATCH 32
#define DGRAM 65536
#define MAX_WORKERS 256

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int bound(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1, rcvbuf = 4 << 20;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0) die("socket");
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "c_udp_echo: -H %s is not an IPv4 address\n", host);
        exit(2);
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf); /* as the engine asks; capped by rmem_max */
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    return fd;
}

static void serve(int fd) {
    static char bufs[BATCH][DGRAM];
    struct sockaddr_storage from[BATCH];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = DGRAM};
            msgs[i].msg_hdr = (struct msghdr){
                .msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED) continue;
            die("recvmmsg");
        }
        for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
        for (int sent = 0; sent < n;) {
            int k = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), 0);
            if (k < 0) {
                if (errno == EINTR) continue;
                sent++; /* this reply cannot go: skip it */
            } else {
                sent += k;
            }
        }
    }
}

static pid_t children[MAX_WORKERS];
static int nchildren;

static void forward(int sig) {
    for (int i = 0; i < nchildren; i++) kill(children[i], sig);
    _exit(0);
}

int main(int argc, char **argv) {
    int port = 0, workers = 1, opt;
    const char *host = "127.0.0.1";
    while ((opt = getopt(argc, argv, "p:w:H:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'w': workers = atoi(optarg); break;
        case 'H': host = optarg; break;
        default:
            fprintf(stderr, "usage: c_udp_echo -p PORT [-w N] [-H HOST]\n");
            return 2;
        }
    }
    if (port <= 0 || workers < 1 || workers > MAX_WORKERS) {
        fprintf(stderr, "c_udp_echo: -p PORT (1..65535) and -w N (1..%d) are required\n", MAX_WORKERS);
        return 2;
    }
    int fds[MAX_WORKERS];
    for (int i = 0; i < workers; i++) fds[i] = bound(host, port); /* all bound before any reads */
    for (int i = 0; i < workers; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            for (int j = 0; j < workers; j++)
                if (j != i) close(fds[j]);
            serve(fds[i]);
        }
        children[nchildren++] = pid;
    }
    for (int i = 0; i < workers; i++) close(fds[i]);
    signal(SIGTERM, forward);
    signal(SIGINT, forward);
    fprintf(stderr, "c_udp_echo: %d worker(s) on udp %s:%d\n", workers, host, port);
    while (wait(NULL) > 0 || errno == EINTR) {
    }
    return 0;
}
