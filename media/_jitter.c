/* media._jitter: media.jitter's adaptive jitter buffer as a C type, JitterBuffer.
 *
 * Every call pushes one RTP packet and pops one slot every 20 ms. In Python that is
 * ~6 us per push+pop, 15-20 % of a worker's CPU at 300 calls, nearly all of it
 * interpreter overhead (attribute access, tuples, the frozen JitterSlot's __init__).
 *
 * This is media.jitter.PyJitterBuffer step for step, and that class stays as the
 * reference and the fallback: read it for why the buffer does what it does; the
 * comments here say how the C represents it. The same slots, stats and exceptions,
 * the same float operations in the same order (built with -ffp-contract=off: no fused
 * multiply-add), so every delay and target is bit-identical.
 *
 * Representation:
 * - _packets and _heap: one table of entries (ts, seq, packet, insertion number) with a
 *   hash index by ts and a min-heap by ts whose entries know their heap position, so
 *   any entry leaves in O(log n). Python's heap can also keep timestamps that left the
 *   dict; no read can see one (heap[0] is read after _clean_heap, or by _skip_to, which
 *   pops them to no effect), so this heap holds just the buffered timestamps.
 *   The insertion number replays the dict's order for _discard_all, whose loss count
 *   depends on it.
 * - Python ints that only grow (extended sequence numbers and timestamps, the shift):
 *   int64, the unwrappers and the shift adding modulo 2**64, so a sender leaping its
 *   timestamps round and round cannot overflow them (the sums that are used stay small).
 * - _seen: 16 words of 64 bits. _foreign: a sorted array (1025 values at most).
 *   _transits: a ring that doubles as needed. The histogram and its ring: arrays.
 * - _target remembers the object it was taken from when that was min_delay, max_delay
 *   or initial_delay as given, so target_delay is an int exactly where Python's is.
 * Packets, JitterSlot and JitterStats (the classes given to _bind) are read and filled
 * through their slots' offsets, as media.rtp fills its own packets, with attribute
 * access and a plain call for any other class.
 *
 * Python code can run in the middle of push and pop (is_quiet, a packet's marker, a
 * deallocation): no pointer into the tables is held across such a call, and state is
 * re-read after it, as the Python code re-reads its attributes.
 *
 * Deliberate differences, none reachable from RTP: clock_rate and frame_ticks must be
 * ints below 2**31 (OverflowError; Python also takes floats), packet fields must be
 * ints (TypeError), arrival and now are taken as floats (float()), a delay or a rebase
 * beyond ~2**62 timestamp ticks (about 3 million years at 48 kHz) raises OverflowError
 * where Python would carry on with big ints, and the attributes are read-only (nothing
 * assigns them) with no instance __dict__.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* media.jitter's constants (tests/media/test_jitter_c.py checks that they agree). */
#define BUCKET 0.005
#define HISTORY 250
#define BASE_WINDOW 2.0
#define GROW_MARGIN 0.005
#define GROW_SPACING 2
#define GROW_WAIT 25
#define DROP_PERSIST 50
#define DROP_FORCE 250
#define SHRINK_PER_SECOND 0.010
#define UNDERRUN_CONCEAL 5
#define LATE_RESYNC 25
#define SEEN_BITS 1024
#define SEEN_WORDS (SEEN_BITS / 64)

#define TICKS_LIMIT 4611686018427387904.0 /* 2**62: timestamp arithmetic stays in int64 */
#define MAX_RATE 2147483647LL             /* clock_rate and frame_ticks */

/* Wrapping int64 sums: Python's ints never overflow; these wrap where Python's would
 * only grow past what anything reads. */
static inline int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline int64_t wsub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
static inline int64_t wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }

/* Python's a // b for b > 0: rounds toward minus infinity. */
static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* -- the classes bound by _bind() ---------------------------------------------------- */

enum { F_SSRC, F_SEQUENCE, F_TIMESTAMP, F_MARKER, N_FIELDS };
static const char *const packet_fields[N_FIELDS] = {"ssrc", "sequence", "timestamp", "marker"};
static const char *const slot_fields[] = {"kind", "packet", "next_packet", "skipped", NULL};
static const char *const stats_fields[] = {
    "received", "lost",     "late",     "duplicate",     "concealed",      "dropped",
    "inserted", "resets",   "buffered", "delay_seconds", "target_seconds", NULL};
#define MAX_RECORD 11

/* A frozen slots dataclass we create: filled through its slots when `fast`. */
typedef struct {
    PyTypeObject *type;
    int n, fast;
    Py_ssize_t offset[MAX_RECORD];
} Record;

static Record slot_record, stats_record;
static PyTypeObject *packet_type; /* packets of exactly this type are read through... */
static Py_ssize_t packet_offset[N_FIELDS]; /* ...their slots */
static PyObject *packet_names[N_FIELDS];
static PyObject *str_packet, *str_missing;
static PyObject *default_min, *default_max, *default_initial, *default_quantile;

/* A writable object slot defined by `type` itself: 1 with its offset, else 0. */
static int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = 0;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyDescrObject *)d)->d_type == type) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) {
            *offset = m->offset;
            ok = 1;
        }
    }
    Py_DECREF(d);
    return ok;
}

static int bind_record(Record *r, PyObject *cls, const char *const *names) {
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "_bind: expected a class, got %R", cls);
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    int n = 0;
    while (names[n]) n++;
    /* A dataclass's __match_args__ lists its fields in order: they must be ours. */
    PyObject *args = PyObject_GetAttrString(cls, "__match_args__");
    if (args == NULL) return -1;
    int same = PyTuple_Check(args) && PyTuple_GET_SIZE(args) == n;
    for (int i = 0; same && i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        same = PyUnicode_Check(a) && PyUnicode_CompareWithASCIIString(a, names[i]) == 0;
    }
    Py_DECREF(args);
    if (!same) {
        PyErr_Format(PyExc_TypeError, "_bind: %s's fields are not the ones media._jitter "
                                      "fills; update media/_jitter.c", type->tp_name);
        return -1;
    }
    int fast = 1;
    for (int i = 0; i < n; i++) fast &= slot_offset(type, names[i], &r->offset[i]);
    int post = PyObject_HasAttrString(cls, "__post_init__");
    Py_INCREF(cls);
    Py_XSETREF(r->type, type);
    r->n = n;
    r->fast = fast && !post;
    return 0;
}

