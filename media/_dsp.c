/* media._dsp: the two fixed 2:1 FIR kernels of media.resample, and the pitch search
 * of media.plc, in C.
 *
 * Every G.711 stream doubles its inbound 8 kHz audio to 16 kHz and halves the
 * pipeline's 16 kHz back to 8 kHz, 50 times a second. In numpy each 20 ms frame
 * costs ~15 us per direction, nearly all of it call overhead (array creation,
 * strided copies, rint/clip/astype); the arithmetic is ~26k multiply-adds. Here
 * it is one call per frame.
 *
 * Pure functions: the caller owns the filter taps and the history buffers (float64,
 * as in the numpy engine, which stays as the reference and the fallback), and this
 * code reads and updates them. The output is rounded half to even and saturated to
 * int16 exactly as media.resample._to_pcm does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

static inline int16_t to_i16(double v) {
    v = nearbyint(v); /* default rounding mode: half to even, like np.rint */
    if (v > 32767.0) return 32767;
    if (v < -32768.0) return -32768;
    return (int16_t)v;
}

/* The inner loops, compiled twice: for AVX2 and for any x86-64 (SSE2); the loader
 * picks one for the CPU it runs on. No FMA (and -ffp-contract=off, so the compiler
 * makes none): a fused multiply-add rounds differently from the numpy engine. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL
#endif

/* Four doubles: one AVX2 register (two SSE2 ones in the default clone). */
typedef double v4 __attribute__((vector_size(32), aligned(8)));
#define LANES 4
#define BLOCK 8 /* vectors of outputs summed at once: eight independent add chains */

/* acc[m] = sum_k h[k] * a[m + k], k = 0..taps-1. Each output sums its taps in order,
 * from 0.0, whichever path computes it; blocks of BLOCK * LANES outputs keep their
 * sums in registers for the whole tap loop instead of re-reading them per tap. */
KERNEL static void fir(double *restrict acc, const double *restrict a, const double *restrict h,
                       Py_ssize_t taps, Py_ssize_t n) {
    Py_ssize_t m = 0;
    for (; m + BLOCK * LANES <= n; m += BLOCK * LANES) {
        v4 sum[BLOCK] = {0};
        const double *p = a + m;
        for (Py_ssize_t k = 0; k < taps; k++) {
            v4 c = {h[k], h[k], h[k], h[k]};
            for (int j = 0; j < BLOCK; j++) {
                v4 x;
                memcpy(&x, p + k + LANES * j, sizeof x); /* an unaligned load */
                sum[j] += c * x;
            }
        }
        memcpy(acc + m, sum, sizeof sum);
    }
    for (; m < n; m++) {
        double sum = 0.0;
        for (Py_ssize_t k = 0; k < taps; k++) sum += h[k] * a[m + k];
        acc[m] = sum;
    }
}

/* The C-contiguous buffers (bytes, numpy arrays) of n objects, the first `writable` of
 * them writable (the histories). On failure, those already taken are released. */
static int take(PyObject *const *objs, Py_buffer *views, int n, int writable) {
    for (int i = 0; i < n; i++) {
        int flags = i < writable ? PyBUF_WRITABLE : PyBUF_SIMPLE;
        if (PyObject_GetBuffer(objs[i], &views[i], flags) < 0) {
            while (i--) PyBuffer_Release(&views[i]);
            return -1;
        }
    }
    return 0;
}

static void release(Py_buffer *views, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&views[i]);
}

/* double2(history, x, even, odd, skip) -> bytes
 *
 * history: float64[H] (H = len(even) - 1 = len(odd)), the stream's last H input
 * samples, updated in place. x: int16 samples (n). Output 2m is
 * sum_k even[k] * w[m + k], output 2m+1 is sum_k odd[k] * w[m + 1 + k], where w is
 * history followed by x (the taps already reversed, as for np.correlate). The first
 * `skip` output samples (the start-up lag) are left out. */
