/*
 * The floor the engine is measured against (issue 14): a minimal C epoll echo server, what a careful C
 * programmer writes for speed and nothing more. N processes, each with its own SO_REUSEPORT listener and
 * one level-triggered epoll loop; no drain, no control socket, no counters.
 *
 *   c_epoll_echo -p PORT [-w N] [-m echo|once] [-H HOST]
 *
 * echo: echo everything until the client closes (RFC 862). once: echo the first read, then close (the
 * talk's loop). Per echo connection: accept4, epoll_ctl(ADD), read, write, read (EOF), close, plus the
 * epoll_wait calls shared by all the connections ready at once. A short write stops reading on that
 * connection until the rest is written (backpressure), so every echoed byte arrives in order.
 *
 * SIGTERM or SIGINT ends the parent; it forwards the signal to its children. Built by `make bench`
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
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF 65536
#define MAX_EVENTS 256
#define MAX_WORKERS 256

struct conn {
    struct conn *next; /* in the spare list */
    int fd;
    size_t off, len; /* bytes of buf still to write: [off, len) */
    char buf[BUF];
};

static int once;
/* Connections closed are kept for reuse: malloc/free of 64 KiB blocks would cost a brk per connection. */
static struct conn *spare;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int listener(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0) die("socket");
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "c_epoll_echo: -H %s is not an IPv4 address\n", host);
        exit(2);
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

static void drop(struct conn *c) {
    close(c->fd); /* removes it from the epoll set */
    c->next = spare;
    spare = c;
}

/* Writes what is pending; returns -1 on error, 0 when all written, 1 when the socket is full. */
static int flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = write(c->fd, c->buf + c->off, c->len - c->off);
        if (n > 0) {
            c->off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return 1;
        } else {
            return -1;
        }
    }
    c->off = c->len = 0;
    return 0;
}

static void serve(int lfd) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[MAX_EVENTS];
    if (ep < 0) die("epoll_create1");
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                /* Accept everything queued: the last accept4 returns EAGAIN. */
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    if (spare != NULL) {
                        c = spare;
                        spare = c->next;
                    } else if ((c = malloc(sizeof *c)) == NULL) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    c->off = c->len = 0;
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce) < 0) drop(c);
                }
                continue;
            }
            if (c->len > 0) { /* EPOLLOUT: the rest of a short write */
                int r = flush(c);
                if (r < 0 || (r == 0 && once)) {
                    drop(c);
                } else if (r == 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ce);
                }
                continue;
            }
            ssize_t got = read(c->fd, c->buf, BUF);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                drop(c);
                continue;
            }
            c->off = 0;
            c->len = (size_t)got;
            int r = flush(c);
            if (r < 0 || (r == 0 && once)) {
                drop(c);
            } else if (r == 1) {
                struct epoll_event ce = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ce);
            }
        }
    }
}

static pid_t kids[MAX_WORKERS];
static int nkids;

static void forward(int sig) {
    for (int i = 0; i < nkids; i++) kill(kids[i], sig);
    _exit(0);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = -1, workers = 1, opt;
    while ((opt = getopt(argc, argv, "p:w:m:H:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'w': workers = atoi(optarg); break;
        case 'H': host = optarg; break;
        case 'm':
            if (strcmp(optarg, "once") == 0) once = 1;
            else if (strcmp(optarg, "echo") == 0) once = 0;
            else {
                fprintf(stderr, "c_epoll_echo: -m must be echo or once, not %s\n", optarg);
                return 2;
            }
            break;
        default:
            fprintf(stderr, "usage: c_epoll_echo -p PORT [-w N] [-m echo|once] [-H HOST]\n");
            return 2;
        }
    }
    if (port < 1 || port > 65535 || workers < 1 || workers > MAX_WORKERS) {
        fprintf(stderr, "c_epoll_echo: -p must be 1..65535 and -w 1..%d\n", MAX_WORKERS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < workers; i++) {
        int lfd = listener(host, port); /* bound before the fork, so the port is served when we return */
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) serve(lfd);
        close(lfd);
        kids[nkids++] = pid;
    }
    signal(SIGTERM, forward);
    signal(SIGINT, forward);
    /* Bounded by the children: each serves until killed; the parent exits when they have. */
    while (nkids > 0) {
        if (wait(NULL) < 0 && errno == ECHILD) break;
    }
    return 0;
}