/* cls(*values), stealing the values (a NULL among them: an error is already set). */
static PyObject *make_record(Record *r, PyObject **v) {
    PyObject *obj = NULL;
    for (int i = 0; i < r->n; i++)
        if (v[i] == NULL) goto done;
    if (r->fast) {
        obj = r->type->tp_alloc(r->type, 0);
        if (obj != NULL)
            for (int i = 0; i < r->n; i++) {
                *(PyObject **)((char *)obj + r->offset[i]) = v[i];
                v[i] = NULL;
            }
    } else {
        obj = PyObject_Vectorcall((PyObject *)r->type, v, (size_t)r->n, NULL);
    }
done:
    for (int i = 0; i < r->n; i++) Py_XDECREF(v[i]);
    return obj;
}

/* packet.<field>, a new reference. */
static inline PyObject *field(PyObject *packet, int f) {
    if (Py_IS_TYPE(packet, packet_type)) {
        PyObject *v = *(PyObject **)((char *)packet + packet_offset[f]);
        if (v != NULL) return Py_NewRef(v);
    }
    return PyObject_GetAttr(packet, packet_names[f]);
}

static inline int as_double(PyObject *o, double *out) {
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return 0;
    }
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* int(x) / round(x) of a float as Python raises for NaN and infinities, and beyond
 * what int64 timestamp arithmetic can take. `scale` bounds |x| * scale. */
static int check_int(double x, double scale) {
    if (isnan(x)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        return -1;
    }
    if (isinf(x)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        return -1;
    }
    if (!(fabs(x) < TICKS_LIMIT / scale)) {
        PyErr_SetString(PyExc_OverflowError, "jitter buffer: timestamps out of range");
        return -1;
    }
    return 0;
}

/* -- the packet table: _packets and _heap ------------------------------------------- */

typedef struct {
    int64_t ts, seq;
    uint64_t order; /* insertion number: the dict's iteration order */
    PyObject *packet;
    Py_ssize_t pos; /* in heap */
} Entry;

typedef struct {
    Entry *ent; /* dense: a removed entry's place goes to the last one */
    Py_ssize_t *heap; /* entry numbers, a min-heap by ts */
    Py_ssize_t n, cap;
    Py_ssize_t *index; /* entry numbers by hash of ts, linear probing; -1 is empty */
    int bits; /* index has 2**bits places (0: none yet) */
    uint64_t order;
} Table;

static inline size_t home(const Table *t, int64_t ts) {
    return (size_t)(((uint64_t)ts * 0x9E3779B97F4A7C15ull) >> (64 - t->bits));
}

static inline size_t mask_of(const Table *t) { return ((size_t)1 << t->bits) - 1; }

static Py_ssize_t t_find(const Table *t, int64_t ts) {
    if (t->n == 0) return -1;
    size_t mask = mask_of(t);
    for (size_t i = home(t, ts);; i = (i + 1) & mask) {
        Py_ssize_t e = t->index[i];
        if (e < 0) return -1;
        if (t->ent[e].ts == ts) return e;
    }
}

static inline Entry *t_min(const Table *t) { return &t->ent[t->heap[0]]; }

static size_t t_place(const Table *t, Py_ssize_t e) {
    size_t mask = mask_of(t), i = home(t, t->ent[e].ts);
    while (t->index[i] != e) i = (i + 1) & mask;
    return i;
}

static int t_rehash(Table *t, int bits) {
    size_t size = (size_t)1 << bits;
    Py_ssize_t *index = PyMem_Malloc(size * sizeof *index);
    if (index == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(index, 0xff, size * sizeof *index);
    PyMem_Free(t->index);
    t->index = index;
    t->bits = bits;
    for (Py_ssize_t e = 0; e < t->n; e++) {
        size_t i = home(t, t->ent[e].ts);
        while (index[i] >= 0) i = (i + 1) & (size - 1);
        index[i] = e;
    }
    return 0;
}

static void h_up(Table *t, Py_ssize_t p) {
    Py_ssize_t *heap = t->heap, e = heap[p];
    Entry *ent = t->ent;
    int64_t ts = ent[e].ts;
    while (p > 0) {
        Py_ssize_t q = (p - 1) / 2, f = heap[q];
        if (ent[f].ts <= ts) break;
        heap[p] = f;
        ent[f].pos = p;
        p = q;
    }
    heap[p] = e;
    ent[e].pos = p;
}

static void h_down(Table *t, Py_ssize_t p) {
    Py_ssize_t *heap = t->heap, e = heap[p], n = t->n;
    Entry *ent = t->ent;
    int64_t ts = ent[e].ts;
    for (;;) {
        Py_ssize_t c = 2 * p + 1;
        if (c >= n) break;
        if (c + 1 < n && ent[heap[c + 1]].ts < ent[heap[c]].ts) c++;
        if (ent[heap[c]].ts >= ts) break;
        heap[p] = heap[c];
        ent[heap[p]].pos = p;
        p = c;
    }
    heap[p] = e;
    ent[e].pos = p;
}

/* Queue a packet under a timestamp not in the table. */
static int t_insert(Table *t, int64_t ts, int64_t seq, PyObject *packet) {
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? 2 * t->cap : 16;
        Entry *ent = PyMem_Realloc(t->ent, (size_t)cap * sizeof *ent);
        if (ent == NULL) return PyErr_NoMemory(), -1;
        t->ent = ent;
        Py_ssize_t *heap = PyMem_Realloc(t->heap, (size_t)cap * sizeof *heap);
        if (heap == NULL) return PyErr_NoMemory(), -1;
        t->heap = heap;
        t->cap = cap;
    }
    if (t->bits == 0 || 2 * (t->n + 1) > ((Py_ssize_t)1 << t->bits)) /* load <= 1/2 */
        if (t_rehash(t, t->bits ? t->bits + 1 : 6) < 0) return -1;
    Py_ssize_t e = t->n++;
    t->ent[e] = (Entry){ts, seq, t->order++, Py_NewRef(packet), e};
    t->heap[e] = e;
    h_up(t, e);
    size_t mask = mask_of(t), i = home(t, ts);
    while (t->index[i] >= 0) i = (i + 1) & mask;
    t->index[i] = e;
    return 0;
}

/* Take entry e out; returns its packet (the reference the table held). */
static PyObject *t_remove(Table *t, Py_ssize_t e) {
    Entry *ent = t->ent;
    PyObject *packet = ent[e].packet;
    /* The index: backward-shift deletion keeps every probe run unbroken. */
    size_t mask = mask_of(t), i = t_place(t, e), j = i;
    for (;;) {
        j = (j + 1) & mask;
        Py_ssize_t f = t->index[j];
        if (f < 0) break;
        size_t k = home(t, ent[f].ts);
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            t->index[i] = f;
            i = j;
        }
    }
    t->index[i] = -1;
    /* The heap: the last leaf takes its place. */
    Py_ssize_t last = --t->n, p = ent[e].pos;
    if (p != last) {
        t->heap[p] = t->heap[last];
        ent[t->heap[p]].pos = p;
        h_down(t, p);
        h_up(t, p);
    }
    /* The dense array: the last entry takes its place. */
    if (e != last) {
        size_t k = t_place(t, last);
        ent[e] = ent[last];
        t->heap[ent[e].pos] = e;
        t->index[k] = e;
    }
    return packet;
}

