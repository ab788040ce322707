// The floor of a TCP hop on this machine: a relay that only copies bytes (no framing, no
// stamps, no buffers of its own beyond one read), so scripts/bench.sh can show what any relay
// must pay here, next to what ours and the anchors pay.
//
// One thread, level-triggered epoll, TCP_NODELAY on both sides, blocking writes (a ping-pong
// probe never fills a socket buffer), half-close passed on. With --busy-poll it spins on
// epoll_wait with a zero timeout instead of sleeping.
//
// usage: floor-relay LISTEN_PORT NEXT_PORT [--busy-poll]   (both on 127.0.0.1)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_FDS = 65536 };
static int peer_of[MAX_FDS];
static char read_closed[MAX_FDS];

static struct sockaddr_in loopback(const char *port) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

static void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void watch(int epoll_fd, int fd) {
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

static int write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t wrote = write(fd, data, len);
        if (wrote < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += wrote;
        len -= (size_t)wrote;
    }
    return 0;
}

static void accept_pair(int epoll_fd, int listener, const struct sockaddr_in *next) {
    int upstream = accept(listener, NULL, NULL);
    if (upstream < 0) return;
    int downstream = socket(AF_INET, SOCK_STREAM, 0);
    if (upstream >= MAX_FDS || downstream < 0 || downstream >= MAX_FDS) {
        fprintf(stderr, "floor-relay: out of descriptors\n");
        close(upstream);
        if (downstream >= 0) close(downstream);
        return;
    }
    if (connect(downstream, (const struct sockaddr *)next, sizeof *next) != 0) {
        perror("floor-relay: connect");
        close(upstream);
        if (downstream >= 0) close(downstream);
        return;
    }
    set_nodelay(upstream);
    set_nodelay(downstream);
    peer_of[upstream] = downstream;
    peer_of[downstream] = upstream;
    read_closed[upstream] = read_closed[downstream] = 0;
    watch(epoll_fd, upstream);
    watch(epoll_fd, downstream);
}

// Copies what `fd` has to its peer; on end of stream, passes the half-close on and closes the
// pair once both directions have ended; on an error, closes the pair at once.
static void forward(int epoll_fd, int fd) {
    static char chunk[65536];
    if (read_closed[fd]) return;  // its pair was closed earlier in this batch of events
    int peer = peer_of[fd];
    ssize_t got = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
    if (got > 0) {
        if (write_all(peer, chunk, (size_t)got) == 0) return;
    } else if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL);
    read_closed[fd] = 1;
    if (got == 0 && !read_closed[peer]) {
        shutdown(peer, SHUT_WR);
        return;
    }
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, peer, NULL);
    read_closed[peer] = 1;
    close(fd);
    close(peer);
}

int main(int argc, char **argv) {
    if (argc < 3 || (argc == 4 && strcmp(argv[3], "--busy-poll") != 0) || argc > 4) {
        fprintf(stderr, "usage: floor-relay LISTEN_PORT NEXT_PORT [--busy-poll]\n");
        return 2;
    }
    int busy_poll = argc == 4;
    signal(SIGPIPE, SIG_IGN);  // a peer that reset shows as a write error, not a dead relay
    struct sockaddr_in listen_addr = loopback(argv[1]), next = loopback(argv[2]);
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0 ||
        listen(listener, 128) != 0) {
        perror("floor-relay: listen");
        return 1;
    }
    int epoll_fd = epoll_create1(0);
    watch(epoll_fd, listener);
    struct epoll_event events[64];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, 64, busy_poll ? 0 : -1);
        for (int index = 0; index < ready; index++) {
            int fd = events[index].data.fd;
            if (fd == listener) {
                accept_pair(epoll_fd, listener, &next);
            } else {
                forward(epoll_fd, fd);
            }
        }
    }
}
