/*
 * tsm_client.c - a configfs-tsm client written as go-configfs-tsm's report.Get behaves (quote.md
 * §2.8), in C so it also runs under the LD_PRELOAD library, plus the misuse cases of quote.md §1.
 * No tdxmodel header: it only knows the kernel's paths and errnos.
 *
 *   tsm_client flow REPORTDIR OUTFILE REPORTDATA_HEX   temporary item, inblob, outblob, provider,
 *                                                      the generation after each read, RemoveAll
 *   tsm_client misuse REPORTDIR                        oversize inblob, zero-length write, mixed
 *                                                      read/write fds, reads before any inblob
 *   tsm_client empty REPORTDIR                         one quote whose outblob may be empty
 *
 * Prints one JSON object; exit 0 unless the flow's own checks fail (a GenerationErr: 3).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char item[4096];

/* os.ReadFile: open, fstat for a size hint, read to EOF. Returns bytes read or -errno. */
static long read_file(const char *path, unsigned char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    size_t used = 0;
    for (;;) {
        if (used == cap) {
            close(fd);
            return -ENOSPC;
        }
        ssize_t n = read(fd, buf + used, cap - used);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    return (long)used;
}

static long attr(const char *name, unsigned char *buf, size_t cap)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", item, name);
    return read_file(path, buf, cap);
}

static long generation(void)
{
    unsigned char buf[64];
    long n = attr("generation", buf, sizeof(buf) - 1);
    if (n < 0)
        return n;
    buf[n] = 0;
    return strtol((char *)buf, NULL, 10);
}

/* os.WriteFile(name, data, 0220): O_WRONLY|O_CREATE|O_TRUNC, one write, close. -errno of the write
 * (or the open), else 0; close's result is what configfs returns (0: the commit is not reported). */
static int write_file(const char *name, const unsigned char *data, size_t len, int *close_ret)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", item, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0220);
    if (fd < 0)
        return -errno;
    int r = write(fd, data, len) < 0 ? -errno : 0;
    int c = close(fd);
    if (close_ret)
        *close_ret = c;
    return r;
}

