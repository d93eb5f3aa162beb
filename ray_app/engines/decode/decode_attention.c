/* One decode step's attention for the rows of a RunningBatch (see attention_kernel.py for why this
   exists and how it is built and loaded).

   The key/value buffers are [slots, kv_heads, width, head_dim] with each row right-aligned. Row i
   (spans[5i..5i+5) = {slot, start, prefix slot, prefix start, prefix length}) attends over the
   `prefix length` columns of the prefix slot from `prefix start` (a prompt prefix it shares with
   other rows: one copy, read by all of them while it is in cache), then over its own columns
   [start, end), as one sequence of columns: where the prefix slot's copy equals its own, its result
   is the bytes it gives reading its own copy. Its `per` query heads per key head (grouped-query
   attention) are q[slot, head, 0..per) and read that head's keys and values. Work items are
   (row, key head) pairs split across the OpenMP threads (torch's own libgomp: the same thread count
   torch uses); every item is computed by one thread in a fixed order, so a row's result depends on
   its own data only, never on the thread count or on the rows beside it. fp32 and bf16 tensors; the
   sums are fp32 in both (a bf16 row's output is rounded to bf16 once, at the end).

   A score is a dot product over head_dim in 16 lanes (lane l sums dimensions l, l + 16, ...), its lanes
   then added pairwise (8 apart, 4, 2, 1). Built for AVX-512, where head_dim is a multiple of 16, 16
   columns' scores are computed at once in vectors of 16 floats (GCC/clang vector extensions), their
   lanes added by shuffles that pair the same lanes in the same order, so a score has the same bits in a
   block of 16 columns as alone; built for AVX2, 8 columns at once in vectors of 8 floats the same way
   (EIGHT_PATH below); elsewhere the same sums run a column at a time. With `lse`, each row's
   log-sum-exp too (torch's flash kernel for a shared prefix is merged with it where the vector path is
   missing). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16    /* partial sums per dot product, added pairwise at the end */
#define PREFETCH 16 /* columns ahead */
#define MAX_CHUNKS 16 /* head_dim up to 256 in the vector path */
/* The vector path wants 32 vector registers of 16 floats (AVX-512): with AVX2's 16 of 8 floats the
   same code spills and its shuffles cross registers (measured 2x slower than the column-at-a-time
   loops, built with -march=haswell on the AMD EPYC), so AVX2 has the path below instead. */
/* AVX2 (16 registers of 8 floats) has a path of its own, EIGHT_PATH: a score's 16 lanes are two vectors of
   8, added (8 apart), and then 8 columns' sums are added across at once by shuffles (4 apart, 2, 1): the
   same additions in the same order as the column loops, each column's horizontal sum spread over a block.
   -DVECTOR_PATH=0 builds the column loops alone, -DVECTOR_PATH=0 -DEIGHT_PATH=1 the AVX2 path on any CPU
   with AVX2 and FMA (the tests compare the three). */
#ifdef VECTOR_PATH /* given on the command line */
#ifndef EIGHT_PATH
#define EIGHT_PATH 0
#endif
#else
#ifdef __AVX512F__
#define VECTOR_PATH 1
#define EIGHT_PATH 0
#elif defined(__AVX2__) && defined(__FMA__)
#define VECTOR_PATH 0
#define EIGHT_PATH 1
#else
#define VECTOR_PATH 0
#define EIGHT_PATH 0
#endif
#endif

/* Whether this build has the vector path: a row then reads a shared prefix in its own pass at the speed
   of a GEMM-backed flash call (without it, a group's flash call and a merge are faster: attention_kernel.py). */
int decode_attention_vector_path(void) { return VECTOR_PATH; }

/* Vectors of N floats (and their int32, uint32 and bf16 companions), with loads of N floats and of N bf16
   widened to floats (each one's bits in the top half). */