/* Empty the table; the packets are released after it is consistent again. */
static void t_clear(Table *t) {
    Entry *ent = t->ent;
    Py_ssize_t n = t->n;
    PyMem_Free(t->heap);
    PyMem_Free(t->index);
    t->ent = NULL;
    t->heap = t->index = NULL;
    t->n = t->cap = 0;
    t->bits = 0;
    for (Py_ssize_t e = 0; e < n; e++) Py_DECREF(ent[e].packet);
    PyMem_Free(ent);
}

/* -- the buffer ----------------------------------------------------------------------- */

typedef struct {
    int64_t highest;
    int has;
} Unwrapper;

typedef struct {
    double arrival, transit;
} Transit;

typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    int ready;
    /* configuration */
    long long clock_rate, frame_ticks, capacity;
    PyObject *min_obj, *max_obj, *initial_obj, *is_quiet;
    double min_delay, max_delay, spill, frame, inv_rate, jump, shrink_step;
    /* kept across streams */
    double target;
    PyObject *target_obj; /* min_obj, max_obj or initial_obj when _target is that; NULL */
    Py_ssize_t *hist, hist_len, top_bucket;
    Py_ssize_t ring[HISTORY + 1]; /* bucket numbers, as indices into hist */
    int ring_head, ring_len;
    int64_t received, lost, late, duplicate, concealed, dropped, inserted, resets;
    double delay;
    PyObject *ssrc, *old_ssrc; /* None before the first packet */
    /* the stream: _reset_stream() */
    Unwrapper seqs, tss;
    int64_t *foreign; /* sorted */
    Py_ssize_t n_foreign, foreign_cap;
    uint64_t seen[SEEN_WORDS]; /* bit k: highest - k was received */
    int64_t shift;
    int has_top, has_last, has_base, has_start, playing, silent;
    int64_t top_seq, top_ts, last_seq;
    Table t;
    Transit *tr; /* ring: tr_len from tr_head, tr_cap a power of two */
    Py_ssize_t tr_head, tr_len, tr_cap;
    double base, start_at;
    int64_t play_ts, gap, late_run, high, low, since_adjust;
} JB;

static PyTypeObject JB_Type;

static inline double base_or_zero(const JB *s) { /* self._base or 0.0: None, 0.0, -0.0 */
    return s->has_base && s->base != 0.0 ? s->base : 0.0;
}

/* _Unwrapper.unwrap; `value` is borrowed. */
static int unwrap(Unwrapper *u, PyObject *value, int bits, int64_t *out) {
    uint64_t mask = ((uint64_t)1 << bits) - 1, half = (mask + 1) >> 1;
    PyObject *index = PyNumber_Index(value);
    if (index == NULL) return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < 0 || (uint64_t)v > mask) {
        PyErr_Format(PyExc_ValueError, "value %S out of range 0..%llu", value,
                     (unsigned long long)mask);
        return -1;
    }
    if (!u->has) {
        u->has = 1;
        u->highest = v;
        *out = v;
        return 0;
    }
    int64_t delta = (int64_t)((((uint64_t)v - (uint64_t)u->highest + half) & mask)) -
                    (int64_t)half;
    int64_t extended = wadd(u->highest, delta);
    if (delta > 0) u->highest = extended;
    *out = extended;
    return 0;
}

static void seen_shift(uint64_t *w, int64_t shift) {
    if (shift >= SEEN_BITS) {
        memset(w, 0, SEEN_WORDS * sizeof *w);
        return;
    }
    int words = (int)(shift / 64), bits = (int)(shift % 64);
    for (int i = SEEN_WORDS - 1; i >= 0; i--) {
        uint64_t v = 0;
        if (i - words >= 0) {
            v = w[i - words] << bits;
            if (bits && i - words - 1 >= 0) v |= w[i - words - 1] >> (64 - bits);
        }
        w[i] = v;
    }
}

static Py_ssize_t lower_bound(const int64_t *a, Py_ssize_t n, int64_t v) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int foreign_add(JB *s, int64_t seq) {
    Py_ssize_t n = s->n_foreign, i = lower_bound(s->foreign, n, seq);
    if (i < n && s->foreign[i] == seq) return 0;
    if (n == s->foreign_cap) {
        Py_ssize_t cap = n ? 2 * n : 8;
        if (cap > SEEN_BITS + 1) cap = SEEN_BITS + 1;
        int64_t *f = PyMem_Realloc(s->foreign, (size_t)cap * sizeof *f);
        if (f == NULL) return PyErr_NoMemory(), -1;
        s->foreign = f;
        s->foreign_cap = cap;
    }
    memmove(s->foreign + i + 1, s->foreign + i, (size_t)(n - i) * sizeof(int64_t));
    s->foreign[i] = seq;
    if (++n > SEEN_BITS) { /* bounded: forget the oldest */
        memmove(s->foreign, s->foreign + 1, (size_t)(n - 1) * sizeof(int64_t));
        n--;
    }
    s->n_foreign = n;
    return 0;
}

static void note_consumed(JB *s, int64_t seq) {
    if (s->has_last && seq <= s->last_seq) return;
    if (s->has_last && seq - s->last_seq <= SEEN_BITS) {
        int64_t last = s->last_seq, gap = seq - last - 1;
        if (gap && s->n_foreign) {
            Py_ssize_t n = s->n_foreign, before = lower_bound(s->foreign, n, seq);
            gap -= before - lower_bound(s->foreign, before, last + 1);
            memmove(s->foreign, s->foreign + before, (size_t)(n - before) * sizeof(int64_t));
            s->n_foreign = n - before;
        }
        s->lost += gap;
    }
    s->last_seq = seq;
    s->has_last = 1;
}

static int tr_resize(JB *s, Py_ssize_t cap) {
    Transit *tr = PyMem_Malloc((size_t)cap * sizeof *tr);
    if (tr == NULL) return PyErr_NoMemory(), -1;
    for (Py_ssize_t i = 0; i < s->tr_len; i++) tr[i] = s->tr[(s->tr_head + i) & (s->tr_cap - 1)];
    PyMem_Free(s->tr);
    s->tr = tr;
    s->tr_head = 0;
    s->tr_cap = cap;
    return 0;
}

#define TR_AT(s, i) ((s)->tr[((s)->tr_head + (i)) & ((s)->tr_cap - 1)])

