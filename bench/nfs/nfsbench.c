/* nfsbench: sequential and small-file NFSv3 load through libnfs (the same client library as
 * nfs-cp/nfs-cat), for bench/nfs/run.sh.
 *
 *   nfsbench URL seqwrite MIB      write MIB MiB to bench.bin in 1 MiB calls, fsync (COMMIT), close
 *   nfsbench URL seqread MIB       read bench.bin in 1 MiB calls
 *   nfsbench URL smallfiles N      mkdir small.<pid>; N x (creat + 4 KiB write + close); N x stat
 *   nfsbench URL create N          the first half alone, in small.fixed (for bench/nfs/instr.sh)
 *   nfsbench URL stat N            the second half alone, over small.fixed
 *
 * URL: nfs://HOST/EXPORT?version=3&nfsport=P&mountport=P (a directory URL).
 * Prints one line per figure: "<name> <value> <unit>". Exit 1 on any error. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <nfsc/libnfs.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(struct nfs_context *nfs, const char *what, int rc) {
    fprintf(stderr, "nfsbench: %s failed: %d %s\n", what, rc, nfs ? nfs_get_error(nfs) : "");
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: nfsbench URL seqwrite|seqread|smallfiles|create|stat N\n");
        return 2;
    }
    const char *mode = argv[2];
    long n = atol(argv[3]);
    struct nfs_context *nfs = nfs_init_context();
    if (!nfs) die(NULL, "nfs_init_context", -1);
    struct nfs_url *url = nfs_parse_url_dir(nfs, argv[1]);
    if (!url) die(nfs, "nfs_parse_url_dir", -1);
    int rc = nfs_mount(nfs, url->server, url->path);
    if (rc) die(nfs, "nfs_mount", rc);
    const size_t MIB = 1 << 20;
    char *buf = malloc(MIB);
    for (size_t i = 0; i < MIB; i++) buf[i] = (char)(i * 2654435761u >> 13);
    struct nfsfh *fh;
    if (!strcmp(mode, "seqwrite")) {
        double t0 = now();
        rc = nfs_open(nfs, "/bench.bin", O_WRONLY | O_CREAT | O_TRUNC, &fh);
        if (rc) rc = nfs_creat(nfs, "/bench.bin", 0644, &fh);
        if (rc) die(nfs, "open bench.bin", rc);
        for (long i = 0; i < n; i++) {
            buf[0] = (char)i;
            size_t done = 0;
            while (done < MIB) {
                rc = nfs_write(nfs, fh, MIB - done, buf + done);
                if (rc <= 0) die(nfs, "nfs_write", rc);
                done += rc;
            }
        }
        if ((rc = nfs_fsync(nfs, fh))) die(nfs, "nfs_fsync", rc);
        if ((rc = nfs_close(nfs, fh))) die(nfs, "nfs_close", rc);
        double dt = now() - t0;
        printf("seq_write_MBps %.1f MB/s\n", n * (double)MIB / 1e6 / dt);
    } else if (!strcmp(mode, "seqread")) {
        double t0 = now();
        if ((rc = nfs_open(nfs, "/bench.bin", O_RDONLY, &fh))) die(nfs, "open bench.bin", rc);
        uint64_t total = 0;
        for (;;) {
            rc = nfs_read(nfs, fh, MIB, buf);
            if (rc < 0) die(nfs, "nfs_read", rc);
            if (rc == 0) break;
            total += rc;
        }
        nfs_close(nfs, fh);
        double dt = now() - t0;
        if (total != (uint64_t)n * MIB) {
            fprintf(stderr, "nfsbench: read %llu bytes, expected %llu\n",
                    (unsigned long long)total, (unsigned long long)n * MIB);
            return 1;
        }
        printf("seq_read_MBps %.1f MB/s\n", total / 1e6 / dt);
    } else if (!strcmp(mode, "smallfiles") || !strcmp(mode, "create") || !strcmp(mode, "stat")) {
        int all = !strcmp(mode, "smallfiles"), create = all || !strcmp(mode, "create");
        char dir[64], path[128];
        if (all) snprintf(dir, sizeof dir, "/small.%d", (int)getpid());
        else snprintf(dir, sizeof dir, "/small.fixed");
        if (create && (rc = nfs_mkdir(nfs, dir))) die(nfs, "nfs_mkdir", rc);
        double t0 = now();
        for (long i = 0; create && i < n; i++) {
            snprintf(path, sizeof path, "%s/f%06ld", dir, i);
            if ((rc = nfs_creat(nfs, path, 0644, &fh))) die(nfs, "nfs_creat", rc);
            if ((rc = nfs_write(nfs, fh, 4096, buf)) != 4096) die(nfs, "small write", rc);
            if ((rc = nfs_close(nfs, fh))) die(nfs, "nfs_close", rc);
        }
        double t1 = now();
        struct nfs_stat_64 st;
        for (long i = 0; (all || !create) && i < n; i++) {
            snprintf(path, sizeof path, "%s/f%06ld", dir, i);
            if ((rc = nfs_stat64(nfs, path, &st))) die(nfs, "nfs_stat64", rc);
            if (st.nfs_size != 4096) { fprintf(stderr, "nfsbench: %s has size %llu\n", path, (unsigned long long)st.nfs_size); return 1; }
        }
        double t2 = now();
        if (create) printf("create_4k_ops %.0f ops/s\n", n / (t1 - t0));
        if (all || !create) printf("stat_ops %.0f ops/s\n", n / (t2 - t1));
    } else {
        fprintf(stderr, "nfsbench: unknown mode %s\n", mode);
        return 2;
    }
    nfs_destroy_url(url);
    nfs_destroy_context(nfs);
    free(buf);
    return 0;
}