#define VECTOR_TYPES(N)                                                                                     \
    typedef float v##N##f __attribute__((vector_size(4 * N)));                                           \
    typedef int32_t v##N##i __attribute__((vector_size(4 * N)));                                         \
    typedef uint32_t v##N##u __attribute__((vector_size(4 * N)));                                        \
    typedef uint16_t v##N##h __attribute__((vector_size(2 * N)));                                        \
    static inline v##N##f f32_load##N(const float *p) {                                                    \
        v##N##f v;                                                                                         \
        memcpy(&v, p, sizeof v);                                                                           \
        return v;                                                                                          \
    }                                                                                                      \
    static inline v##N##f bf16_load##N(const uint16_t *p) {                                                \
        v##N##h half;                                                                                      \
        memcpy(&half, p, sizeof half);                                                                     \
        return (v##N##f)(__builtin_convertvector(half, v##N##u) << 16);                                   \
    }
VECTOR_TYPES(16)

/* lanes of a and b (b's numbered from the width on), picked by index: GCC's and clang's builtins */
#ifdef __clang__
#define SHUFFLE_OF(N, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE_OF(N, a, b, ...) __builtin_shuffle(a, b, (v##N##i){__VA_ARGS__})
#endif
#define SHUFFLE(a, b, ...) SHUFFLE_OF(16, a, b, __VA_ARGS__)

static inline v16f splat(float value) { return (v16f){0} + value; }

static inline v16f exp_nonpositive(v16f x) {
    /* e^x for x <= 0 (a score minus its row's maximum), 16 at a time: Cephes' expf (range reduction by
       ln 2, degree-6 polynomial; ~1 ulp), clamped below; floor() as truncation, less one where that
       rounded up (below zero). */
    v16i low = x < -87.0f;
    x = (v16f)(((v16i)splat(-87.0f) & low) | ((v16i)x & ~low));
    v16f t = x * 1.44269504088896341f + 0.5f;
    v16f n = __builtin_convertvector(__builtin_convertvector(t, v16i), v16f);
    n = n - (v16f)((v16i)splat(1.0f) & (n > t));
    v16f r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16f p = splat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    return p * (v16f)((__builtin_convertvector(n, v16i) + 127) << 23);
}

static inline float f32_load(float value) { return value; }
static inline float f32_store(float value) { return value; }