/* Python's _reset_stream(), but for the settings it leaves alone. */
static void reset_stream(JB *s) {
    s->seqs = (Unwrapper){0, 0};
    s->tss = (Unwrapper){0, 0};
    s->n_foreign = 0;
    memset(s->seen, 0, sizeof s->seen);
    s->shift = 0;
    s->has_top = s->has_last = s->has_base = s->has_start = s->playing = 0;
    s->tr_len = s->tr_head = 0;
    if (s->tr_cap > 64) {
        PyMem_Free(s->tr);
        s->tr = NULL;
        s->tr_cap = 0;
    }
    s->play_ts = s->gap = s->late_run = s->high = s->low = 0;
    s->silent = 1;
    s->since_adjust = GROW_SPACING;
    t_clear(&s->t); /* last: releasing packets may run code */
}

typedef struct {
    uint64_t order;
    int64_t seq;
} Consumed;

static int by_order(const void *a, const void *b) {
    uint64_t x = ((const Consumed *)a)->order, y = ((const Consumed *)b)->order;
    return (x > y) - (x < y);
}

static int discard_all(JB *s) {
    Py_ssize_t n = s->t.n;
    s->dropped += n;
    if (n == 0) return 0;
    Consumed *c = PyMem_Malloc((size_t)n * sizeof *c);
    if (c == NULL) return PyErr_NoMemory(), -1;
    for (Py_ssize_t e = 0; e < n; e++) c[e] = (Consumed){s->t.ent[e].order, s->t.ent[e].seq};
    qsort(c, (size_t)n, sizeof *c, by_order); /* the loss count depends on the order */
    for (Py_ssize_t i = 0; i < n; i++) note_consumed(s, c[i].seq);
    PyMem_Free(c);
    return 0;
}

/* Remove the oldest entry, note it consumed; the caller releases the packet. */
static PyObject *pop_min(JB *s) {
    Table *t = &s->t;
    int64_t seq = t_min(t)->seq;
    PyObject *packet = t_remove(t, t->heap[0]);
    note_consumed(s, seq);
    return packet;
}

static void skip_to(JB *s, int64_t ts) {
    while (s->t.n && t_min(&s->t)->ts < ts) Py_DECREF(pop_min(s));
    int64_t frames = floordiv(wsub(ts, s->play_ts), s->frame_ticks);
    if (frames > 0) s->dropped += frames;
    s->play_ts = ts;
}

static void clean_heap(JB *s) {
    while (s->playing && s->t.n && t_min(&s->t)->ts < s->play_ts) {
        PyObject *packet = pop_min(s); /* off-grid packet the playout passed by */
        s->late++;
        Py_DECREF(packet);
    }
}

/* 1 when there is an entry at the (moved) play_ts. */
static int realign(JB *s) {
    clean_heap(s);
    if (s->t.n && t_min(&s->t)->ts < s->play_ts + s->frame_ticks) {
        s->play_ts = t_min(&s->t)->ts;
        return 1;
    }
    return 0;
}

static int timeline_moved(JB *s, PyObject *packet) {
    s->late_run++;
    PyObject *marker = field(packet, F_MARKER);
    if (marker == NULL) return -1;
    int on = PyObject_IsTrue(marker);
    Py_DECREF(marker);
    if (on < 0) return -1;
    return on || s->late_run >= LATE_RESYNC;
}

static int rebase(JB *s, int64_t ts, double arrival, int64_t *out) {
    int64_t ticks = s->frame_ticks;
    double want = (arrival - base_or_zero(s)) * (double)s->clock_rate;
    double x = (want - (double)ts) / (double)ticks;
    if (check_int(x, (double)ticks) < 0) return -1;
    int64_t moved = ts + (int64_t)nearbyint(x) * ticks; /* round(): half to even */
    if (s->has_top && s->top_ts + ticks > moved) moved = s->top_ts + ticks;
    if (s->playing && s->play_ts > moved) moved = s->play_ts;
    s->shift = wadd(s->shift, moved - ts);
    s->resets++;
    s->late_run = 0;
    *out = moved;
    return 0;
}

static int observe(JB *s, double arrival, double transit) {
    while (s->tr_len && TR_AT(s, s->tr_len - 1).transit >= transit) s->tr_len--;
    if (s->tr_len == s->tr_cap && tr_resize(s, s->tr_cap ? 2 * s->tr_cap : 64) < 0) return -1;
    TR_AT(s, s->tr_len) = (Transit){arrival, transit};
    s->tr_len++;
    double horizon = arrival - BASE_WINDOW;
    while (s->tr_len > 1 && TR_AT(s, 0).arrival < horizon) { /* never the one just added */
        s->tr_head = (s->tr_head + 1) & (s->tr_cap - 1);
        s->tr_len--;
    }
    if (s->tr_cap > 256 && 8 * s->tr_len < s->tr_cap && tr_resize(s, s->tr_cap / 2) < 0)
        PyErr_Clear(); /* a burst is over: give back memory, if we can */
    double base = s->base = TR_AT(s, 0).transit;
    s->has_base = 1;
    /* bucket = min(int((transit - base) / _BUCKET), len(hist) - 1): only NaN in the
     * window makes it negative, and then it indexes from the end, as a list does. */
    double q = (transit - base) / BUCKET;
    Py_ssize_t len = s->hist_len, bucket;
    if (!isfinite(q)) return check_int(q, 1.0);
    if (q >= (double)(len - 1)) bucket = len - 1;
    else if (q > -(double)len - 1.0) bucket = (Py_ssize_t)q;
    else bucket = -len - 1;
    if (bucket < -len) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    Py_ssize_t at = bucket < 0 ? bucket + len : bucket;
    s->hist[at]++;
    if (bucket > s->top_bucket) s->top_bucket = bucket;
    s->ring[(s->ring_head + s->ring_len) % (HISTORY + 1)] = at;
    if (++s->ring_len > HISTORY) {
        Py_ssize_t old = s->ring[s->ring_head];
        s->ring_head = (s->ring_head + 1) % (HISTORY + 1);
        s->ring_len--;
        s->hist[old]--;
        Py_ssize_t top = s->top_bucket;
        while (top > 0 && !s->hist[top]) top--;
        s->top_bucket = top;
    }
    return 0;
}

static void update_target(JB *s) {
    if (!s->ring_len) return;
    double need = (double)s->ring_len * s->spill;
    Py_ssize_t count = 0, i = s->top_bucket;
    while (i > 0) {
        count += s->hist[i];
        if ((double)count > need) break;
        i--;
    }
    /* desired = min(max((i + 1) * _BUCKET, min_delay), max_delay), keeping which */
    double desired = (double)(i + 1) * BUCKET;
    PyObject *from = NULL;
    if (s->min_delay > desired) {
        desired = s->min_delay;
        from = s->min_obj;
    }
    if (s->max_delay < desired) {
        desired = s->max_delay;
        from = s->max_obj;
    }
    if (desired < s->target) {
        double shrunk = s->target - s->shrink_step;
        if (shrunk > desired) {
            desired = shrunk;
            from = NULL;
        }
    }
    s->target = desired;
    s->target_obj = from;
}