static int make_temp_item(const char *dir)
{
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int tries = 0; tries < 100; tries++) {
        snprintf(item, sizeof(item), "%s/entry%u", dir, (unsigned)rand());
        if (mkdir(item, 0700) == 0)
            return 0;
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

/* os.RemoveAll of an item: Remove = unlink, then rmdir. Returns rmdir's -errno; *unlink_err its. */
static int remove_all(int *unlink_err)
{
    *unlink_err = unlink(item) == 0 ? 0 : errno;
    return rmdir(item) == 0 ? 0 : -errno;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int flow(const char *dir, const char *out, const char *hex)
{
    unsigned char reportdata[64] = {0};
    size_t hl = strlen(hex);
    for (size_t i = 0; i + 1 < hl && i / 2 < 64; i += 2)
        reportdata[i / 2] = (unsigned char)(hexval(hex[i]) << 4 | hexval(hex[i + 1]));
    int r = make_temp_item(dir);
    if (r < 0) {
        printf("{\"error\": \"mkdir\", \"errno\": %d}\n", -r);
        return 1;
    }
    long g0 = generation();
    int close_ret = -1;
    int w = write_file("inblob", reportdata, 64, &close_ret);
    static unsigned char blob[1 << 20];
    long n = attr("outblob", blob, sizeof(blob));
    long g_outblob = generation();
    unsigned char prov[64];
    long pn = attr("provider", prov, sizeof(prov) - 1);
    long g_provider = generation();
    prov[pn > 0 ? pn : 0] = 0;
    if (pn > 0 && prov[pn - 1] == '\n')
        prov[pn - 1] = 0;
    /* go-configfs-tsm: after each read the generation must be the write count (one write) */
    int gen_ok = g0 >= 0 && g_outblob == g0 + 1 && g_provider == g0 + 1;
    if (n > 0) {
        FILE *f = fopen(out, "wb");
        if (!f || fwrite(blob, 1, (size_t)n, f) != (size_t)n || fclose(f) != 0) {
            printf("{\"error\": \"cannot write %s\"}\n", out);
            return 1;
        }
    }
    char name[4096];
    snprintf(name, sizeof(name), "%s", strrchr(item, '/') + 1);
    int unlink_err = 0;
    int rm = remove_all(&unlink_err);
    struct stat st;
    int gone = stat(item, &st) < 0 && errno == ENOENT;
    printf("{\"item\": \"%s\", \"write\": %d, \"close\": %d, \"outblob\": %ld, \"provider\": \"%s\", "
           "\"generations\": [%ld, %ld, %ld], \"generation_ok\": %s, \"unlink_errno\": %d, "
           "\"rmdir\": %d, \"gone\": %s}\n",
           name, w, close_ret, n, (char *)prov, g0, g_outblob, g_provider, gen_ok ? "true" : "false",
           unlink_err, rm, gone ? "true" : "false");
    return gen_ok ? 0 : 3;
}

static int err_of(long r) { return r < 0 ? (int)-r : 0; }

static int misuse(const char *dir)
{
    int r = make_temp_item(dir);
    if (r < 0) {
        printf("{\"error\": \"mkdir\", \"errno\": %d}\n", -r);
        return 1;
    }
    char path[4200];
    unsigned char buf[256];
    memset(buf, 0x5a, sizeof(buf));
    /* an outblob read before any inblob: R1 */
    long before_inblob = attr("outblob", buf, sizeof(buf));
    /* oversize inblob: -EFBIG at write time; the commit at close gets nothing */
    snprintf(path, sizeof(path), "%s/inblob", item);
    int fd = open(path, O_WRONLY);
    long big = write(fd, buf, 65) < 0 ? -errno : 65;
    close(fd);
    long gen_after_big = generation();
    /* a zero-length write */
    fd = open(path, O_WRONLY);
    long zero = write(fd, buf, 0);
    zero = zero < 0 ? -errno : zero;
    close(fd);
    long gen_after_zero = generation();
    /* one fd for reading and writing */
    int rdwr_in = open(path, O_RDWR);
    int e_in = rdwr_in < 0 ? errno : 0;
    if (rdwr_in >= 0)
        close(rdwr_in);
    snprintf(path, sizeof(path), "%s/outblob", item);
    int rdwr_out = open(path, O_RDWR);
    int e_out = rdwr_out < 0 ? errno : 0;
    if (rdwr_out >= 0)
        close(rdwr_out);
    /* reading the write-only inblob, writing the read-only generation */
    snprintf(path, sizeof(path), "%s/inblob", item);
    int ro_in = open(path, O_RDONLY);
    int e_ro_in = ro_in < 0 ? errno : 0;
    if (ro_in >= 0)
        close(ro_in);
    snprintf(path, sizeof(path), "%s/generation", item);
    int wo_gen = open(path, O_WRONLY);
    int e_wo_gen = wo_gen < 0 ? errno : 0;
    if (wo_gen >= 0)
        close(wo_gen);
    /* the item twice, a directory below an item, rmdir of an attribute */
    int e_again = mkdir(item, 0700) < 0 ? errno : 0;
    snprintf(path, sizeof(path), "%s/sub", item);
    int e_sub = mkdir(path, 0700) < 0 ? errno : 0;
    snprintf(path, sizeof(path), "%s/outblob", item);
    int e_rm_attr = rmdir(path) < 0 ? errno : 0;
    int unlink_err = 0;
    int rm = remove_all(&unlink_err);
    printf("{\"outblob_before_inblob\": %d, \"oversize\": %d, \"generation_after_oversize\": %ld, "
           "\"zero_length\": %ld, \"generation_after_zero\": %ld, \"rdwr_inblob\": %d, "
           "\"rdwr_outblob\": %d, \"rdonly_inblob\": %d, \"wronly_generation\": %d, \"mkdir_again\": %d, "
           "\"mkdir_below_item\": %d, \"rmdir_attribute\": %d, \"unlink_errno\": %d, \"rmdir\": %d}\n",
           err_of(before_inblob), err_of(big), gen_after_big, zero, gen_after_zero, e_in, e_out,
           e_ro_in, e_wo_gen, e_again, e_sub, e_rm_attr, unlink_err, rm);
    return 0;
}

static int empty(const char *dir)
{
    int r = make_temp_item(dir);
    if (r < 0) {
        printf("{\"error\": \"mkdir\", \"errno\": %d}\n", -r);
        return 1;
    }
    unsigned char data[64] = {1};
    int w = write_file("inblob", data, 64, NULL);
    static unsigned char blob[1 << 16];
    long n = attr("outblob", blob, sizeof(blob));
    long again = attr("outblob", blob, sizeof(blob)); /* errors are not cached; EOF is */
    int unlink_err = 0;
    int rm = remove_all(&unlink_err);
    printf("{\"write\": %d, \"outblob\": %ld, \"outblob_again\": %ld, \"rmdir\": %d}\n", w, n, again, rm);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "flow") == 0)
        return flow(argv[2], argv[3], argv[4]);
    if (argc == 3 && strcmp(argv[1], "misuse") == 0)
        return misuse(argv[2]);
    if (argc == 3 && strcmp(argv[1], "empty") == 0)
        return empty(argv[2]);
    fprintf(stderr, "usage: tsm_client flow REPORTDIR OUT HEX | misuse REPORTDIR | empty REPORTDIR\n");
    return 2;
}
