/* A small client of Intel's libtdx_attest (built unmodified from ../shared/clients/libtdx_attest by
 * tests/test_libtdx_attest.py): a report, extends of RTMR 2 and 3, extends of RTMR 0 and 1 (which
 * the library reports as TDX_ATTEST_ERROR_INVALID_RTMR_INDEX when the driver answers -EINVAL), and a
 * second report; with QUOTE, then a quote (tdx_att_get_quote: vsock, configfs or the ioctl, as the
 * library finds them, quote.md §2.7) for the same REPORTDATA.
 *
 * usage: tdx_attest_client REPORT1 REPORT2 [QUOTE]
 * Writes the TDREPORTs (and the quote) and prints one JSON object with every return code. */
#include <stdio.h>
#include <string.h>

#include "tdx_attest.h"

static int write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(buf, 1, len, f);
    fclose(f);
    return n == len ? 0 : -1;
}

static int extend(unsigned index, unsigned char byte)
{
    tdx_rtmr_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.version = 1;
    ev.rtmr_index = index;
    memset(ev.extend_data, byte, sizeof(ev.extend_data));
    ev.event_data_size = 0;
    return (int)tdx_att_extend(&ev);
}

int main(int argc, char **argv)
{
    tdx_report_data_t rd;
    tdx_report_t r1, r2;

    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s REPORT1 REPORT2 [QUOTE]\n", argv[0]);
        return 2;
    }
    memset(&rd, 0, sizeof(rd));
    memcpy(rd.d, "tdxmodel libtdx_attest client", 29);
    int report1 = (int)tdx_att_get_report(&rd, &r1);
    int ext2 = extend(2, 0x02);
    int ext3 = extend(3, 0x03);
    int ext1 = extend(1, 0x01);
    int ext0 = extend(0, 0x00);
    int ext4 = extend(4, 0x04);
    int report2 = (int)tdx_att_get_report(&rd, &r2);
    if (report1 == TDX_ATTEST_SUCCESS && write_file(argv[1], r1.d, sizeof(r1.d)))
        return 2;
    if (report2 == TDX_ATTEST_SUCCESS && write_file(argv[2], r2.d, sizeof(r2.d)))
        return 2;
    printf("{\"report1\": %d, \"extend2\": %d, \"extend3\": %d, \"extend1\": %d, \"extend0\": %d, "
           "\"extend4\": %d, \"report2\": %d", report1, ext2, ext3, ext1, ext0, ext4, report2);
    if (argc == 4) {
        uint8_t *quote = NULL;
        uint32_t quote_size = 0;
        tdx_uuid_t key_id;
        int q = (int)tdx_att_get_quote(&rd, NULL, 0, &key_id, &quote, &quote_size, 0);
        if (q == TDX_ATTEST_SUCCESS) {
            int bad = write_file(argv[3], quote, quote_size);
            tdx_att_free_quote(quote);
            if (bad)
                return 2;
        }
        printf(", \"quote\": %d", q);
    }
    printf("}\n");
    return 0;
}