/* -- push ------------------------------------------------------------------------------ */

/* 1: queued, 0: dropped, -1: an exception. */
static int push(JB *s, PyObject *packet, PyObject *arrival_obj) {
    PyObject *ssrc = field(packet, F_SSRC);
    if (ssrc == NULL) return -1;
    int other = PyObject_RichCompareBool(ssrc, s->ssrc, Py_NE);
    if (other <= 0) {
        Py_DECREF(ssrc);
        if (other < 0) return -1;
    } else {
        if (s->ssrc != Py_None) {
            int straggler = PyObject_RichCompareBool(ssrc, s->old_ssrc, Py_EQ);
            if (straggler) {
                Py_DECREF(ssrc);
                if (straggler < 0) return -1;
                s->late++;
                return 0;
            }
            Py_SETREF(s->old_ssrc, Py_NewRef(s->ssrc));
            if (discard_all(s) < 0) {
                Py_DECREF(ssrc);
                return -1;
            }
            reset_stream(s);
            s->resets++;
        }
        Py_SETREF(s->ssrc, ssrc);
    }

    int has_highest = s->seqs.has;
    int64_t highest = s->seqs.highest, seq;
    PyObject *value = field(packet, F_SEQUENCE);
    if (value == NULL) return -1;
    int failed = unwrap(&s->seqs, value, 16, &seq);
    Py_DECREF(value);
    if (failed) return -1;
    int newer = !has_highest || seq > highest;
    if (newer) {
        seen_shift(s->seen, has_highest ? seq - highest : 0);
        s->seen[0] |= 1;
    } else {
        int64_t back = highest - seq;
        if (back >= SEEN_BITS) {
            s->late++;
            return 0;
        }
        uint64_t bit = (uint64_t)1 << (back % 64);
        if (s->seen[back / 64] & bit) {
            s->duplicate++;
            return 0;
        }
        s->seen[back / 64] |= bit;
    }

    int64_t ts;
    value = field(packet, F_TIMESTAMP);
    if (value == NULL) return -1;
    failed = unwrap(&s->tss, value, 32, &ts);
    Py_DECREF(value);
    if (failed) return -1;
    ts = wadd(ts, s->shift);
    double arrival;
    if (as_double(arrival_obj, &arrival) < 0) return -1;
    double transit = arrival - (double)ts * s->inv_rate;
    if (s->has_base && fabs(transit - s->base) > s->jump) {
        int late;
        if (!newer) {
            late = 1;
        } else if (s->has_top && wsub(ts, s->top_ts) == wmul(seq - s->top_seq, s->frame_ticks)) {
            int moved = timeline_moved(s, packet); /* follows the sequence numbers */
            if (moved < 0) return -1;
            late = !moved;
        } else {
            late = 0;
        }
        if (late) {
            s->late++;
            return 0;
        }
        if (rebase(s, ts, arrival, &ts) < 0) return -1;
        transit = arrival - (double)ts * s->inv_rate;
    }
    if (observe(s, arrival, transit) < 0) return -1;
    if (s->playing && ts < s->play_ts) {
        int moved = 0;
        if (newer && (moved = timeline_moved(s, packet)) < 0) return -1;
        if (!moved) {
            s->late++;
            return 0;
        }
        if (rebase(s, ts, arrival, &ts) < 0) return -1;
    }

    if (s->playing) {
        if (ts >= s->play_ts + s->capacity * s->frame_ticks)
            skip_to(s, ts - (s->capacity - 1) * s->frame_ticks);
    } else if (s->t.n >= s->capacity) {
        Py_DECREF(pop_min(s));
        s->dropped++;
    }
    if (t_find(&s->t, ts) >= 0) { /* same timestamp, another sequence number */
        s->duplicate++;
        return 0;
    }
    if (t_insert(&s->t, ts, seq, packet) < 0) return -1;
    s->received++;
    s->late_run = 0;
    if (newer) {
        s->has_top = 1;
        s->top_seq = seq;
        s->top_ts = ts;
    }
    if (!s->has_start) {
        s->has_start = 1;
        s->start_at = arrival + s->target;
    }
    return 1;
}

/* -- pop ------------------------------------------------------------------------------- */

static int is_quiet_entry(JB *s, PyObject *packet) {
    if (packet == NULL || s->is_quiet == Py_None) return 0;
    PyObject *callback = Py_NewRef(s->is_quiet);
    PyObject *result = PyObject_CallOneArg(callback, packet);
    Py_DECREF(callback);
    if (result == NULL) return -1;
    int quiet = PyObject_IsTrue(result);
    Py_DECREF(result);
    return quiet;
}

/* _adapt: *change = -1 insert a frame now, n > 0 skip n frames. `packet`: the entry's
 * packet (a new reference, released here) or NULL for None. */
static int adapt(JB *s, double delay, PyObject *packet, int64_t *change) {
    int rc = -1, free_ = 0;
    PyObject *marker = NULL; /* free is the marker's truth, tested where Python tests it */
    double target = s->target;
    *change = 0;
    s->since_adjust++;
    if (s->gap > 0) {
        if (packet == NULL) free_ = 1;
        else if ((marker = field(packet, F_MARKER)) == NULL) goto done;
    }
    if (delay < target - GROW_MARGIN) {
        s->high = 0;
        s->low++;
        int cheap = marker ? PyObject_IsTrue(marker) : free_;
        if (cheap == 0) cheap = is_quiet_entry(s, packet);
        if (cheap < 0) goto done;
        int urgent = delay < target - s->frame || s->low >= GROW_WAIT;
        if (cheap || (urgent && s->since_adjust >= GROW_SPACING)) {
            s->since_adjust = s->low = 0;
            *change = -1;
        }
        rc = 0;
        goto done;
    }
    s->low = 0;
    if (delay <= target + s->frame) {
        s->high = 0;
        rc = 0;
        goto done;
    }
    s->high++;
    double q = (delay - target) / s->frame;
    if (check_int(q, (double)s->frame_ticks) < 0) goto done;
    int64_t frames = (int64_t)q, skipped;
    if (delay > s->max_delay + s->frame) { /* a stall or a burst: catch up now */
        skipped = frames;
    } else if (marker == NULL && free_) { /* free and entry is None: up to the next packet */
        skipped = frames;
        if (s->t.n) {
            int64_t room = floordiv(t_min(&s->t)->ts - s->play_ts, s->frame_ticks);
            if (room < skipped) skipped = room;
        }
    } else {
        if (marker && PyObject_IsTrue(marker) < 0) goto done; /* `free and ...` tests it */
        int quiet = 0;
        if (s->high >= DROP_PERSIST && (quiet = is_quiet_entry(s, packet)) < 0) goto done;
        if (quiet) {
            skipped = 1;
        } else if (s->high >= DROP_FORCE) {
            s->high = DROP_FORCE - DROP_PERSIST;
            *change = 1;
            rc = 0;
            goto done;
        } else {
            rc = 0;
            goto done;
        }
    }
    s->high = 0;
    *change = skipped;
    rc = 0;
done:
    Py_XDECREF(marker);
    Py_XDECREF(packet);
    return rc;
}

