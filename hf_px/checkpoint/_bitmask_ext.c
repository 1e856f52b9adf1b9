/*
 * Native decoding kernels for hf-px `bitmask` checkpoints (optional accelerator).
 *
 * hf_px.checkpoint.bitmask decodes with numpy when this module is missing; the
 * two produce bit-identical tensors (tests/test_bitmask_native.py). The numpy
 * path needs several full passes over the n elements of a tensor (unpack,
 * nonzero, int64 positions, scatter); these kernels make one pass, release the
 * GIL, and are called on disjoint chunks from a thread pool.
 *
 * Every input is checked before it is read: a corrupt index raises ValueError,
 * never reads or writes out of bounds.
 *
 *   expand_bitmask(mask, values, out, nbits, itemsize)
 *       out[e] = e-th bit of `mask` (LSB first) ? next value : 0, e < nbits
 *   scatter_elias_fano(low, plane_bytes, low_bits, upper, start_bit, values,
 *                      first, out, numel, itemsize)
 *       out[p_i] = values[i - first] for the Elias-Fano positions p_i of the
 *       stored elements first .. first + len(values)/itemsize - 1
 *   count_ones(bits, nbits) -> number of set bits among the first nbits
 *   select_one(bits, rank) -> index of the rank-th set bit (0-based)
 *
 * All buffers are C-contiguous bytes-like objects (numpy uint8 views).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

/* Acquire n buffers (the last one writable when `last_writable`); all or none. */
static int get_buffers(PyObject **objs, Py_buffer *views, const char **names, int n,
                       int last_writable)
{
    for (int i = 0; i < n; i++) {
        if (get_buffer(objs[i], &views[i], last_writable && i == n - 1, names[i]) < 0) {
            while (--i >= 0)
                PyBuffer_Release(&views[i]);
            return -1;
        }
    }
    return 0;
}

static void release_buffers(Py_buffer *views, int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
}

static int check_itemsize(Py_ssize_t itemsize)
{
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "itemsize must be 1, 2, 4 or 8");
        return -1;
    }
    return 0;
}

static uint64_t popcount_bytes(const uint8_t *p, Py_ssize_t nbytes)
{
    uint64_t total = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        total += (uint64_t)__builtin_popcountll(w);
    }
    for (; i < nbytes; i++)
        total += (uint64_t)__builtin_popcount(p[i]);
    return total;
}

/* One byte of mask → 8 output elements; `c` counts the values consumed. The
 * value read for a clear bit is discarded; `c - (c == m)` keeps that read in
 * bounds when every value has been used (m > 0 whenever a bit is set). */
#define EXPAND_KERNEL(T)                                                          \
    static void expand_##T(const uint8_t *mask, const uint8_t *vals_raw,          \
                           uint8_t *out_raw, Py_ssize_t nbits, Py_ssize_t m)      \
    {                                                                             \
        const T *v = (const T *)vals_raw;                                         \
        T *o = (T *)out_raw;                                                      \
        Py_ssize_t c = 0;                                                         \
        Py_ssize_t full = nbits / 8;                                              \
        for (Py_ssize_t i = 0; i < full; i++) {                                   \
            uint8_t b = mask[i];                                                  \
            T *oo = o + 8 * i;                                                    \
            if (b == 0) {                                                         \
                memset(oo, 0, 8 * sizeof(T));                                     \
            } else if (b == 0xFF) {                                               \
                memcpy(oo, v + c, 8 * sizeof(T));                                 \
                c += 8;                                                           \
            } else {                                                              \
                for (int j = 0; j < 8; j++) {                                     \
                    T x;                                                          \
                    memcpy(&x, v + (c - (c == m)), sizeof(T));                    \
                    int bit = (b >> j) & 1;                                       \
                    oo[j] = bit ? x : (T)0;                                       \
                    c += bit;                                                     \
                }                                                                 \
            }                                                                     \
        }                                                                         \
        for (Py_ssize_t e = 8 * full; e < nbits; e++) {                           \
            if ((mask[e >> 3] >> (e & 7)) & 1) {                                  \
                memcpy(o + e, v + c, sizeof(T));                                  \
                c++;                                                              \
            } else {                                                              \
                o[e] = (T)0;                                                      \
            }                                                                     \
        }                                                                         \
    }

