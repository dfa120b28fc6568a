/* A stand-in for Caffe's tools/compute_image_mean.cpp (raw Datums only), for benchmarks/bench_mean.py.
 *
 * What Caffe's tool does per record, in the same order: an LMDB cursor walks every key (MDB_NEXT), the
 * value is parsed into a Datum (ParseFromString copies the `data` bytes out of the map into the message's
 * string, so this copies them too), the first record fixes the size, every byte is added into a float
 * accumulator (Caffe's sum_blob is a float BlobProto), and the sum is divided by the count at the end.
 * Encoded (JPEG/PNG) records are not supported: the benchmark's database holds raw pixels.
 * Output: the record count, the size and the per-channel means, as compute_image_mean logs them.
 *
 *   gcc -O2 -o compute_image_mean compute_image_mean.c -llmdb
 *   compute_image_mean DB_FOLDER
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t channels, height, width;
    const uint8_t *data;
    size_t data_len;
    int has_float, encoded;
} Datum;

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    int shift = 0;
    while (*p < end && shift < 64) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) { *out = v; return 1; }
        shift += 7;
    }
    return 0;
}

/* Datum fields: 1 channels, 2 height, 3 width (varint), 4 data (bytes), 5 label, 6 float_data, 7 encoded. */
static int parse_datum(const uint8_t *p, size_t n, Datum *d) {
    const uint8_t *end = p + n;
    memset(d, 0, sizeof *d);
    while (p < end) {
        uint64_t tag, v, len;
        if (!read_varint(&p, end, &tag)) return 0;
        unsigned field = (unsigned)(tag >> 3), wire = (unsigned)(tag & 7);
        if (wire == 0) {
            if (!read_varint(&p, end, &v)) return 0;
            if (field == 1) d->channels = (int64_t)v;
            else if (field == 2) d->height = (int64_t)v;
            else if (field == 3) d->width = (int64_t)v;
            else if (field == 7) d->encoded = v != 0;
        } else if (wire == 2) {
            if (!read_varint(&p, end, &len) || len > (uint64_t)(end - p)) return 0;
            if (field == 4) { d->data = p; d->data_len = (size_t)len; }
            else if (field == 6) d->has_float = 1;
            p += len;
        } else if (wire == 5) {
            if (end - p < 4) return 0;
            if (field == 6) d->has_float = 1;
            p += 4;
        } else if (wire == 1) {
            if (end - p < 8) return 0;
            p += 8;
        } else {
            return 0;
        }
    }
    return 1;
}

#define CHECK(rc, what) do { int _rc = (rc); if (_rc) { fprintf(stderr, "%s: %s\n", what, mdb_strerror(_rc)); return 1; } } while (0)

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s LMDB_FOLDER\n", argv[0]); return 2; }
    MDB_env *env; MDB_txn *txn; MDB_dbi dbi; MDB_cursor *cur; MDB_val key, val;
    CHECK(mdb_env_create(&env), "mdb_env_create");
    CHECK(mdb_env_set_mapsize(env, (size_t)1 << 40), "mdb_env_set_mapsize");
    CHECK(mdb_env_open(env, argv[1], MDB_RDONLY | MDB_NOTLS, 0664), argv[1]);
    CHECK(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "mdb_txn_begin");
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi), "mdb_dbi_open");
    CHECK(mdb_cursor_open(txn, dbi, &cur), "mdb_cursor_open");
    float *sum = NULL;
    uint8_t *copy = NULL; /* the Datum's own copy of its data string, as ParseFromString makes */
    size_t size = 0, count = 0;
    Datum d, first = {0};
    int rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST);
    while (rc == 0) {
        if (!parse_datum(val.mv_data, val.mv_size, &d)) { fprintf(stderr, "record %zu: not a Datum\n", count); return 1; }
        if (d.encoded || d.has_float) { fprintf(stderr, "record %zu: only raw uint8 Datums are supported\n", count); return 1; }
        if (!sum) {
            first = d;
            size = d.data_len;
            sum = calloc(size ? size : 1, sizeof *sum);
            copy = malloc(size ? size : 1);
            if (!sum || !copy) { fprintf(stderr, "out of memory\n"); return 1; }
        } else if (d.data_len != size) {
            fprintf(stderr, "record %zu: incorrect data field size %zu\n", count, d.data_len); return 1;
        }
        memcpy(copy, d.data, size);
        for (size_t i = 0; i < size; ++i) sum[i] += (float)copy[i];
        ++count;
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
    }
    if (rc != MDB_NOTFOUND) CHECK(rc, "mdb_cursor_get");
    if (!count) { fprintf(stderr, "no records\n"); return 1; }
    size_t dim = (size_t)(first.height * first.width);
    printf("Processed %zu files. size %lldx%lldx%lld\n", count, (long long)first.channels,
           (long long)first.height, (long long)first.width);
    for (int64_t c = 0; c < first.channels && dim; ++c) {
        double m = 0;
        for (size_t j = 0; j < dim; ++j) m += sum[c * dim + j] / (float)count;
        printf("mean_value channel [%lld]: %g\n", (long long)c, m / (double)dim);
    }
    mdb_cursor_close(cur); mdb_txn_abort(txn); mdb_env_close(env);
    free(sum); free(copy);
    return 0;
}
