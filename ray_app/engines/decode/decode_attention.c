/* One decode step's attention for the rows of a RunningBatch (see attention_kernel.py for why this
   exists and how it is built and loaded).

   The key/value buffers are [slots, kv_heads, width, head_dim] with each row right-aligned: row i
   (spans[i] = {slot, start}) attends over columns [start, end). Its `per` query heads per key head
   (grouped-query attention) are q[slot, head, 0..per) and read that head's keys and values once,
   in one pass over the keys and one over the values. Work items are (row, key head) pairs split
   across the OpenMP threads (torch's own libgomp: the same thread count torch uses); every item is
   computed by one thread in a fixed order, so a row's result depends on its own data only, never on
   the thread count or on the rows beside it. fp32 and bf16 tensors; the sums are fp32 in both (a bf16
   row's output is rounded to bf16 once, at the end). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16    /* partial sums per dot product, added pairwise at the end */
#define PREFETCH 16 /* columns ahead */

static inline float exp_nonpositive(float x) {
    /* e^x for x <= 0 (a score minus its row's maximum), written so the loop around it vectorizes:
       Cephes' expf (range reduction by ln 2, degree-6 polynomial; ~1 ulp), clamped below. */
    if (x < -87.0f) x = -87.0f;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

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

static float max_of(const float *s, int64_t length) {
    float peaks[LANES];
    for (int lane = 0; lane < LANES; ++lane) peaks[lane] = -INFINITY;
    int64_t whole = length - length % LANES;
    for (int64_t j = 0; j < whole; j += LANES)
        for (int lane = 0; lane < LANES; ++lane) peaks[lane] = fmaxf(peaks[lane], s[j + lane]);
    for (int64_t j = whole; j < length; ++j) peaks[0] = fmaxf(peaks[0], s[j]);
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int lane = 0; lane < width; ++lane) peaks[lane] = fmaxf(peaks[lane], peaks[lane + width]);
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

#define DECODE_ATTENTION(NAME, T, LOAD, STORE)                                                              \
    void NAME(const T *q, const T *k, const T *v, int64_t slot_stride, int64_t head_stride,                \
              const int64_t *spans, int64_t rows, int64_t end, int64_t kv_heads, int64_t per,              \
              int64_t head_dim, float scale, T *out, float *lse) {                                         \
        _Pragma("omp parallel") {                                                                          \
            float *scores = NULL;                                                                          \
            int64_t capacity = 0;                                                                          \
            float query[per * head_dim], sums[per * head_dim], column[head_dim];                           \
            int64_t whole_dims = head_dim - head_dim % LANES;                                              \
            _Pragma("omp for schedule(static)") for (int64_t item = 0; item < rows * kv_heads; ++item) {   \
                int64_t row = item / kv_heads, head = item % kv_heads, slot = spans[2 * row];              \
                int64_t start = spans[2 * row + 1], length = end - start;                                  \
                const T *keys = k + slot * slot_stride + head * head_stride + start * head_dim;            \
                const T *values = v + slot * slot_stride + head * head_stride + start * head_dim;          \
                int64_t first = (slot * kv_heads + head) * per;                                            \
                if (length <= 0) { /* no columns of its own (all in a shared prefix): nothing to attend */ \
                    for (int64_t i = 0; i < per * head_dim; ++i) out[first * head_dim + i] = STORE(0.0f);  \
                    for (int64_t h = 0; h < per && lse; ++h) lse[first + h] = -INFINITY;                   \
                    continue;                                                                              \
                }                                                                                          \
                for (int64_t i = 0; i < per * head_dim; ++i) query[i] = LOAD(q[first * head_dim + i]);    \
                if (capacity < per * length) {                                                             \
                    free(scores);                                                                          \
                    capacity = per * length;                                                               \
                    scores = (float *)malloc(sizeof(float) * capacity);                                    \
                }                                                                                          \
                for (int64_t j = 0; j < length; ++j) { /* scores: one pass over the keys */                \
                    const T *key = keys + j * head_dim;                                                    \
                    prefetch_column(key + PREFETCH * head_dim, head_dim * (int64_t)sizeof(T));             \
                    for (int64_t d = 0; d < head_dim; ++d) column[d] = LOAD(key[d]);                       \
                    for (int64_t h = 0; h < per; ++h) {                                                    \
                        float acc[LANES] = {0};                                                            \
                        for (int64_t d = 0; d < whole_dims; d += LANES)                                    \
                            for (int lane = 0; lane < LANES; ++lane)                                       \
                                acc[lane] += query[h * head_dim + d + lane] * column[d + lane];            \
                        for (int64_t d = whole_dims; d < head_dim; ++d)                                    \
                            acc[d - whole_dims] += query[h * head_dim + d] * column[d];                    \
                        for (int width = LANES / 2; width > 0; width /= 2)                                 \
                            for (int lane = 0; lane < width; ++lane) acc[lane] += acc[lane + width];       \
                        scores[h * length + j] = acc[0] * scale;                                           \
                    }                                                                                      \
                }                                                                                          \
                float inverse_sums[per];                                                                   \
                for (int64_t h = 0; h < per; ++h) { /* softmax, unnormalized: divided at the end */        \
                    float *s = scores + h * length, peak = max_of(s, length);                              \
                    for (int64_t j = 0; j < length; ++j) s[j] = exp_nonpositive(s[j] - peak);              \
                    float total = sum_of(s, length);                                                       \
                    if (lse) lse[first + h] = peak + logf(total);                                          \
                    inverse_sums[h] = 1.0f / total;                                                        \
                }                                                                                          \
                memset(sums, 0, sizeof sums);                                                              \
                for (int64_t j = 0; j < length; ++j) { /* outputs: one pass over the values */             \
                    const T *value = values + j * head_dim;                                                \
                    prefetch_column(value + PREFETCH * head_dim, head_dim * (int64_t)sizeof(T));           \
                    for (int64_t d = 0; d < head_dim; ++d) column[d] = LOAD(value[d]);                     \
                    for (int64_t h = 0; h < per; ++h) {                                                    \
                        float weight = scores[h * length + j];                                             \
                        for (int64_t d = 0; d < head_dim; ++d) sums[h * head_dim + d] += weight * column[d]; \
                    }                                                                                      \
                }                                                                                          \
                for (int64_t h = 0; h < per; ++h)                                                          \
                    for (int64_t d = 0; d < head_dim; ++d)                                                 \
                        out[(first + h) * head_dim + d] = STORE(sums[h * head_dim + d] * inverse_sums[h]); \
            }                                                                                              \
            free(scores);                                                                                  \
        }                                                                                                  \
    }

DECODE_ATTENTION(decode_attention_f32, float, (float), (float))
DECODE_ATTENTION(decode_attention_bf16, uint16_t, bf16_load, bf16_store)