EXPAND_KERNEL(uint8_t)
EXPAND_KERNEL(uint16_t)
EXPAND_KERNEL(uint32_t)
EXPAND_KERNEL(uint64_t)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HFPX_AVX2 1
#include <immintrin.h>

/* EXPAND_IDX[b][t]: for a set bit t of b, its rank among b's set bits. */
static int32_t EXPAND_IDX[256][8];
static int32_t EXPAND_MASK[256][8];
static int have_avx2 = 0;

static void init_expand(void)
{
    for (int b = 0; b < 256; b++) {
        int r = 0;
        for (int t = 0; t < 8; t++) {
            int set = (b >> t) & 1;
            EXPAND_IDX[b][t] = set ? r : 0;
            EXPAND_MASK[b][t] = set ? -1 : 0;
            r += set;
        }
    }
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
}

/* 4-byte elements, 8 per mask byte: load 8 values, permute them into their
 * slots, zero the clear ones. Stops where 8 values are no longer there to be
 * loaded; returns the number of mask bytes done and the values used in *used. */
__attribute__((target("avx2"))) static Py_ssize_t expand32_avx2(const uint8_t *mask,
                                                                const uint8_t *vals,
                                                                uint8_t *out, Py_ssize_t nbytes,
                                                                Py_ssize_t m, Py_ssize_t *used)
{
    Py_ssize_t c = 0, i = 0;
    for (; i < nbytes && c + 8 <= m; i++) {
        unsigned b = mask[i];
        __m256i v = _mm256_loadu_si256((const __m256i *)(vals + 4 * c));
        __m256i idx = _mm256_loadu_si256((const __m256i *)EXPAND_IDX[b]);
        __m256i keep = _mm256_loadu_si256((const __m256i *)EXPAND_MASK[b]);
        __m256i r = _mm256_and_si256(_mm256_permutevar8x32_epi32(v, idx), keep);
        _mm256_storeu_si256((__m256i *)(out + 32 * i), r);
        c += __builtin_popcount(b);
    }
    *used = c;
    return i;
}
#else
static void init_expand(void) {}
#endif