static PyObject *slot(PyObject *kind, PyObject *packet, PyObject *next, int64_t skipped) {
    /* packet is stolen (NULL: None); next is borrowed (NULL: None) */
    PyObject *v[4] = {Py_NewRef(kind), packet ? packet : Py_NewRef(Py_None),
                      Py_NewRef(next ? next : Py_None), PyLong_FromLongLong(skipped)};
    return make_record(&slot_record, v);
}

static PyObject *filler(JB *s, PyObject *next, int64_t skipped) {
    if (s->silent) Py_RETURN_NONE;
    s->concealed++;
    return slot(str_missing, NULL, next, skipped);
}

static PyObject *pop(JB *s, PyObject *now_obj) {
    double now;
    if (!s->playing) {
        if (!s->has_start) Py_RETURN_NONE;
        if (as_double(now_obj, &now) < 0) return NULL;
        if (now < s->start_at - GROW_MARGIN) Py_RETURN_NONE;
        /* _clean_heap() does nothing before playing: nothing is stale yet */
        if (!s->t.n) Py_RETURN_NONE;
        s->playing = 1;
        s->play_ts = t_min(&s->t)->ts;
        update_target(s);
    } else {
        update_target(s);
        if (as_double(now_obj, &now) < 0) return NULL;
    }
    int64_t ticks = s->frame_ticks;
    double delay = now - (double)s->play_ts * s->inv_rate - base_or_zero(s);
    Py_ssize_t e = t_find(&s->t, s->play_ts);
    if (e < 0 && realign(s)) e = s->t.heap[0];
    int entry = e >= 0;
    int64_t skipped = 0, change;
    if (adapt(s, delay, entry ? Py_NewRef(s->t.ent[e].packet) : NULL, &change) < 0) return NULL;
    if (change < 0) {
        s->inserted++;
        s->delay = delay + s->frame;
        return filler(s, NULL, 0);
    }
    if (change) {
        skipped = change;
        skip_to(s, s->play_ts + skipped * ticks);
        delay -= (double)skipped * s->frame;
        entry = t_find(&s->t, s->play_ts) >= 0 || realign(s);
    }

    s->delay = delay;
    int64_t play_ts = s->play_ts;
    s->play_ts = play_ts + ticks;
    if (entry) {
        PyObject *packet;
        e = t_find(&s->t, play_ts);
        if (e < 0) { /* is_quiet took it out behind our back: Python's dict.pop raises */
            PyObject *key = PyLong_FromLongLong(play_ts);
            if (key != NULL) {
                PyErr_SetObject(PyExc_KeyError, key);
                Py_DECREF(key);
            }
            return NULL;
        }
        int64_t seq = s->t.ent[e].seq;
        packet = t_remove(&s->t, e);
        note_consumed(s, seq);
        clean_heap(s); /* off-grid packets the playout has now passed */
        s->gap = 0;
        s->silent = 0;
        return slot(str_packet, packet, NULL, skipped);
    }
    s->gap++;
    clean_heap(s);
    if (s->t.n) {
        if (s->has_last && t_min(&s->t)->seq == s->last_seq + 1) {
            s->silent = 1; /* sequence continues after the gap: sender paused */
            Py_RETURN_NONE;
        }
        e = t_find(&s->t, s->play_ts);
        PyObject *next = e >= 0 ? Py_NewRef(s->t.ent[e].packet) : NULL;
        PyObject *result = filler(s, next, skipped);
        Py_XDECREF(next);
        return result;
    }
    if (s->gap > UNDERRUN_CONCEAL || s->silent) {
        s->silent = 1;
        Py_RETURN_NONE;
    }
    return filler(s, NULL, skipped);
}

/* -- the type -------------------------------------------------------------------------- */

static int ready(JB *s) {
    if (s->ready) return 1;
    PyErr_SetString(PyExc_RuntimeError, "JitterBuffer is not initialised");
    return 0;
}

/* Positional or keyword arguments of a METH_FASTCALL | METH_KEYWORDS method. */
static int arguments(const char *name, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames, const char *const *names, int n, PyObject **out) {
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments but %zd were given",
                     name, n, nargs);
        return -1;
    }
    for (int i = 0; i < n; i++) out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < n && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) i++;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", name,
                         key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", name,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < n; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", name,
                         names[i]);
            return -1;
        }
    return 0;
}

static PyObject *JB_push(JB *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"packet", "arrival"};
    PyObject *a[2];
    if (arguments("push", args, nargs, kwnames, names, 2, a) < 0 || !ready(s)) return NULL;
    int queued = push(s, a[0], a[1]);
    if (queued < 0) return NULL;
    return PyBool_FromLong(queued);
}

static PyObject *JB_pop(JB *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"now"};
    PyObject *now;
    if (arguments("pop", args, nargs, kwnames, names, 1, &now) < 0 || !ready(s)) return NULL;
    return pop(s, now);
}