static inline float bf16_load(uint16_t half) {
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint16_t bf16_store(float value) { /* round to nearest, ties to even, as torch does */
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline void prefetch_column(const void *column, int64_t bytes) {
    for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch((const char *)column + offset);
}

static inline float lanes_sum(v16f a) { /* lanes added pairwise: 8 apart, then 4, 2, 1 */
    float b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i) b[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; ++i) c[i] = b[i] + b[i + 4];
    for (int i = 0; i < 2; ++i) d[i] = c[i] + c[i + 2];
    return d[0] + d[1];
}

/* The block of 16 columns whose dot products were summed into a[slot]: a[s] belongs to column
   SLOT_COLUMN[s], so that after the four pairwise stages of blocks_sum lane l holds column l. */
static const int SLOT_COLUMN[16] = {0, 4, 2, 6, 1, 5, 3, 7, 8, 12, 10, 14, 9, 13, 11, 15};

static inline v16f blocks_sum(const v16f *a) { /* lanes_sum of 16 vectors at once, the same additions */
    v16f v[8], w[4], x[2];
    for (int p = 0; p < 8; ++p)
        v[p] = SHUFFLE(a[2 * p], a[2 * p + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
             + SHUFFLE(a[2 * p], a[2 * p + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int q = 0; q < 4; ++q)
        w[q] = SHUFFLE(v[2 * q], v[2 * q + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
             + SHUFFLE(v[2 * q], v[2 * q + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int r = 0; r < 2; ++r)
        x[r] = SHUFFLE(w[2 * r], w[2 * r + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
             + SHUFFLE(w[2 * r], w[2 * r + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    return SHUFFLE(x[0], x[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + SHUFFLE(x[0], x[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

static float max_of(const float *s, int64_t length) {
    float peaks[LANES];
    for (int lane = 0; lane < LANES; ++lane) peaks[lane] = -INFINITY;
    int64_t whole = length - length % LANES;
    for (int64_t j = 0; j < whole; j += LANES)
        for (int lane = 0; lane < LANES; ++lane) peaks[lane] = peaks[lane] < s[j + lane] ? s[j + lane] : peaks[lane];
    for (int64_t j = whole; j < length; ++j) peaks[0] = peaks[0] < s[j] ? s[j] : peaks[0];
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int lane = 0; lane < width; ++lane)
            peaks[lane] = peaks[lane] < peaks[lane + width] ? peaks[lane + width] : peaks[lane];
    return peaks[0];
}

static float sum_of(const float *s, int64_t length) {
    float totals[LANES] = {0};
    int64_t whole = length - length % LANES;
    for (int64_t j = 0; j < whole; j += LANES)
        for (int lane = 0; lane < LANES; ++lane) totals[lane] += s[j + lane];
    for (int64_t j = whole; j < length; ++j) totals[0] += s[j];
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int lane = 0; lane < width; ++lane) totals[lane] += totals[lane + width];
    return totals[0];
}

/* column j of a row's sequence: the shared prefix's columns first, then its own */
#define COLUMN(base, j) ((base) + ((j) < counts[0] ? offsets[0] + (j) * head_dim : offsets[1] + ((j) - counts[0]) * head_dim))
#define HEADS 4 /* query heads whose sums are kept in registers together (a column is loaded once for them) */

/* One (row, key head) item's scores (per rows of `stride` floats, scaled) and sums (per × head_dim,
   unnormalized) with vectors of 16 floats; `chunks` = head_dim / 16 (a constant where it is inlined,
   so the loops over it unroll). Query heads go HEADS at a time: a column is loaded and widened once for
   them. */
#define VECTOR_PASSES(T, LOAD16)                                                                            \
    static inline __attribute__((always_inline)) void widen_##T(                                         \
        const T *base, const int64_t *counts, const int64_t *offsets, int64_t head_dim, int64_t j,         \
        int64_t length, int prefetch, int64_t chunks, v16f *out) { /* column j as fp32 chunks */           \
        if (prefetch && j + PREFETCH < length)                                                             \
            prefetch_column(COLUMN(base, j + PREFETCH), head_dim * (int64_t)sizeof(T));                    \
        const T *column = COLUMN(base, j);                                                                 \
        for (int64_t c = 0; c < chunks; ++c) out[c] = LOAD16(column + 16 * c);                            \
    }                                                                                                      \
    static inline __attribute__((always_inline)) void vector_scores_##T(                                   \
        const float *query, const T *k, const int64_t *counts, const int64_t *offsets, int64_t length,     \
        int64_t stride, int64_t per, int64_t head_dim, int64_t chunks, float scale, float *scores) {      \
        for (int64_t h0 = 0; h0 < per; h0 += HEADS) {                                                      \
            int heads = per - h0 < HEADS ? (int)(per - h0) : HEADS;                                        \
            v16f q[HEADS][MAX_CHUNKS];                                                                     \
            for (int h = 0; h < heads; ++h)                                                                \
                for (int64_t c = 0; c < chunks; ++c) q[h][c] = f32_load16(query + (h0 + h) * head_dim + 16 * c); \
            int64_t j = 0;                                                                                 \
            for (; j + 16 <= length; j += 16) {                                                            \
                v16f a[HEADS][16];                                                                         \
                for (int slot = 0; slot < 16; ++slot) {                                                    \
                    v16f keys[MAX_CHUNKS];                                                                 \
                    widen_##T(k, counts, offsets, head_dim, j + SLOT_COLUMN[slot], length, h0 == 0, chunks, keys); \
                    for (int h = 0; h < HEADS; ++h) {                                                      \
                        if (h >= heads) break;                                                             \
                        v16f acc = q[h][0] * keys[0];                                                      \
                        for (int64_t c = 1; c < chunks; ++c) acc += q[h][c] * keys[c];                     \
                        a[h][slot] = acc;                                                                  \
                    }                                                                                      \
                }                                                                                          \
                for (int h = 0; h < heads; ++h) {                                                          \
                    v16f block = blocks_sum(a[h]) * scale;                                                 \
                    memcpy(scores + (h0 + h) * stride + j, &block, sizeof block);                          \
                }                                                                                          \
            }                                                                                              \
            for (; j < length; ++j) {                                                                      \
                v16f keys[MAX_CHUNKS];                                                                     \
                widen_##T(k, counts, offsets, head_dim, j, length, 0, chunks, keys);                       \
                for (int h = 0; h < heads; ++h) {                                                          \
                    v16f acc = q[h][0] * keys[0];                                                          \
                    for (int64_t c = 1; c < chunks; ++c) acc += q[h][c] * keys[c];                         \
                    scores[(h0 + h) * stride + j] = lanes_sum(acc) * scale;                                \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    static inline __attribute__((always_inline)) void vector_values_##T(                                   \
        const T *v, const int64_t *counts, const int64_t *offsets, int64_t length, int64_t stride,         \
        int64_t per, int64_t head_dim, int64_t chunks, const float *scores, float *sums) {                \
        for (int64_t h0 = 0; h0 < per; h0 += HEADS) {                                                      \
            int heads = per - h0 < HEADS ? (int)(per - h0) : HEADS;                                        \
            v16f acc[HEADS][MAX_CHUNKS];                                                                   \
            for (int h = 0; h < HEADS; ++h)                                                                \
                for (int64_t c = 0; c < chunks; ++c) acc[h][c] = (v16f){0};                                \
            for (int64_t j = 0; j < length; ++j) {                                                         \
                v16f values[MAX_CHUNKS];                                                                   \
                widen_##T(v, counts, offsets, head_dim, j, length, h0 == 0, chunks, values);               \
                for (int h = 0; h < HEADS; ++h) {                                                          \
                    if (h >= heads) break;                                                                 \
                    float weight = scores[(h0 + h) * stride + j];                                          \
                    for (int64_t c = 0; c < chunks; ++c) acc[h][c] += weight * values[c];                  \
                }                                                                                          \
            }                                                                                              \
            for (int h = 0; h < heads; ++h)                                                                \
                for (int64_t c = 0; c < chunks; ++c)                                                       \
                    memcpy(sums + (h0 + h) * head_dim + 16 * c, &acc[h][c], sizeof acc[h][c]);             \
        }                                                                                                  \
    }

/* column j of a row's sequence widened to fp32 into `column`, the column PREFETCH ahead prefetched; and
   one item's scores and sums a column at a time with it (where the vector path is not built) */
#define COLUMN_PASSES(T, LOAD)                                                                              \
    static inline __attribute__((always_inline)) void widen_column_##T(                                  \
        const T *base, const int64_t *counts, const int64_t *offsets, int64_t head_dim, int64_t j,         \
        int64_t length, float *column) {                                                                   \
        if (j + PREFETCH < length) prefetch_column(COLUMN(base, j + PREFETCH), head_dim * (int64_t)sizeof(T)); \
        const T *source = COLUMN(base, j);                                                                 \
        for (int64_t d = 0; d < head_dim; ++d) column[d] = LOAD(source[d]);                                \
    }                                                                                                      \
    static inline __attribute__((always_inline)) void column_scores_##T(                                   \
        const float *query, const T *k, const int64_t *counts, const int64_t *offsets, int64_t length,     \
        int64_t stride, int64_t per, int64_t head_dim, float scale, float *column, float *scores) {       \
        int64_t whole_dims = head_dim - head_dim % LANES;                                                  \
        for (int64_t j = 0; j < length; ++j) {                                                             \
            widen_column_##T(k, counts, offsets, head_dim, j, length, column);                             \
            for (int64_t h = 0; h < per; ++h) {                                                            \
                float acc[LANES] = {0};                                                                    \
                for (int64_t d = 0; d < whole_dims; d += LANES)                                            \
                    for (int lane = 0; lane < LANES; ++lane) acc[lane] += query[h * head_dim + d + lane] * column[d + lane]; \
                for (int64_t d = whole_dims; d < head_dim; ++d) acc[d - whole_dims] += query[h * head_dim + d] * column[d]; \
                for (int width = LANES / 2; width > 0; width /= 2)                                         \
                    for (int lane = 0; lane < width; ++lane) acc[lane] += acc[lane + width];               \
                scores[h * stride + j] = acc[0] * scale;                                                   \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    static inline __attribute__((always_inline)) void column_values_##T(                                   \
        const T *v, const int64_t *counts, const int64_t *offsets, int64_t length, int64_t stride,         \
        int64_t per, int64_t head_dim, const float *scores, float *column, float *sums) {                 \
        memset(sums, 0, sizeof(float) * per * head_dim);                                                   \
        for (int64_t j = 0; j < length; ++j) {                                                             \
            widen_column_##T(v, counts, offsets, head_dim, j, length, column);                             \
            for (int64_t h = 0; h < per; ++h) {                                                            \
                float weight = scores[h * stride + j];                                                     \
                for (int64_t d = 0; d < head_dim; ++d) sums[h * head_dim + d] += weight * column[d];       \
            }                                                                                              \
        }                                                                                                  \
    }

/* One (row, key head) item: its `per` query heads' scores over the row's `length` columns, their softmax
   (and log-sum-exps into `lse` when given) and the weighted sum of values, written to `out` at query head
   `first`. `chunks` = head_dim / 16 with the vector path, 0 without; a constant where it is inlined, so
   the loops over it unroll and the other path's branch drops out. */
#define ATTEND_ITEM(T, LOAD, STORE)                                                                         \
    static inline __attribute__((always_inline)) void attend_item_##T(                                    \
        const T *q, const T *k, const T *v, const int64_t *counts, const int64_t *offsets, int64_t first, \
        int64_t per, int64_t head_dim, int64_t chunks, float scale, int64_t padded, float *scores,        \
        float *query, float *sums, float *column, float *inverse_sums, T *out, float *lse) {              \
        int64_t length = counts[0] + counts[1];                                                            \
        for (int64_t i = 0; i < per * head_dim; ++i) query[i] = LOAD(q[first * head_dim + i]);            \
        if (chunks)                                                                                        \
            vector_scores_##T(query, k, counts, offsets, length, padded, per, head_dim, chunks, scale, scores); \
        else                                                                                               \
            column_scores_##T(query, k, counts, offsets, length, padded, per, head_dim, scale, column, scores); \
        for (int64_t h = 0; h < per; ++h) { /* softmax, unnormalized: divided at the end */                \
            float *s = scores + h * padded, peak = max_of(s, length);                                      \
            for (int64_t j = 0; j < length; j += 16) { /* whole vectors: `padded` leaves room */           \
                v16f e = exp_nonpositive(f32_load16(s + j) - peak);                                        \
                memcpy(s + j, &e, sizeof e);                                                               \
            }                                                                                              \
            float total = sum_of(s, length);                                                               \
            if (lse) lse[first + h] = peak + logf(total);                                                  \
            inverse_sums[h] = 1.0f / total;                                                                \
        }                                                                                                  \
        if (chunks)                                                                                        \
            vector_values_##T(v, counts, offsets, length, padded, per, head_dim, chunks, scores, sums);    \
        else                                                                                               \
            column_values_##T(v, counts, offsets, length, padded, per, head_dim, scores, column, sums);     \
        for (int64_t h = 0; h < per; ++h)                                                                  \
            for (int64_t d = 0; d < head_dim; ++d)                                                         \
                out[(first + h) * head_dim + d] = STORE(sums[h * head_dim + d] * inverse_sums[h]);         \
    }

typedef uint16_t bf16;
#if VECTOR_PATH
VECTOR_PASSES(float, f32_load16)
VECTOR_PASSES(bf16, bf16_load16)
#elif EIGHT_PATH
VECTOR_TYPES(8)
#define SHUFFLE8(a, b, ...) SHUFFLE_OF(8, a, b, __VA_ARGS__)

/* The block of 8 columns whose "8 apart" sums are in c[slot]: c[s] belongs to column SLOT8_COLUMN[s], so
   that after the shuffles of blocks8_sum lane l holds column l. */
static const int SLOT8_COLUMN[8] = {0, 4, 1, 5, 2, 6, 3, 7};

static inline v8f blocks8_sum(const v8f *c) { /* the column loops' "4 apart, 2, 1" for 8 columns at once */
    v8f d[4], e[2];
    for (int p = 0; p < 4; ++p)
        d[p] = SHUFFLE8(c[2 * p], c[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11)
             + SHUFFLE8(c[2 * p], c[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int r = 0; r < 2; ++r)
        e[r] = SHUFFLE8(d[2 * r], d[2 * r + 1], 0, 1, 8, 9, 4, 5, 12, 13)
             + SHUFFLE8(d[2 * r], d[2 * r + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return SHUFFLE8(e[0], e[1], 0, 2, 8, 10, 4, 6, 12, 14) + SHUFFLE8(e[0], e[1], 1, 3, 9, 11, 5, 7, 13, 15);
}

/* One (row, key head) item's scores and sums, 8 floats at a time; `chunks` = head_dim / 16 as above. A
   score: lanes 0-7 and 8-15 of each 16 dimensions in two vectors (each lane's products added in the
   column loops' order, from zero), the two added (8 apart), then blocks8_sum. A sum: each dimension's
   weighted values added column after column from zero, as the column loops do, in registers. */
#define EIGHT_PASSES(T, LOAD8)                                                                              \
    static inline __attribute__((always_inline)) v8f halves_sum_##T(const v8f *q, const T *column,         \
                                                                    int64_t chunks) {                      \
        v8f low = (v8f){0}, high = (v8f){0}; /* lanes 0-7 and 8-15 of the column loops' 16 */              \
        for (int64_t c = 0; c < chunks; ++c) {                                                             \
            low += q[2 * c] * LOAD8(column + 16 * c);                                                      \
            high += q[2 * c + 1] * LOAD8(column + 16 * c + 8);                                             \
        }                                                                                                  \
        return low + high; /* their "8 apart" */                                                           \
    }                                                                                                      \
    static inline __attribute__((always_inline)) void vector_scores_##T(                                   \
        const float *query, const T *k, const int64_t *counts, const int64_t *offsets, int64_t length,     \
        int64_t stride, int64_t per, int64_t head_dim, int64_t chunks, float scale, float *scores) {      \
        for (int64_t h = 0; h < per; ++h) {                                                                \
            v8f q[2 * MAX_CHUNKS];                                                                         \
            for (int64_t c = 0; c < 2 * chunks; ++c) q[c] = f32_load8(query + h * head_dim + 8 * c);       \
            int64_t j = 0;                                                                                 \
            for (; j + 8 <= length; j += 8) {                                                              \
                v8f sums8[8];                                                                              \
                for (int slot = 0; slot < 8; ++slot) {                                                     \
                    int64_t column_index = j + SLOT8_COLUMN[slot];                                         \
                    if (h == 0 && column_index + PREFETCH < length)                                        \
                        prefetch_column(COLUMN(k, column_index + PREFETCH), head_dim * (int64_t)sizeof(T)); \
                    sums8[slot] = halves_sum_##T(q, COLUMN(k, column_index), chunks);                     \
                }                                                                                          \
                v8f block = blocks8_sum(sums8) * scale;                                                    \
                memcpy(scores + h * stride + j, &block, sizeof block);                                     \
            }                                                                                              \
            for (; j < length; ++j) {                                                                      \
                v8f lanes = halves_sum_##T(q, COLUMN(k, j), chunks);                                       \
                float b[4], d[2];                                                                          \
                for (int i = 0; i < 4; ++i) b[i] = lanes[i] + lanes[i + 4];                                \
                for (int i = 0; i < 2; ++i) d[i] = b[i] + b[i + 2];                                        \
                scores[h * stride + j] = (d[0] + d[1]) * scale;                                            \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    static inline __attribute__((always_inline)) void vector_values_##T(                                   \
        const T *v, const int64_t *counts, const int64_t *offsets, int64_t length, int64_t stride,         \
        int64_t per, int64_t head_dim, int64_t chunks, const float *scores, float *sums) {                \
        for (int64_t h = 0; h < per; ++h) {                                                                \
            v8f acc[2 * MAX_CHUNKS];                                                                       \
            for (int64_t c = 0; c < 2 * chunks; ++c) acc[c] = (v8f){0};                                    \
            for (int64_t j = 0; j < length; ++j) {                                                         \
                if (h == 0 && j + PREFETCH < length)                                                       \
                    prefetch_column(COLUMN(v, j + PREFETCH), head_dim * (int64_t)sizeof(T));               \
                const T *column = COLUMN(v, j);                                                            \
                float weight = scores[h * stride + j];                                                     \
                for (int64_t c = 0; c < 2 * chunks; ++c) acc[c] += weight * LOAD8(column + 8 * c);         \
            }                                                                                              \
            for (int64_t c = 0; c < 2 * chunks; ++c) memcpy(sums + h * head_dim + 8 * c, &acc[c], sizeof acc[c]); \
        }                                                                                                  \
    }
EIGHT_PASSES(float, f32_load8)
EIGHT_PASSES(bf16, bf16_load8)
#else
/* Without the vector path `chunks` is always 0 and these are never called: empty, so the compiler does not
   generate (and, on AVX2, take ~20 s over) 16-wide vector code emulated in 8-wide registers. */
#define NO_VECTOR_PASSES(T)                                                                                 \
    static inline void vector_scores_##T(const float *query, const T *k, const int64_t *counts,            \
        const int64_t *offsets, int64_t length, int64_t stride, int64_t per, int64_t head_dim,            \
        int64_t chunks, float scale, float *scores) {}                                                     \
    static inline void vector_values_##T(const T *v, const int64_t *counts, const int64_t *offsets,        \
        int64_t length, int64_t stride, int64_t per, int64_t head_dim, int64_t chunks, const float *scores, \
        float *sums) {}
NO_VECTOR_PASSES(float)
NO_VECTOR_PASSES(bf16)
#endif
COLUMN_PASSES(float, f32_load)
COLUMN_PASSES(bf16, bf16_load)
ATTEND_ITEM(float, f32_load, f32_store)
ATTEND_ITEM(bf16, bf16_load, bf16_store)

#define DECODE_ATTENTION(NAME, T, STORE)                                                                    \
    void NAME(const T *q, const T *k, const T *v, int64_t slot_stride, int64_t head_stride,                \
              const int64_t *spans, int64_t rows, int64_t end, int64_t kv_heads, int64_t per,              \
              int64_t head_dim, float scale, T *out, float *lse) {                                         \
        int64_t chunks = (VECTOR_PATH || EIGHT_PATH) && head_dim % 16 == 0 && head_dim <= 16 * MAX_CHUNKS ? head_dim / 16 : 0; \
        _Pragma("omp parallel") {                                                                          \
            float *scores = NULL;                                                                          \
            int64_t capacity = 0;                                                                          \
            float query[per * head_dim], sums[per * head_dim], column[head_dim], inverse_sums[per];       \
            _Pragma("omp for schedule(static)") for (int64_t item = 0; item < rows * kv_heads; ++item) {   \
                const int64_t *span = spans + 5 * (item / kv_heads);                                       \
                int64_t head = item % kv_heads, slot = span[0], start = span[1];                           \
                int64_t counts[2] = {span[4], end - start}; /* the shared prefix's columns, its own */     \
                int64_t offsets[2] = {span[2] * slot_stride + head * head_stride + span[3] * head_dim,     \
                                      slot * slot_stride + head * head_stride + start * head_dim};         \
                int64_t length = counts[0] + counts[1], padded = (length + 15) / 16 * 16;                  \
                int64_t first = (slot * kv_heads + head) * per;                                            \
                if (length <= 0) { /* no columns at all (all in a prefix merged elsewhere): nothing */     \
                    for (int64_t i = 0; i < per * head_dim; ++i) out[first * head_dim + i] = STORE(0.0f);  \
                    for (int64_t h = 0; h < per && lse; ++h) lse[first + h] = -INFINITY;                   \
                    continue;                                                                              \
                }                                                                                          \
                if (capacity < per * padded) {                                                             \
                    free(scores);                                                                          \
                    capacity = per * padded;                                                               \
                    scores = (float *)malloc(sizeof(float) * capacity);                                    \
                }                                                                                          \
                if (chunks == 4) /* head_dim 64 */                                                         \
                    attend_item_##T(q, k, v, counts, offsets, first, per, head_dim, 4, scale, padded, scores, \
                                    query, sums, column, inverse_sums, out, lse);                         \
                else if (chunks == 8)                                                                      \
                    attend_item_##T(q, k, v, counts, offsets, first, per, head_dim, 8, scale, padded, scores, \
                                    query, sums, column, inverse_sums, out, lse);                         \
                else /* other head dims, and the column-at-a-time build (chunks 0) */                      \
                    attend_item_##T(q, k, v, counts, offsets, first, per, head_dim, chunks, scale, padded, scores, \
                                    query, sums, column, inverse_sums, out, lse);                         \
            }                                                                                              \
            free(scores);                                                                                  \
        }                                                                                                  \
    }

DECODE_ATTENTION(decode_attention_f32, float, f32_store)
DECODE_ATTENTION(decode_attention_bf16, bf16, bf16_store)