static PyObject *expand_bitmask(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mask_o, *vals_o, *out_o;
    Py_ssize_t nbits, itemsize;
    if (!PyArg_ParseTuple(args, "OOOnn", &mask_o, &vals_o, &out_o, &nbits, &itemsize))
        return NULL;
    if (check_itemsize(itemsize) < 0)
        return NULL;
    if (nbits < 0) {
        PyErr_SetString(PyExc_ValueError, "nbits must be >= 0");
        return NULL;
    }
    PyObject *objs[3] = {mask_o, vals_o, out_o};
    const char *names[3] = {"mask", "values", "out"};
    Py_buffer views[3];
    if (get_buffers(objs, views, names, 3, 1) < 0)
        return NULL;
    Py_buffer mask = views[0], vals = views[1], out = views[2];
    const char *error = NULL;
    Py_ssize_t nbytes = (nbits + 7) / 8;
    if (mask.len < nbytes)
        error = "corrupt bitmask index (short bitmask)";
    else if (out.len != nbits * itemsize)
        error = "output buffer has the wrong size";
    else if (vals.len % itemsize != 0)
        error = "values buffer is not a whole number of elements";
    if (error == NULL) {
        const uint8_t *mp = (const uint8_t *)mask.buf;
        Py_ssize_t m = vals.len / itemsize;
        uint64_t ones;
        Py_BEGIN_ALLOW_THREADS
        ones = popcount_bytes(mp, nbits / 8);
        for (Py_ssize_t e = 8 * (nbits / 8); e < nbits; e++)
            ones += (mp[e >> 3] >> (e & 7)) & 1;
        if (ones == (uint64_t)m) {
            switch (itemsize) {
            case 1: expand_uint8_t(mp, vals.buf, out.buf, nbits, m); break;
            case 2: expand_uint16_t(mp, vals.buf, out.buf, nbits, m); break;
            case 4: {
                const uint8_t *vb = (const uint8_t *)vals.buf;
                uint8_t *ob = (uint8_t *)out.buf;
                Py_ssize_t done = 0, used = 0;
#ifdef HFPX_AVX2
                if (have_avx2)
                    done = expand32_avx2(mp, vb, ob, nbits / 8, m, &used);
#endif
                expand_uint32_t(mp + done, vb + 4 * used, ob + 32 * done, nbits - 8 * done,
                                m - used);
                break;
            }
            default: expand_uint64_t(mp, vals.buf, out.buf, nbits, m); break;
            }
        }
        Py_END_ALLOW_THREADS
        if (ones != (uint64_t)m)
            error = "corrupt bitmask index (count mismatch)";
    }
    release_buffers(views, 3);
    if (error != NULL) {
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* SPREAD[b]: byte t of the result holds bit t of b (low bits of 8 values at once). */
static uint64_t SPREAD[256];

static void init_spread(void)
{
    for (int b = 0; b < 256; b++) {
        uint64_t v = 0;
        for (int t = 0; t < 8; t++)
            v |= (uint64_t)((b >> t) & 1) << (8 * t);
        SPREAD[b] = v;
    }
}

static uint64_t load_word(const uint8_t *p, Py_ssize_t len, Py_ssize_t wi)
{
    uint64_t w = 0;
    Py_ssize_t off = wi * 8;
    if (off + 8 <= len) {
        memcpy(&w, p + off, 8);
    } else {
        for (Py_ssize_t i = off; i < len; i++)
            w |= (uint64_t)p[i] << (8 * (i - off));
    }
    return w;
}

/* Positions p_i = (high_i << l) | low_i, high_i = (index of the i-th one in
 * `upper`) - i; scanning starts at `start_bit`, which must hold the first one
 * of this chunk. Returns NULL on success, else an error message. */
static const char *ef_scatter(const uint8_t *low, Py_ssize_t plane_bytes, int l,
                              const uint8_t *upper, Py_ssize_t upper_len, Py_ssize_t start_bit,
                              const uint8_t *vals, Py_ssize_t k, Py_ssize_t first,
                              uint8_t *out, Py_ssize_t numel, Py_ssize_t itemsize)
{
    Py_ssize_t nwords = (upper_len + 7) / 8;
    Py_ssize_t wi = start_bit >> 6;
    if (wi >= nwords)
        return "corrupt bitmask index (too few positions)";
    uint64_t w = load_word(upper, upper_len, wi) & (~(uint64_t)0 << (start_bit & 63));
    Py_ssize_t prev = -1;
    uint64_t lows = 0;
    for (Py_ssize_t t = 0; t < k; t++) {
        Py_ssize_t i = first + t;
        while (w == 0) {
            if (++wi >= nwords)
                return "corrupt bitmask index (too few positions)";
            w = load_word(upper, upper_len, wi);
        }
        Py_ssize_t q = wi * 64 + __builtin_ctzll(w);
        w &= w - 1;
        Py_ssize_t high = q - i;
        Py_ssize_t lowv = 0;
        if (l <= 8) {
            if (t == 0 || (i & 7) == 0) {
                lows = 0;
                for (int j = 0; j < l; j++)
                    lows |= SPREAD[low[j * plane_bytes + (i >> 3)]] << j;
            }
            lowv = (Py_ssize_t)((lows >> (8 * (i & 7))) & 0xFF);
        } else {
            for (int j = 0; j < l; j++)
                lowv |= (Py_ssize_t)((low[j * plane_bytes + (i >> 3)] >> (i & 7)) & 1) << j;
        }
        if (high < 0 || high > (PY_SSIZE_T_MAX >> l))
            return "corrupt bitmask index (position out of range)";
        Py_ssize_t pos = (high << l) | lowv;
        if (pos >= numel || pos <= prev)
            return "corrupt bitmask index (position out of range)";
        prev = pos;
        memcpy(out + pos * itemsize, vals + t * itemsize, (size_t)itemsize);
    }
    return NULL;
}

static PyObject *scatter_elias_fano(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *low_o, *upper_o, *vals_o, *out_o;
    Py_ssize_t plane_bytes, start_bit, first, numel, itemsize;
    int low_bits;
    if (!PyArg_ParseTuple(args, "OniOnOnOnn", &low_o, &plane_bytes, &low_bits, &upper_o,
                          &start_bit, &vals_o, &first, &out_o, &numel, &itemsize))
        return NULL;
    if (check_itemsize(itemsize) < 0)
        return NULL;
    if (low_bits < 0 || low_bits > 62 || plane_bytes < 0 || start_bit < 0 || first < 0 ||
        numel < 0) {
        PyErr_SetString(PyExc_ValueError, "corrupt bitmask index (bad header)");
        return NULL;
    }
    PyObject *objs[4] = {low_o, upper_o, vals_o, out_o};
    const char *names[4] = {"low", "upper", "values", "out"};
    Py_buffer views[4];
    if (get_buffers(objs, views, names, 4, 1) < 0)
        return NULL;
    Py_buffer low = views[0], upper = views[1], vals = views[2], out = views[3];
    const char *error = NULL;
    Py_ssize_t k = vals.len / itemsize;
    if (vals.len % itemsize != 0)
        error = "values buffer is not a whole number of elements";
    else if (out.len != numel * itemsize)
        error = "output buffer has the wrong size";
    else if (low.len < (Py_ssize_t)low_bits * plane_bytes ||
             (k > 0 && ((first + k - 1) >> 3) >= plane_bytes && low_bits > 0))
        error = "corrupt bitmask index (short low bits)";
    if (error == NULL && k > 0) {
        Py_BEGIN_ALLOW_THREADS
        error = ef_scatter(low.buf, plane_bytes, low_bits, upper.buf, upper.len, start_bit,
                           vals.buf, k, first, out.buf, numel, itemsize);
        Py_END_ALLOW_THREADS
    }
    release_buffers(views, 4);
    if (error != NULL) {
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Arguments (bits, n) of count_ones / select_one. */
static int parse_bits_and_count(PyObject *args, Py_buffer *bits, Py_ssize_t *n)
{
    PyObject *bits_o;
    if (!PyArg_ParseTuple(args, "On", &bits_o, n))
        return -1;
    return get_buffer(bits_o, bits, 0, "bits");
}

static PyObject *count_ones(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t nbits;
    Py_buffer bits;
    if (parse_bits_and_count(args, &bits, &nbits) < 0)
        return NULL;
    if (nbits < 0 || (nbits + 7) / 8 > bits.len) {
        PyBuffer_Release(&bits);
        PyErr_SetString(PyExc_ValueError, "corrupt bitmask index (short bitmask)");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)bits.buf;
    uint64_t ones;
    Py_BEGIN_ALLOW_THREADS
    ones = popcount_bytes(p, nbits / 8);
    for (Py_ssize_t e = 8 * (nbits / 8); e < nbits; e++)
        ones += (p[e >> 3] >> (e & 7)) & 1;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bits);
    return PyLong_FromUnsignedLongLong(ones);
}

static PyObject *select_one(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t rank;
    Py_buffer bits;
    if (parse_bits_and_count(args, &bits, &rank) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)bits.buf;
    Py_ssize_t len = bits.len, i = 0, found = -1;
    Py_ssize_t left = rank;
    if (rank >= 0) {
        Py_BEGIN_ALLOW_THREADS
        for (; i + 8 <= len; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            Py_ssize_t c = __builtin_popcountll(w);
            if (c > left)
                break;
            left -= c;
        }
        for (; i < len; i++) {
            Py_ssize_t c = __builtin_popcount(p[i]);
            if (c > left) {
                unsigned b = p[i];
                for (int j = 0; j < 8; j++) {
                    if ((b >> j) & 1) {
                        if (left == 0) {
                            found = 8 * i + j;
                            break;
                        }
                        left--;
                    }
                }
                break;
            }
            left -= c;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&bits);
    if (found < 0) {
        PyErr_SetString(PyExc_ValueError, "corrupt bitmask index (too few positions)");
        return NULL;
    }
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"expand_bitmask", expand_bitmask, METH_VARARGS,
     "expand_bitmask(mask, values, out, nbits, itemsize): scatter values to the set bits."},
    {"scatter_elias_fano", scatter_elias_fano, METH_VARARGS,
     "scatter_elias_fano(low, plane_bytes, low_bits, upper, start_bit, values, first, out, "
     "numel, itemsize): write values at their Elias-Fano positions."},
    {"count_ones", count_ones, METH_VARARGS,
     "count_ones(bits, nbits): number of set bits among the first nbits."},
    {"select_one", select_one, METH_VARARGS,
     "select_one(bits, rank): index of the rank-th set bit (0-based)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bitmask_ext", "Native decoding kernels for hf-px bitmask checkpoints.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__bitmask_ext(void)
{
    init_spread();
    init_expand();
    return PyModule_Create(&module);
}