static PyObject *double2(PyObject *self, PyObject *args) {
    PyObject *o[4];
    Py_ssize_t skip;
    if (!PyArg_ParseTuple(args, "OOOOn", &o[0], &o[1], &o[2], &o[3], &skip)) return NULL;
    Py_buffer v[4]; /* history, x, even, odd */
    if (take(o, v, 4, 1) < 0) return NULL;
    Py_buffer hb = v[0], xb = v[1], eb = v[2], ob = v[3];
    PyObject *result = NULL;
    double *w = NULL;
    Py_ssize_t ne = eb.len / 8, no = ob.len / 8, h = hb.len / 8, n = xb.len / 2;
    if (ne < 1 || no != ne - 1 || h != no || hb.len % 8 || xb.len % 2 || skip < 0) {
        PyErr_SetString(PyExc_ValueError, "double2: history must be len(even) - 1 = len(odd) "
                                          "float64 samples, x whole int16 samples");
        goto done;
    }
    w = PyMem_Malloc((size_t)(h + n) * sizeof(double));
    if (w == NULL) { PyErr_NoMemory(); goto done; }
    const double *hist = hb.buf, *even = eb.buf, *odd = ob.buf;
    const int16_t *x = xb.buf;
    memcpy(w, hist, (size_t)h * sizeof(double));
    for (Py_ssize_t i = 0; i < n; i++) w[h + i] = x[i];
    Py_ssize_t total = 2 * n, cut = skip < total ? skip : total;
    result = PyBytes_FromStringAndSize(NULL, (total - cut) * 2);
    if (result == NULL) goto done;
    int16_t *out = (int16_t *)PyBytes_AS_STRING(result);
    double *acc = PyMem_Malloc((size_t)total * sizeof(double));
    if (acc == NULL) { Py_CLEAR(result); PyErr_NoMemory(); goto done; }
    double *ae = acc, *ao = acc + n;
    fir(ae, w, even, ne, n);
    fir(ao, w + 1, odd, no, n);
    for (Py_ssize_t m = 0; m < n; m++) {
        if (2 * m >= cut) out[2 * m - cut] = to_i16(ae[m]);
        if (2 * m + 1 >= cut) out[2 * m + 1 - cut] = to_i16(ao[m]);
    }
    PyMem_Free(acc);
    memcpy(hb.buf, w + n, (size_t)h * sizeof(double));
done:
    PyMem_Free(w);
    release(v, 4);
    return result;
}

/* halve2(evens, odds, x, h_even, h_odd, skip) -> bytes
 *
 * evens/odds: float64[H] (H = len(h_even) - 1 = len(h_odd)), the last H even- and
 * odd-indexed input samples, updated in place. x: an even number of int16 samples
 * (2n). Output m is sum_k h_even[k] * E[m + k] + sum_k h_odd[k] * O[m + k], E and O
 * being the history followed by x's even and odd samples. The first `skip` output
 * samples are left out. */
static PyObject *halve2(PyObject *self, PyObject *args) {
    PyObject *o[5];
    Py_ssize_t skip;
    if (!PyArg_ParseTuple(args, "OOOOOn", &o[0], &o[1], &o[2], &o[3], &o[4], &skip)) return NULL;
    Py_buffer v[5]; /* evens, odds, x, h_even, h_odd */
    if (take(o, v, 5, 2) < 0) return NULL;
    Py_buffer eb = v[0], ob = v[1], xb = v[2], heb = v[3], hob = v[4];
    PyObject *result = NULL;
    double *we = NULL;
    Py_ssize_t nhe = heb.len / 8, nho = hob.len / 8, h = eb.len / 8, n = xb.len / 4;
    if (nhe < 1 || nho != nhe - 1 || h != nho || ob.len != eb.len || eb.len % 8 ||
        xb.len % 4 || skip < 0) {
        PyErr_SetString(PyExc_ValueError, "halve2: evens and odds must be len(h_even) - 1 = "
                                          "len(h_odd) float64 samples, x an even number of "
                                          "int16 samples");
        goto done;
    }
    we = PyMem_Malloc((size_t)(2 * (h + n)) * sizeof(double));
    if (we == NULL) { PyErr_NoMemory(); goto done; }
    double *wo = we + h + n;
    const int16_t *x = xb.buf;
    const double *he = heb.buf, *ho = hob.buf;
    memcpy(we, eb.buf, (size_t)h * sizeof(double));
    memcpy(wo, ob.buf, (size_t)h * sizeof(double));
    for (Py_ssize_t i = 0; i < n; i++) {
        we[h + i] = x[2 * i];
        wo[h + i] = x[2 * i + 1];
    }
    Py_ssize_t cut = skip < n ? skip : n;
    result = PyBytes_FromStringAndSize(NULL, (n - cut) * 2);
    if (result == NULL) goto done;
    int16_t *out = (int16_t *)PyBytes_AS_STRING(result);
    /* Each output sums its even taps, then its odd taps, then adds the two. */
    double *acc = PyMem_Malloc((size_t)(2 * n) * sizeof(double));
    if (acc == NULL) { Py_CLEAR(result); PyErr_NoMemory(); goto done; }
    double *se = acc, *so = acc + n;
    fir(se, we, he, nhe, n);
    fir(so, wo, ho, nho, n);
    for (Py_ssize_t m = cut; m < n; m++) out[m - cut] = to_i16(se[m] + so[m]);
    PyMem_Free(acc);
    memcpy(eb.buf, we + n, (size_t)h * sizeof(double));
    memcpy(ob.buf, wo + n, (size_t)h * sizeof(double));
done:
    PyMem_Free(we);
    release(v, 5);
    return result;
}