static PyObject *JB_note_foreign(JB *s, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    static const char *const names[] = {"packet"};
    PyObject *packet;
    if (arguments("note_foreign", args, nargs, kwnames, names, 1, &packet) < 0 || !ready(s))
        return NULL;
    PyObject *ssrc = field(packet, F_SSRC);
    if (ssrc == NULL) return NULL;
    int other = PyObject_RichCompareBool(ssrc, s->ssrc, Py_NE);
    Py_DECREF(ssrc);
    if (other < 0) return NULL;
    if (other || !s->seqs.has) Py_RETURN_NONE;
    int64_t seq, highest = s->seqs.highest;
    PyObject *value = field(packet, F_SEQUENCE);
    if (value == NULL) return NULL;
    int failed = unwrap(&s->seqs, value, 16, &seq);
    Py_DECREF(value);
    if (failed) return NULL;
    if (seq > highest) seen_shift(s->seen, seq - highest); /* the window follows highest */
    if ((!s->has_last || seq > s->last_seq) && foreign_add(s, seq) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *JB_target_delay(JB *s, void *closure) {
    if (!ready(s)) return NULL;
    return s->target_obj ? Py_NewRef(s->target_obj) : PyFloat_FromDouble(s->target);
}

static PyObject *JB_stats(JB *s, void *closure) {
    if (!ready(s)) return NULL;
    PyObject *v[11] = {
        PyLong_FromLongLong(s->received),  PyLong_FromLongLong(s->lost),
        PyLong_FromLongLong(s->late),      PyLong_FromLongLong(s->duplicate),
        PyLong_FromLongLong(s->concealed), PyLong_FromLongLong(s->dropped),
        PyLong_FromLongLong(s->inserted),  PyLong_FromLongLong(s->resets),
        PyLong_FromSsize_t(s->t.n),        PyFloat_FromDouble(s->delay),
        s->target_obj ? Py_NewRef(s->target_obj) : PyFloat_FromDouble(s->target),
    };
    return make_record(&stats_record, v);
}

/* Everything the instance owns, so that it can be initialised again or freed. */
static void release(JB *s) {
    s->ready = 0;
    Py_CLEAR(s->min_obj);
    Py_CLEAR(s->max_obj);
    Py_CLEAR(s->initial_obj);
    Py_CLEAR(s->is_quiet);
    Py_CLEAR(s->ssrc);
    Py_CLEAR(s->old_ssrc);
    s->target_obj = NULL;
    PyMem_Free(s->hist);
    s->hist = NULL;
    PyMem_Free(s->foreign);
    s->foreign = NULL;
    s->n_foreign = s->foreign_cap = 0;
    PyMem_Free(s->tr);
    s->tr = NULL;
    s->tr_len = s->tr_cap = s->tr_head = 0;
    t_clear(&s->t);
}

static int bound(void) {
    if (slot_record.type != NULL) return 1;
    PyObject *m = PyImport_ImportModule("media.jitter"); /* binds on import */
    if (m == NULL) return 0;
    Py_DECREF(m);
    if (slot_record.type != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "media._jitter: _bind() was not called");
    return 0;
}

static int cmp(PyObject *a, PyObject *b, int op) { return PyObject_RichCompareBool(a, b, op); }

static int JB_init(JB *s, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"clock_rate", "frame_ticks", "min_delay",   "max_delay",
                             "initial_delay", "quantile", "is_quiet", NULL};
    PyObject *rate, *ticks, *min_delay = default_min, *max_delay = default_max;
    PyObject *initial = default_initial, *quantile = default_quantile, *is_quiet = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO$OOO:JitterBuffer", kwlist, &rate,
                                     &ticks, &min_delay, &max_delay, &initial, &quantile,
                                     &is_quiet))
        return -1;
    if (!bound()) return -1;
    PyObject *zero = PyLong_FromLong(0), *half = PyFloat_FromDouble(0.5),
             *one = PyFloat_FromDouble(1.0), *fzero = PyFloat_FromDouble(0.0);
    PyObject *frame = NULL, *chosen;
    int rc = -1, c;
    if (!zero || !half || !one || !fzero) goto done;
    /* The checks, as Python makes them (comparisons of the objects given). */
    if ((c = cmp(rate, zero, Py_LE)) < 0 || (!c && (c = cmp(ticks, zero, Py_LE)) < 0)) goto done;
    if (c) {
        PyErr_Format(PyExc_ValueError,
                     "clock_rate and frame_ticks must be positive: %S, %S", rate, ticks);
        goto done;
    }
    if ((c = cmp(half, quantile, Py_LE)) < 0 || (c && (c = cmp(quantile, one, Py_LT)) < 0))
        goto done;
    if (!c) {
        PyErr_Format(PyExc_ValueError, "quantile must be in [0.5, 1), got %S", quantile);
        goto done;
    }
    if ((c = cmp(fzero, min_delay, Py_LE)) < 0 || (c && (c = cmp(min_delay, max_delay, Py_LE)) < 0))
        goto done;
    if (!c) {
        PyErr_Format(PyExc_ValueError, "need 0 <= min_delay <= max_delay, got %S, %S",
                     min_delay, max_delay);
        goto done;
    }
    long long clock_rate = 0, frame_ticks = 0;
    PyObject *r = PyNumber_Index(rate), *t = r ? PyNumber_Index(ticks) : NULL;
    if (t != NULL) {
        clock_rate = PyLong_AsLongLong(r);
        if (!PyErr_Occurred()) frame_ticks = PyLong_AsLongLong(t);
        if (!PyErr_Occurred() && (clock_rate > MAX_RATE || frame_ticks > MAX_RATE))
            PyErr_SetString(PyExc_OverflowError, "clock_rate and frame_ticks must be < 2**31");
        if (!PyErr_Occurred()) frame = PyNumber_TrueDivide(t, r); /* exactly as Python */
    }
    Py_XDECREF(r);
    Py_XDECREF(t);
    if (frame == NULL) goto done;
    release(s); /* checked: from here on, this is a new buffer */
    s->clock_rate = clock_rate;
    s->frame_ticks = frame_ticks;
    s->min_obj = Py_NewRef(min_delay);
    s->max_obj = Py_NewRef(max_delay);
    s->initial_obj = Py_NewRef(initial);
    s->is_quiet = Py_NewRef(is_quiet);
    s->ssrc = Py_NewRef(Py_None);
    s->old_ssrc = Py_NewRef(Py_None);
    double q;
    if (as_double(min_delay, &s->min_delay) < 0 || as_double(max_delay, &s->max_delay) < 0 ||
        as_double(quantile, &q) < 0 || as_double(frame, &s->frame) < 0)
        goto done;
    s->spill = 1.0 - q;
    s->inv_rate = 1.0 / (double)s->clock_rate;
    double cap = ceil(2 * s->max_delay / s->frame);
    if (isinf(cap)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        goto done;
    }
    if (!(cap < TICKS_LIMIT / (double)s->frame_ticks)) {
        PyErr_SetString(PyExc_OverflowError, "jitter buffer: max_delay out of range");
        goto done;
    }
    s->capacity = (long long)cap + 2;
    s->jump = 2 * s->max_delay > 1.0 ? 2 * s->max_delay : 1.0;
    s->shrink_step = SHRINK_PER_SECOND * s->frame;
    /* min(max(initial_delay, min_delay), max_delay), of the objects */
    chosen = initial;
    if ((c = cmp(min_delay, chosen, Py_GT)) < 0) goto done;
    if (c) chosen = min_delay;
    if ((c = cmp(max_delay, chosen, Py_LT)) < 0) goto done;
    if (c) chosen = max_delay;
    if (as_double(chosen, &s->target) < 0) goto done;
    s->target_obj = chosen;
    double buckets = s->max_delay / BUCKET;
    if (!(buckets < (double)(PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Py_ssize_t) - 2))) {
        PyErr_NoMemory();
        goto done;
    }
    s->hist_len = (Py_ssize_t)buckets + 2;
    s->hist = PyMem_Calloc((size_t)s->hist_len, sizeof *s->hist);
    if (s->hist == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    s->ring_head = s->ring_len = 0;
    s->top_bucket = 0;
    s->received = s->lost = s->late = s->duplicate = 0;
    s->concealed = s->dropped = s->inserted = s->resets = 0;
    s->delay = 0.0;
    reset_stream(s);
    s->ready = 1;
    rc = 0;
done:
    Py_XDECREF(zero);
    Py_XDECREF(half);
    Py_XDECREF(one);
    Py_XDECREF(fzero);
    Py_XDECREF(frame);
    return rc;
}

