/*
 * Open-loop Redis load at a fixed rate: the floor of the lookup latency benchmark (bench/lookup_latency.py).
 *
 * Reads RESP-encoded commands (one per line of the input file: the raw bytes, "\r\n" included) and sends
 * command i at start + i / rate on one connection from a sender thread, whatever the replies do (no
 * coordinated omission); a receiver thread parses the replies in order and records each latency from the
 * command's *scheduled* time. Prints one JSON object: sent, replies, errors, p50/p99/p99.9/max in
 * microseconds, achieved rate.
 *
 * usage: openloop HOST PORT RATE SECONDS COMMANDS_FILE [AUTH_USER AUTH_PASSWORD] [DB]
 * build: cc -O2 -pthread -o openloop openloop.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int fd;
static char **cmds;
static size_t *lens;
static size_t ncmds, total;
static double rate;
static int64_t *scheduled, *latency;
static int64_t start_ns;
static volatile size_t sent;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void write_all(const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) { if (errno == EINTR) continue; perror("write"); exit(2); }
        buf += n; len -= (size_t)n;
    }
}

/* buffered reader over the socket */
static char rbuf[1 << 16];
static size_t rpos, rlen;
static int getbyte(void) {
    if (rpos == rlen) {
        ssize_t n = read(fd, rbuf, sizeof rbuf);
        if (n <= 0) return -1;
        rpos = 0; rlen = (size_t)n;
    }
    return (unsigned char)rbuf[rpos++];
}
static long readline_num(int *type) {
    int c = getbyte(); *type = c;
    char num[32]; size_t k = 0;
    while ((c = getbyte()) != '\r') { if (c < 0) return -2; if (k < 31) num[k++] = (char)c; }
    getbyte(); num[k] = 0;
    return (*type == '$' || *type == '*' || *type == ':') ? atol(num) : 0;
}
/* reads one reply; returns 1 for an error reply */
static int read_reply(void) {
    int type; long n = readline_num(&type);
    if (type < 0) { fprintf(stderr, "connection closed\n"); exit(2); }
    if (type == '$' && n >= 0) { for (long i = 0; i < n + 2; i++) getbyte(); }
    else if (type == '*' && n > 0) { int err = 0; for (long i = 0; i < n; i++) err |= read_reply(); return err; }
    return type == '-';
}

static void *sender(void *arg) {
    (void)arg;
    for (size_t i = 0; i < total; i++) {
        int64_t at = start_ns + (int64_t)((double)i * 1e9 / rate);
        if (at > now_ns()) {  /* sleep to the scheduled time (no spinning: the server needs the cores) */
            struct timespec ts = {(time_t)(at / 1000000000LL), (long)(at % 1000000000LL)};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        }
        __atomic_store_n(&scheduled[i], at, __ATOMIC_RELEASE);
        write_all(cmds[i % ncmds], lens[i % ncmds]);
        sent = i + 1;
    }
    return NULL;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void command(const char *a, const char *b, const char *c) {
    char buf[1024];
    int n = c ? snprintf(buf, sizeof buf, "*3\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", strlen(a), a, strlen(b), b, strlen(c), c)
              : snprintf(buf, sizeof buf, "*2\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", strlen(a), a, strlen(b), b);
    write_all(buf, (size_t)n);
    if (read_reply()) { fprintf(stderr, "%s refused\n", a); exit(2); }
}

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: openloop HOST PORT RATE SECONDS COMMANDS_FILE [USER PASSWORD] [DB]\n"); return 2; }
    rate = atof(argv[3]);
    total = (size_t)(rate * atof(argv[4]));
    FILE *f = fopen(argv[5], "rb");
    if (!f) { perror(argv[5]); return 2; }
    size_t cap = 1024; cmds = malloc(cap * sizeof *cmds); lens = malloc(cap * sizeof *lens);
    char *line = NULL; size_t lcap = 0; ssize_t l;
    while ((l = getline(&line, &lcap, f)) > 0) {
        /* each command is one RESP array; lines are split at "\n": re-join until the array is complete */
        if (ncmds == cap) { cap *= 2; cmds = realloc(cmds, cap * sizeof *cmds); lens = realloc(lens, cap * sizeof *lens); }
        cmds[ncmds] = malloc((size_t)l); memcpy(cmds[ncmds], line, (size_t)l); lens[ncmds] = (size_t)l;
        /* HGET key field: 7 lines; the file holds whole commands, the reader groups them below */
        ncmds++;
    }
    fclose(f);
    /* group every 7 lines (*3, $n, HGET, $n, key, $n, field) into one command */
    size_t groups = ncmds / 7;
    for (size_t g = 0; g < groups; g++) {
        size_t len = 0;
        for (size_t k = 0; k < 7; k++) len += lens[g * 7 + k];
        char *buf = malloc(len); size_t off = 0;
        for (size_t k = 0; k < 7; k++) { memcpy(buf + off, cmds[g * 7 + k], lens[g * 7 + k]); off += lens[g * 7 + k]; free(cmds[g * 7 + k]); }
        cmds[g] = buf; lens[g] = len;
    }
    ncmds = groups;
    if (!ncmds) { fprintf(stderr, "no commands in %s\n", argv[5]); return 2; }

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET; addr.sin_port = htons((uint16_t)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 2; }
    if (argc >= 8) command("AUTH", argv[6], argv[7]);
    if (argc >= 9) command("SELECT", argv[8], NULL);

    scheduled = calloc(total, sizeof *scheduled); latency = calloc(total, sizeof *latency);
    start_ns = now_ns() + 20000000LL;
    pthread_t t; pthread_create(&t, NULL, sender, NULL);
    size_t errors = 0;
    for (size_t i = 0; i < total; i++) {
        errors += (size_t)read_reply();
        latency[i] = now_ns() - __atomic_load_n(&scheduled[i], __ATOMIC_ACQUIRE);
    }
    int64_t end_ns = now_ns();
    pthread_join(t, NULL);
    qsort(latency, total, sizeof *latency, cmp64);
#define PCT(q) (latency[(size_t)((double)(total - 1) * (q))] / 1000.0)
    printf("{\"sent\": %zu, \"errors\": %zu, \"rate_target\": %.0f, \"rate_achieved\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           total, errors, rate, (double)total / ((double)(end_ns - start_ns) / 1e9),
           PCT(0.5), PCT(0.99), PCT(0.999), latency[total - 1] / 1000.0);
    return 0;
}