/* Normalised cross-correlation of a against b over every step-th of n samples:
 * dot(a, b) / sqrt(max(dot(a, a), floor)). */
static double ncc(const double *a, const double *b, Py_ssize_t n, Py_ssize_t step,
                  double floor) {
    double dot = 0.0, energy = 0.0;
    for (Py_ssize_t i = 0; i < n; i += step) {
        dot += a[i] * b[i];
        energy += a[i] * a[i];
    }
    return dot / sqrt(energy > floor ? energy : floor);
}

/* pitch(src, n, lag_min, lag_max, d, floor) -> int
 *
 * media.plc.G711Plc's pitch search (G.711 Appendix I): the lag in lag_min..lag_max
 * whose past window best matches the last n samples of src (float64), by normalised
 * cross-correlation; first every d-th lag on every d-th sample (ties: the shorter
 * lag), then the lags within d-1 of that at full rate (ties: the longer lag). The
 * numpy search it replaces cost ~150 us a call, all overhead, and a network hiccup
 * starts concealment on every stream in the same tick. */
static PyObject *pitch(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t n, lag_min, lag_max, d;
    double floor;
    if (!PyArg_ParseTuple(args, "Onnnnd", &obj, &n, &lag_min, &lag_max, &d, &floor))
        return NULL;
    if (n <= 0 || d <= 0 || lag_min <= 0 || lag_max < lag_min) {
        PyErr_SetString(PyExc_ValueError, "pitch: need n, d > 0 and 0 < lag_min <= lag_max");
        return NULL;
    }
    Py_buffer v;
    if (take(&obj, &v, 1, 0) < 0) return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = v.len / (Py_ssize_t)sizeof(double);
    if (v.len % (Py_ssize_t)sizeof(double) || count < n + lag_max) {
        PyErr_Format(PyExc_ValueError, "pitch: src must be float64 with at least %zd samples",
                     n + lag_max);
        goto done;
    }
    const double *src = v.buf;
    const double *recent = src + count - n;
    const double *past = recent - lag_max; /* window j (lag lag_max - j) starts at past + j */
    Py_ssize_t span = lag_max - lag_min, best = 0, fine = 0;
    double top = -INFINITY;
    for (Py_ssize_t j = 0; j <= span; j += d) {
        double score = ncc(past + j, recent, n, d, floor);
        if (score >= top) { top = score; best = j; }
    }
    Py_ssize_t lo = best - (d - 1) > 0 ? best - (d - 1) : 0;
    Py_ssize_t hi = best + (d - 1) < span ? best + (d - 1) : span;
    top = -INFINITY;
    for (Py_ssize_t j = lo; j <= hi; j++) {
        double score = ncc(past + j, recent, n, 1, floor);
        if (score > top) { top = score; fine = j; }
    }
    result = PyLong_FromSsize_t(lag_max - fine);
done:
    release(&v, 1);
    return result;
}

static PyMethodDef methods[] = {
    {"double2", double2, METH_VARARGS, "2x interpolation of int16 PCM with a kept history"},
    {"halve2", halve2, METH_VARARGS, "2:1 decimation of int16 PCM with a kept history"},
    {"pitch", pitch, METH_VARARGS, "pitch period by normalised cross-correlation"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "media._dsp", "2:1 FIR resampling kernels (media.resample), pitch search (media.plc)",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dsp(void) { return PyModule_Create(&module); }