static int JB_traverse(JB *s, visitproc visit, void *arg) {
    Py_VISIT(s->min_obj);
    Py_VISIT(s->max_obj);
    Py_VISIT(s->initial_obj);
    Py_VISIT(s->is_quiet); /* often a bound method of the buffer's owner: a cycle */
    Py_VISIT(s->ssrc);
    Py_VISIT(s->old_ssrc);
    for (Py_ssize_t e = 0; e < s->t.n; e++) Py_VISIT(s->t.ent[e].packet);
    return 0;
}

static int JB_clear(JB *s) {
    release(s);
    return 0;
}

static void JB_dealloc(JB *s) {
    PyObject_GC_UnTrack(s);
    if (s->weakrefs != NULL) PyObject_ClearWeakRefs((PyObject *)s);
    release(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef JB_methods[] = {
    {"push", (PyCFunction)(void (*)(void))JB_push, METH_FASTCALL | METH_KEYWORDS,
     "push($self, /, packet, arrival)\n--\n\nQueue a packet that arrived at `arrival`. "
     "False when dropped (duplicate, late)."},
    {"pop", (PyCFunction)(void (*)(void))JB_pop, METH_FASTCALL | METH_KEYWORDS,
     "pop($self, /, now)\n--\n\nThe slot to play at `now` (a JitterSlot, or None); call once per "
     "frame."},
    {"note_foreign", (PyCFunction)(void (*)(void))JB_note_foreign,
     METH_FASTCALL | METH_KEYWORDS,
     "note_foreign($self, /, packet)\n--\n\nA packet of this stream that carries no audio took a "
     "sequence number: its gap is not a loss."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef JB_members[] = {
    {"clock_rate", T_LONGLONG, offsetof(JB, clock_rate), READONLY, NULL},
    {"frame_ticks", T_LONGLONG, offsetof(JB, frame_ticks), READONLY, NULL},
    {"capacity", T_LONGLONG, offsetof(JB, capacity), READONLY, NULL},
    {"min_delay", T_OBJECT, offsetof(JB, min_obj), READONLY, NULL},
    {"max_delay", T_OBJECT, offsetof(JB, max_obj), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef JB_getset[] = {
    {"target_delay", (getter)JB_target_delay, NULL, NULL, NULL},
    {"stats", (getter)JB_stats, NULL, "JitterStats now", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject JB_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._jitter.JitterBuffer",
    .tp_basicsize = sizeof(JB),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "JitterBuffer(clock_rate, frame_ticks, min_delay=0.02, max_delay=0.2, *, "
              "initial_delay=0.1, quantile=0.97, is_quiet=None)\n--\n\n"
              "media.jitter's adaptive jitter buffer in C (the reference: PyJitterBuffer).",
    .tp_weaklistoffset = offsetof(JB, weakrefs),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)JB_init,
    .tp_dealloc = (destructor)JB_dealloc,
    .tp_traverse = (traverseproc)JB_traverse,
    .tp_clear = (inquiry)JB_clear,
    .tp_methods = JB_methods,
    .tp_members = JB_members,
    .tp_getset = JB_getset,
};

/* -- the module ------------------------------------------------------------------------ */

/* _bind(JitterSlot, JitterStats, RtpPacket): media.jitter's classes, once at import. */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *slot_cls, *stats_cls, *packet_cls;
    if (!PyArg_ParseTuple(args, "OOO!:_bind", &slot_cls, &stats_cls, &PyType_Type, &packet_cls))
        return NULL;
    if (bind_record(&slot_record, slot_cls, slot_fields) < 0 ||
        bind_record(&stats_record, stats_cls, stats_fields) < 0)
        return NULL;
    PyTypeObject *type = (PyTypeObject *)packet_cls;
    int fast = 1;
    for (int f = 0; f < N_FIELDS; f++) fast &= slot_offset(type, packet_fields[f], &packet_offset[f]);
    Py_XSETREF(packet_type, fast ? (PyTypeObject *)Py_NewRef(type) : NULL);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_bind", bind, METH_VARARGS,
     "_bind(JitterSlot, JitterStats, RtpPacket): the classes to create and read"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "media._jitter", "media.jitter's JitterBuffer in C",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jitter(void) {
    for (int f = 0; f < N_FIELDS; f++)
        if ((packet_names[f] = PyUnicode_InternFromString(packet_fields[f])) == NULL) return NULL;
    if ((str_packet = PyUnicode_InternFromString("packet")) == NULL ||
        (str_missing = PyUnicode_InternFromString("missing")) == NULL ||
        (default_min = PyFloat_FromDouble(0.02)) == NULL ||
        (default_max = PyFloat_FromDouble(0.2)) == NULL ||
        (default_initial = PyFloat_FromDouble(0.1)) == NULL ||
        (default_quantile = PyFloat_FromDouble(0.97)) == NULL)
        return NULL;
    if (PyType_Ready(&JB_Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *constants = Py_BuildValue(
        "{sdsisdsdsisisisisdsisisi}", "_BUCKET", BUCKET, "_HISTORY", HISTORY, "_BASE_WINDOW",
        BASE_WINDOW, "_GROW_MARGIN", GROW_MARGIN, "_GROW_SPACING", GROW_SPACING, "_GROW_WAIT",
        GROW_WAIT, "_DROP_PERSIST", DROP_PERSIST, "_DROP_FORCE", DROP_FORCE,
        "_SHRINK_PER_SECOND", SHRINK_PER_SECOND, "_UNDERRUN_CONCEAL", UNDERRUN_CONCEAL,
        "_LATE_RESYNC", LATE_RESYNC, "_SEEN_BITS", SEEN_BITS);
    if (PyModule_AddObjectRef(m, "JitterBuffer", (PyObject *)&JB_Type) < 0 ||
        PyModule_AddObject(m, "CONSTANTS", constants) < 0) {
        Py_XDECREF(constants);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
