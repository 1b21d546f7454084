/* The tracer's hot path in C: a ``PyEval_SetTrace`` function that records the frames of a ``TraceBuilder``.
 *
 * ``opencwm.trace.tracer`` (Python) defines what a trace is; this module does the same work per interpreter event
 * without a Python call per event, which is where a pure-Python ``sys.settrace`` tracer spends its time. It is
 * an accelerator, not a second definition: it takes the builder's own source map, renderer and frame list, calls
 * back into Python for everything rare (a new code object, locals bound or unbound, a value that needs the
 * renderer's bounded path), and the test suite checks that it gives byte-identical traces to the Python
 * ``settrace`` backend on CruxEval and the golden programs, on every CPython version.
 *
 * What it adds over the Python builder is one cheaper proof that a container is unchanged: when every item a
 * rendering depends on is an immutable atom (or a tuple of them), the proof is the items themselves and the check
 * is pointer identity, instead of re-serialising the items with marshal at every step.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <frameobject.h>
#include <structmember.h>  /* PyMemberDef before 3.12 */

/* CPython 3.11-3.13: a frame's locals are read from its fast-locals array when its code has only plain locals (no
 * cells, free or hidden variables) and nothing was written to its locals from outside, instead of through
 * PyFrame_GetLocals, which on 3.11 and 3.12 first copies every local into the frame's f_locals dict (a dict store
 * per local per event) and on 3.13 returns a proxy that had to be copied. The frame layout is the interpreter's own
 * (its internal header, fixed within a minor version); other versions read f_locals. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE
#define READ_FAST_LOCALS 1
#endif

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX 16  /* T_OBJECT_EX of structmember.h before 3.12 */
#endif

enum { EV_NONE, EV_CALL, EV_LINE, EV_RETURN, EV_EXCEPTION };

static PyObject *EVENT_NAME[5];  /* interned "call", "line", ... (index 0 unused) */
static PyObject *STATUS_OK, *STATUS_RAISED, *STATUS_TRUNCATED, *STATUS_ERROR, *UNCHANGED_TEXT, *EMPTY_TEXT;
static PyObject *SEPARATOR, *ADDRESS_MARK;  /* ", " and " at 0x" */
static PyObject *ID_PROOF;

/* Attribute names, interned once (PyObject_GetAttrString would decode and hash them at every lookup). */
enum { A_ABORT, A_MAP, A_RENDERER, A_MAX_CHARS, A_FRAMES, A_STATEMENT_OF, A_TEXTS, A_DEF_LINES, A_RENDER,
       A_FINGERPRINT, A_UNCHANGED, A_ORDER_NAMES, A_TRACED_DEF_LINE, A_EVENT, A_LINE, A_LINENO, A_LOCALS, A_VALUE,
       A_TRACE_LINES, A_MAX_FRAMES, A_MAX_BYTES, A_FINISHED, A_STATUS, A_ERROR, A_LINE_CACHE, A_COUNT };
static const char *ATTRIBUTE_NAMES[A_COUNT] = {
    "abort_on_limit", "map", "renderer", "max_value_chars", "frames", "statement_of", "texts", "def_lines", "render",
    "fingerprint", "unchanged", "order_names", "traced_def_line", "event", "line", "lineno", "locals", "value",
    "f_trace_lines", "_max_frames", "_max_bytes", "finished", "status", "error", "_line_cache"};
static PyObject *ATTRIBUTE[A_COUNT];  /* first item of an identity proof tuple: (ID_PROOF, type, count, items) */

/* ---- scope: what the recorder remembers about one live frame -------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *entries;    /* per name shown: (object if immutable else MUTABLE, rendering, proof or None), or None */
    PyObject *raw_names;  /* the locals' key order at the last snapshot (list) or NULL */
    PyObject *names;      /* the order the trace shows (list) */
    int in_order;         /* names == raw_names: the locals can be read in order, without lookups */
    PyObject *unchanged;  /* {name: ".."} for every name shown, copied to start a line frame's locals, or NULL */
    PyObject *exception;  /* the exception most recently raised into this frame, or NULL */
    int last_event;
    long last_statement;
    int fresh_exception;
} Scope;

/* Every object a Scope holds, for the GC's traverse and clear (one list, so that neither forgets one). */
#define SCOPE_OBJECTS(X) X(entries) X(raw_names) X(names) X(exception) X(unchanged)
#define VISIT_MEMBER(name) Py_VISIT(self->name);
#define CLEAR_MEMBER(name) Py_CLEAR(self->name);

static int scope_traverse(Scope *self, visitproc visit, void *arg) {
    SCOPE_OBJECTS(VISIT_MEMBER)
    return 0;
}

static int scope_clear(Scope *self) {
    SCOPE_OBJECTS(CLEAR_MEMBER)
    return 0;
}

static void scope_dealloc(Scope *self) {
    PyObject_GC_UnTrack(self);
    scope_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ScopeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "opencwm.trace._native.Scope",
    .tp_basicsize = sizeof(Scope),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)scope_traverse,
    .tp_clear = (inquiry)scope_clear,
    .tp_dealloc = (destructor)scope_dealloc,
};

static Scope *scope_new(void) {
    Scope *scope = PyObject_GC_New(Scope, &ScopeType);
    if (scope == NULL) return NULL;
    scope->entries = PyList_New(0);
    scope->in_order = 0;
    scope->unchanged = NULL;
    scope->raw_names = NULL;
    scope->names = PyList_New(0);
    scope->exception = NULL;
    scope->last_event = EV_NONE;
    scope->last_statement = 0;
    scope->fresh_exception = 0;
    if (scope->entries == NULL || scope->names == NULL) {
        Py_DECREF(scope);
        return NULL;
    }
    PyObject_GC_Track(scope);
    return scope;
}

/* ---- recorder ------------------------------------------------------------------------------------------- */

/* What the recorder knows about one source line, filled on first use: the statement it belongs to, and, as a
 * frame's line, its text and its number as an int object (shared by the frames of that line). */
typedef struct {
    long statement;          /* 0: not looked up yet */
    PyObject *text, *number; /* strong references, or NULL: not looked up yet */
} LineInfo;

/* The lines of one source map, kept on the map (its ``_line_cache``), so that every trace of the same program
 * shares what was looked up: it depends on the map alone. Holds strings and ints only (no cycles, no GC). */
typedef struct {
    PyObject_HEAD
    LineInfo *lines;  /* indexed by line number, n_lines of them (grown on demand) */
    Py_ssize_t n_lines;
} LineCache;

static void line_cache_dealloc(LineCache *self) {
    for (Py_ssize_t i = 0; i < self->n_lines; i++) {
        Py_CLEAR(self->lines[i].text);
        Py_CLEAR(self->lines[i].number);
    }
    PyMem_Free(self->lines);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LineCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "opencwm.trace._native.LineCache",
    .tp_basicsize = sizeof(LineCache),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)line_cache_dealloc,
};

typedef struct {
    PyObject_HEAD
    PyObject *builder;       /* the Python TraceBuilder: source map helpers and the renderer's slow paths */
    PyObject *frames;        /* the builder's frame list, appended to */
    PyObject *frame_type;    /* record.Frame */
    PyObject *limit_error;   /* tracer.LimitReached */
    PyObject *mutable;       /* the builder's cache marker for mutable objects */
    PyObject *statements;    /* line -> statement line (the source map's dict) */
    PyObject *texts;         /* line -> its text (the source map's dict) */
    PyObject *code_info;     /* code -> def line (int) if traced, else None (shared by the map's traces) */
    PyObject *scopes;        /* frame -> Scope */
    /* The builder's slow paths, looked up on first use (many traces never need them). */
    PyObject *render, *fingerprint, *unchanged, *order_names, *def_line;
    PyObject *entry_frame;   /* strong reference, or NULL */
    PyObject *status, *error;
    PyFrameObject *last_frame; /* a one-entry cache of the scopes lookup (borrowed; valid while in scopes) */
    Scope *last_scope;
    Py_ssize_t max_frames, max_bytes, max_chars, bytes;
    int abort_on_limit, finished;
    unsigned char return_ops[256], yield_ops[256];
    int generator_flags;
    Py_ssize_t frame_slots[5];  /* offsets of Frame's slots (event, line, lineno, locals, value), or 0: call it */
    LineCache *line_cache;   /* the source map's (strong reference) */
} Recorder;

/* Every object a Recorder holds, for the GC's traverse and clear. */
#define RECORDER_OBJECTS(X) X(builder) X(frames) X(frame_type) X(limit_error) X(mutable) X(statements) X(texts) \
    X(code_info) X(scopes) X(render) X(fingerprint) X(unchanged) X(order_names) X(def_line) X(entry_frame)      \
    X(status) X(error) X(line_cache)

static int recorder_traverse(Recorder *self, visitproc visit, void *arg) {
    RECORDER_OBJECTS(VISIT_MEMBER)
    return 0;
}

static int recorder_clear(Recorder *self) {
    RECORDER_OBJECTS(CLEAR_MEMBER)
    self->last_frame = NULL;
    self->last_scope = NULL;
    return 0;
}

static void recorder_dealloc(Recorder *self) {
    PyObject_GC_UnTrack(self);
    recorder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_attr_chain(PyObject *obj, int a, int b) {
    PyObject *first = PyObject_GetAttr(obj, ATTRIBUTE[a]);
    if (first == NULL || b < 0) return first;
    PyObject *second = PyObject_GetAttr(first, ATTRIBUTE[b]);
    Py_DECREF(first);
    return second;
}

static int fill_ops(unsigned char *table, PyObject *ops) {
    PyObject *iter = PyObject_GetIter(ops), *item;
    if (iter == NULL) return -1;
    while ((item = PyIter_Next(iter)) != NULL) {
        long op = PyLong_AsLong(item);
        Py_DECREF(item);
        if (op >= 0 && op < 256) table[op] = 1;
    }
    Py_DECREF(iter);
    return PyErr_Occurred() ? -1 : 0;
}

/* Frame is a slots dataclass whose __init__ only assigns its five fields: when its slots are plain object slots,
 * frames are built by filling them, as __init__ would, without running Python code per frame. */
static PyObject *known_frame_type;  /* the last type inspected, and its slots */
static Py_ssize_t known_frame_slots[5];

static int find_frame_slots(Recorder *self) {
    if (self->frame_type == known_frame_type) {
        memcpy(self->frame_slots, known_frame_slots, sizeof(known_frame_slots));
        return 0;
    }
    memset(self->frame_slots, 0, sizeof(self->frame_slots));
    if (!PyType_Check(self->frame_type)) return 0;
    Py_ssize_t offsets[5];
    for (int i = 0; i < 5; i++) {
        PyObject *descr = PyObject_GetAttr(self->frame_type, ATTRIBUTE[A_EVENT + i]);
        if (descr == NULL) return -1;
        int plain = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                    ((PyMemberDescrObject *)descr)->d_member->type == Py_T_OBJECT_EX &&
                    ((PyMemberDescrObject *)descr)->d_member->flags == 0;
        offsets[i] = plain ? ((PyMemberDescrObject *)descr)->d_member->offset : 0;
        Py_DECREF(descr);
        if (!plain) return 0;
    }
    memcpy(self->frame_slots, offsets, sizeof(offsets));
    memcpy(known_frame_slots, offsets, sizeof(offsets));
    Py_XSETREF(known_frame_type, Py_NewRef(self->frame_type));
    return 0;
}

static PyObject *new_frame(Recorder *self, PyObject **fields) {
    if (self->frame_slots[0] == 0) return PyObject_Vectorcall(self->frame_type, fields, 5, NULL);
    PyTypeObject *type = (PyTypeObject *)self->frame_type;
    PyObject *frame = type->tp_alloc(type, 0);
    if (frame == NULL) return NULL;
    for (int i = 0; i < 5; i++) *(PyObject **)((char *)frame + self->frame_slots[i]) = Py_NewRef(fields[i]);
    /* Its fields are strings, ints, None and a dict of strings: it cannot be part of a reference cycle, so the
     * cyclic GC need not scan the thousands of frames a trace holds. */
    if (PyObject_IS_GC(frame)) PyObject_GC_UnTrack(frame);
    return frame;
}

/* What every recorder of this interpreter shares, set once by ``configure`` (tracer.py, at import). */
static struct {
    PyObject *frame_type, *limit_error, *mutable;  /* strong references, or NULL before configure */
    unsigned char return_ops[256], yield_ops[256];
    int generator_flags;
} config;

/* configure(frame_type, limit_error, mutable, return_ops, yield_ops, generator_flags) */
static PyObject *native_configure(PyObject *module, PyObject *args) {
    PyObject *frame_type, *limit_error, *mutable, *return_ops, *yield_ops;
    int generator_flags;
    unsigned char returns[256] = {0}, yields[256] = {0};
    if (!PyArg_ParseTuple(args, "OOOOOi", &frame_type, &limit_error, &mutable, &return_ops, &yield_ops,
                          &generator_flags) ||
        fill_ops(returns, return_ops) < 0 || fill_ops(yields, yield_ops) < 0)
        return NULL;
    Py_XSETREF(config.frame_type, Py_NewRef(frame_type));
    Py_XSETREF(config.limit_error, Py_NewRef(limit_error));
    Py_XSETREF(config.mutable, Py_NewRef(mutable));
    memcpy(config.return_ops, returns, 256);
    memcpy(config.yield_ops, yields, 256);
    config.generator_flags = generator_flags;
    Py_RETURN_NONE;
}

static int recorder_setup(Recorder *self, PyObject *builder, Py_ssize_t max_frames, Py_ssize_t max_bytes) {
    if (config.frame_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_native.configure() was not called");
        return -1;
    }
    recorder_clear(self);
    self->builder = Py_NewRef(builder);
    self->frame_type = Py_NewRef(config.frame_type);
    if (find_frame_slots(self) < 0) return -1;
    self->limit_error = Py_NewRef(config.limit_error);
    self->mutable = Py_NewRef(config.mutable);
    self->generator_flags = config.generator_flags;
    self->max_frames = max_frames;
    self->max_bytes = max_bytes;
    memcpy(self->return_ops, config.return_ops, 256);
    memcpy(self->yield_ops, config.yield_ops, 256);
    PyObject *abort = PyObject_GetAttr(builder, ATTRIBUTE[A_ABORT]);
    if (abort == NULL) return -1;
    self->abort_on_limit = PyObject_IsTrue(abort);
    Py_DECREF(abort);
    PyObject *max_chars = PyObject_GetAttr(builder, ATTRIBUTE[A_MAX_CHARS]);
    if (max_chars == NULL) return -1;
    self->max_chars = PyLong_AsSsize_t(max_chars);
    Py_DECREF(max_chars);
    if (self->max_chars == -1 && PyErr_Occurred()) return -1;
    self->frames = PyObject_GetAttr(builder, ATTRIBUTE[A_FRAMES]);
    PyObject *map = PyObject_GetAttr(builder, ATTRIBUTE[A_MAP]);
    if (map == NULL) return -1;
    self->statements = PyObject_GetAttr(map, ATTRIBUTE[A_STATEMENT_OF]);
    self->texts = PyObject_GetAttr(map, ATTRIBUTE[A_TEXTS]);
    PyObject *cache = PyObject_GetAttr(map, ATTRIBUTE[A_LINE_CACHE]);
    if (cache != NULL && !Py_IS_TYPE(cache, &LineCacheType)) {  /* None: the map's first trace */
        Py_SETREF(cache, (PyObject *)PyObject_New(LineCache, &LineCacheType));
        if (cache != NULL) {
            ((LineCache *)cache)->lines = NULL;
            ((LineCache *)cache)->n_lines = 0;
            if (PyObject_SetAttr(map, ATTRIBUTE[A_LINE_CACHE], cache) < 0) Py_CLEAR(cache);
        }
    }
    Py_DECREF(map);
    if (cache == NULL) return -1;
    self->line_cache = (LineCache *)cache;
    self->code_info = PyObject_GetAttr(builder, ATTRIBUTE[A_DEF_LINES]);
    self->scopes = PyDict_New();
    self->status = Py_NewRef(STATUS_OK);
    self->error = Py_NewRef(Py_None);
    self->bytes = 0;
    self->finished = 0;
    if (!self->frames || !self->statements || !self->texts || !self->code_info || !self->scopes) return -1;
    if (!PyList_Check(self->frames) || !PyDict_Check(self->statements) || !PyDict_Check(self->texts) ||
        !PyDict_Check(self->code_info)) {
        PyErr_SetString(PyExc_TypeError, "the builder's frames must be a list and its maps dicts");
        return -1;
    }
    return 0;
}

/* The builder's method ``name`` (of ``part`` when not -1), looked up once. Borrowed reference, or NULL. */
static PyObject *slow_path(Recorder *self, PyObject **slot, int part, int name) {
    if (*slot == NULL) *slot = part >= 0 ? get_attr_chain(self->builder, part, name)
                                         : PyObject_GetAttr(self->builder, ATTRIBUTE[name]);
    return *slot;
}

#define RENDER(self) slow_path(self, &(self)->render, A_RENDERER, A_RENDER)
#define FINGERPRINT(self) slow_path(self, &(self)->fingerprint, A_RENDERER, A_FINGERPRINT)
#define UNCHANGED(self) slow_path(self, &(self)->unchanged, A_RENDERER, A_UNCHANGED)
#define ORDER_NAMES(self) slow_path(self, &(self)->order_names, -1, A_ORDER_NAMES)
#define DEF_LINE(self) slow_path(self, &(self)->def_line, -1, A_TRACED_DEF_LINE)

static PyObject *call1(PyObject *callable, PyObject *arg) {
    return callable == NULL ? NULL : PyObject_CallOneArg(callable, arg);
}

static PyObject *call2(PyObject *callable, PyObject *a, PyObject *b) {
    return callable == NULL ? NULL : PyObject_CallFunctionObjArgs(callable, a, b, NULL);
}

/* ---- rendering and proofs ------------------------------------------------------------------------------- */

/* The cache's tuples hold atoms, strings, builtin types, bytes and tuples of those: they cannot be part of a
 * reference cycle, so they are taken off the cyclic GC's lists (as CPython itself does lazily for such tuples). */
static PyObject *acyclic(PyObject *tuple) {
    if (tuple != NULL && PyObject_GC_IsTracked(tuple)) PyObject_GC_UnTrack(tuple);
    return tuple;
}

static int is_atom(PyObject *obj, int depth) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyLong_Type || type == &PyUnicode_Type || type == &PyFloat_Type || type == &PyBool_Type ||
        obj == Py_None || type == &PyBytes_Type || type == &PyComplex_Type || type == &PyRange_Type)
        return 1;
    if (type == &PyTuple_Type && depth < 4) {  /* a tuple of atoms is as immutable as an atom */
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++)
            if (!is_atom(PyTuple_GET_ITEM(obj, i), depth + 1)) return 0;
        return 1;
    }
    return 0;
}

/* The most items a container may have to be rendered whole (more are cut by the Python renderer). */
static Py_ssize_t whole_limit(Recorder *self, PyTypeObject *type) {
    return type == &PyDict_Type ? self->max_chars / 4 : self->max_chars / 3;
}

static int is_container(PyTypeObject *type) {
    return type == &PyList_Type || type == &PyTuple_Type || type == &PyDict_Type || type == &PySet_Type ||
           type == &PyFrozenSet_Type;
}

static int is_sequence(PyTypeObject *type) { return type == &PyList_Type || type == &PyTuple_Type; }

/* The container's items (dicts: keys and values, interleaved) as a new tuple, or NULL with an error set. */
static PyObject *container_items(PyObject *obj, Py_ssize_t limit) {
    PyTypeObject *type = Py_TYPE(obj);
    if (is_sequence(type)) {
        Py_ssize_t n = Py_MIN(limit, PySequence_Fast_GET_SIZE(obj));
        PyObject **source = PySequence_Fast_ITEMS(obj), *items = PyTuple_New(n);
        for (Py_ssize_t i = 0; items != NULL && i < n; i++) PyTuple_SET_ITEM(items, i, Py_NewRef(source[i]));
        return items;
    }
    if (type == &PyDict_Type) {
        Py_ssize_t count = PyDict_GET_SIZE(obj), pos = 0, i = 0;
        PyObject *items = PyTuple_New(2 * count), *key, *value;
        while (items != NULL && i < count && PyDict_Next(obj, &pos, &key, &value)) {
            PyTuple_SET_ITEM(items, 2 * i, Py_NewRef(key));
            PyTuple_SET_ITEM(items, 2 * i + 1, Py_NewRef(value));
            i++;
        }
        return items;
    }
    return PySequence_Tuple(obj);
}

static int all_atoms(PyObject *items) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(items); i++)
        if (!is_atom(PyTuple_GET_ITEM(items, i), 0)) return 0;
    return 1;
}

#define SMALL_INTS 1024
static PyObject *SMALL_INT_TEXT[SMALL_INTS];  /* repr of 0 .. SMALL_INTS - 1, made on first use */

/* The decimal text of a C long (what int.__repr__ gives, without its per-digit signal checks). */
static PyObject *long_text(long value) {
    char digits[24], *end = digits + sizeof(digits), *start = end;
    unsigned long magnitude = value < 0 ? 0UL - (unsigned long)value : (unsigned long)value;
    do {
        *--start = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0) *--start = '-';
    PyObject *text = PyUnicode_New(end - start, 127);
    if (text != NULL) memcpy(PyUnicode_1BYTE_DATA(text), start, end - start);
    return text;
}

/* repr() of an atom; those of small ints are kept. */
static PyObject *atom_repr(PyObject *obj) {
    if (PyLong_CheckExact(obj)) {
        int overflow;
        long value = PyLong_AsLongAndOverflow(obj, &overflow);
        if (!overflow && value >= 0 && value < SMALL_INTS) {
            if (SMALL_INT_TEXT[value] == NULL && (SMALL_INT_TEXT[value] = long_text(value)) == NULL) return NULL;
            return Py_NewRef(SMALL_INT_TEXT[value]);
        }
        if (!overflow) return long_text(value);
    }
    return PyObject_Repr(obj);
}

/* Types whose repr is short, safe and address-free (render._SIMPLE). */
static int is_simple(PyObject *obj) {
    PyTypeObject *type = Py_TYPE(obj);
    return type == &PyLong_Type || type == &PyFloat_Type || type == &PyBool_Type || obj == Py_None;
}

/* What ``render`` learnt about a list or tuple it rendered itself, for the proof that follows. */
typedef struct {
    PyObject *texts;  /* the reprs of the items the rendering depends on (new reference), or NULL */
} Rendered;

/* The repr of item ``i`` of a sequence: the previous rendering's when the item is the same object as then. */
static PyObject *item_repr(PyObject *item, Py_ssize_t i, PyObject *old_items, PyObject *old_texts) {
    if (old_texts != NULL && i < PyTuple_GET_SIZE(old_texts) && PyTuple_GET_ITEM(old_items, i) == item)
        return Py_NewRef(PyTuple_GET_ITEM(old_texts, i));
    return atom_repr(item);
}

#define CUT_MARKER "...<+%zd chars>"  /* render.truncation_marker */

/* ``text`` (stolen) cut to its first ``limit`` characters and marked with how many were left out (``hidden``
 * more than the text had), as the Python renderer cuts a long rendering. */
static PyObject *cut_text(PyObject *text, Py_ssize_t limit, Py_ssize_t hidden) {
    PyObject *shown = PyUnicode_Substring(text, 0, limit);
    PyObject *cut = shown == NULL ? NULL : PyUnicode_FromFormat("%U" CUT_MARKER, shown,
                                                                PyUnicode_GET_LENGTH(text) - limit + hidden);
    Py_XDECREF(shown);
    Py_DECREF(text);
    return cut;
}

/* Writes ASCII text into a new string of a known size, keeping what fits (the first ``limit`` characters of a
 * rendering that is cut). */
typedef struct {
    Py_UCS1 *out;
    Py_ssize_t used, room;
} Writer;

/* memcpy for the few characters of most reprs: overlapping fixed-size moves instead of a library call (never
 * reads or writes outside the ``n`` characters). */
static inline void copy_chars(Py_UCS1 *out, const Py_UCS1 *in, Py_ssize_t n) {
    if (n > 16) {
        memcpy(out, in, n);
    } else if (n >= 8) {
        memcpy(out, in, 8);
        memcpy(out + n - 8, in + n - 8, 8);
    } else if (n >= 4) {
        memcpy(out, in, 4);
        memcpy(out + n - 4, in + n - 4, 4);
    } else if (n >= 2) {
        memcpy(out, in, 2);
        memcpy(out + n - 2, in + n - 2, 2);
    } else if (n == 1) {
        out[0] = in[0];
    }
}

static inline void put(Writer *w, const void *chars, Py_ssize_t n) {
    n = Py_MIN(n, w->room - w->used);
    if (n > 0) {
        copy_chars(w->out + w->used, chars, n);
        w->used += n;
    }
}

/* "[a, b]" (or "(a, b)", "(a,)") from the items' reprs ``texts`` (``length``: the sum of their lengths, all ASCII),
 * followed by ``tail`` (NULL: none) before the closing bracket; when longer than ``limit`` characters, its first
 * ``limit`` followed by the cut marker, as the Python renderer cuts any long repr. */
static PyObject *join_ascii(PyObject **texts, Py_ssize_t n, Py_ssize_t length, int is_list, const char *tail,
                            Py_ssize_t limit) {
    Py_ssize_t tail_length = tail ? (Py_ssize_t)strlen(tail) : 0;
    Py_ssize_t full = 2 + length + 2 * (n > 0 ? n - 1 : 0) + (!is_list && n == 1 && !tail) + tail_length;
    char marker[48] = "";
    if (full > limit) snprintf(marker, sizeof(marker), CUT_MARKER, full - limit);
    Py_ssize_t shown = Py_MIN(full, limit), extra = (Py_ssize_t)strlen(marker);
    PyObject *text = PyUnicode_New(shown + extra, 127);
    if (text == NULL) return NULL;
    Writer w = {PyUnicode_1BYTE_DATA(text), 0, shown};
    put(&w, is_list ? "[" : "(", 1);
    for (Py_ssize_t i = 0; i < n && w.used < w.room; i++) {
        if (i) put(&w, ", ", 2);
        put(&w, PyUnicode_1BYTE_DATA(texts[i]), PyUnicode_GET_LENGTH(texts[i]));
    }
    if (tail) put(&w, tail, tail_length);
    if (!is_list && n == 1 && !tail) put(&w, ",", 1);
    put(&w, is_list ? "]" : ")", 1);
    memcpy(w.out + shown, marker, extra);
    return text;
}

/* 1 if an item's repr looks like it holds a memory address (the Python renderer renumbers those), 0 if not, -1 on
 * error. Checked per item: the ", " between items cannot be part of " at 0x". */
static int has_address(PyObject *item, PyObject *text) {
    return is_simple(item) ? 0 : PyUnicode_Contains(text, ADDRESS_MARK);
}

/* A list or tuple too long to show whole, whose first items are simple values: rendered as the Python renderer's
 * ``_bounded_repr`` with ``_cut_simple`` (or ``_cut_items``) does. Both show the longest run of first items whose
 * joined reprs and a following ", " fit the budget (or the first ``max_chars // 3`` items if they fit whole), so
 * only the items up to the first one left out are rendered. NULL without an error when the Python renderer must
 * do it (an item among those is not a simple value). */
static PyObject *render_cut_sequence(Recorder *self, PyObject *obj, PyObject *old_items, PyObject *old_texts,
                                     Rendered *info) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj), third = self->max_chars / 3;
    Py_ssize_t budget = self->max_chars - 2 - 24;  /* brackets, and room for the marker */
    PyObject **items = PySequence_Fast_ITEMS(obj);
    if (n <= third || budget <= 0) return NULL;
    PyObject **texts = PyMem_New(PyObject *, third);
    if (texts == NULL) return PyErr_NoMemory();
    Py_ssize_t chars = 0, fitting = 0, fitting_chars = 0, made = 0, i;  /* chars: the items' reprs, summed */
    PyObject *text = NULL;
    for (i = 0; i < third; i++) {
        if (!is_simple(items[i])) goto done;
        if ((texts[i] = item_repr(items[i], i, old_items, old_texts)) == NULL) goto done;
        made++;
        chars += PyUnicode_GET_LENGTH(texts[i]);
        Py_ssize_t joined = chars + 2 * i;  /* items 0..i joined by ", " */
        if (joined > budget) break;
        if (joined + 2 <= budget) {  /* and a ", " after them */
            fitting = i + 1;
            fitting_chars = chars;
        }
    }
    Py_ssize_t shown = i == third ? third : fitting;
    char tail[48];
    snprintf(tail, sizeof(tail), "%s...<+%zd items>", shown ? ", " : "", n - shown);
    /* simple values' reprs are ASCII */
    text = join_ascii(texts, shown, i == third ? chars : fitting_chars, Py_TYPE(obj) == &PyList_Type, tail,
                      PY_SSIZE_T_MAX);
    if (text != NULL) {
        /* the proof keeps the items shown and the first one left out (it decided the cut) */
        Py_ssize_t kept = Py_MIN(shown + 1, third);
        info->texts = PyTuple_New(kept);
        for (Py_ssize_t k = 0; info->texts != NULL && k < kept; k++)
            PyTuple_SET_ITEM(info->texts, k, Py_NewRef(texts[k]));
        if (info->texts == NULL) Py_CLEAR(text);
    }
done:
    for (Py_ssize_t k = 0; k < made; k++) Py_DECREF(texts[k]);
    PyMem_Free(texts);
    return text;
}

/* A list or tuple with few enough items to show whole, of atoms: its repr, built from its items' reprs (those of
 * items that are the same objects as at the previous rendering are reused), and cut to the budget with the
 * characters left out counted (as the Python renderer cuts any long repr). NULL without an error when the Python
 * renderer must do it (an item that is not an atom, text that looks like an address, a repr far over the budget). */
static PyObject *render_whole_sequence(Recorder *self, PyObject *obj, PyObject *old_items, PyObject *old_texts,
                                       Rendered *info) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj), length = 0;
    Py_ssize_t n_old = old_texts != NULL ? PyTuple_GET_SIZE(old_texts) : 0;
    PyObject **items = PySequence_Fast_ITEMS(obj);
    PyObject *texts = PyTuple_New(n);
    if (texts == NULL) return NULL;
    int ascii = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i], *text;
        if (i < n_old && PyTuple_GET_ITEM(old_items, i) == item) {  /* an atom, rendered then */
            text = Py_NewRef(PyTuple_GET_ITEM(old_texts, i));
        } else {
            int found;
            if (!is_atom(item, 0) || (text = atom_repr(item)) == NULL) {
                Py_DECREF(texts);
                return NULL;
            }
            if ((found = has_address(item, text)) != 0) {
                Py_DECREF(text);
                Py_DECREF(texts);
                return NULL;  /* with an error set when found < 0 */
            }
        }
        PyTuple_SET_ITEM(texts, i, text);
        ascii &= PyUnicode_IS_ASCII(text);
        length += PyUnicode_GET_LENGTH(text);
        if (length > 8 * self->max_chars) {  /* building it whole would cost more than the Python renderer's way */
            Py_DECREF(texts);
            return NULL;
        }
    }
    int is_list = Py_TYPE(obj) == &PyList_Type;
    PyObject *text;
    if (ascii) {
        text = join_ascii(((PyTupleObject *)texts)->ob_item, n, length, is_list, NULL, self->max_chars);
    } else {
        PyObject *inner = PyUnicode_Join(SEPARATOR, texts);
        text = inner == NULL ? NULL : PyUnicode_FromFormat("%s%U%s%s", is_list ? "[" : "(", inner,
                                                           !is_list && n == 1 ? "," : "", is_list ? "]" : ")");
        Py_XDECREF(inner);
        if (text != NULL && PyUnicode_GET_LENGTH(text) > self->max_chars)
            text = cut_text(text, self->max_chars, 0);
    }
    if (text == NULL) {
        Py_DECREF(texts);
        return NULL;
    }
    info->texts = texts;
    return text;
}

/* Whether repr() escapes any of these ASCII characters (a control character, DEL, a backslash or a quote):
 * sixteen at a time with SSE2 (every x86-64), else eight at a time with the "has a zero byte" test on each word
 * (exact for ASCII, whose bytes are all < 0x80). */
static int repr_escapes(const Py_UCS1 *chars, Py_ssize_t n) {
    Py_ssize_t i = 0;
#ifdef __SSE2__
    const __m128i space = _mm_set1_epi8(0x20), quote = _mm_set1_epi8('\''), backslash = _mm_set1_epi8('\\'),
                  del = _mm_set1_epi8(0x7f);
    __m128i seen = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(chars + i));
        seen = _mm_or_si128(seen, _mm_or_si128(_mm_or_si128(_mm_cmplt_epi8(v, space), _mm_cmpeq_epi8(v, quote)),
                                               _mm_or_si128(_mm_cmpeq_epi8(v, backslash), _mm_cmpeq_epi8(v, del))));
    }
    if (_mm_movemask_epi8(seen)) return 1;
#endif
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t found = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word, quote8, backslash8, del8;
        memcpy(&word, chars + i, 8);
        quote8 = word ^ (ones * '\'');
        backslash8 = word ^ (ones * '\\');
        del8 = word ^ (ones * 0x7f);
        found |= ((word - ones * 0x20) & ~word) | ((quote8 - ones) & ~quote8) | ((backslash8 - ones) & ~backslash8) |
                 ((del8 - ones) & ~del8);
    }
    if (found & highs) return 1;
    for (; i < n; i++)
        if (chars[i] < 0x20 || chars[i] == 0x7f || chars[i] == '\\' || chars[i] == '\'') return 1;
    return 0;
}

/* A string: as the Python renderer does, the repr of at most twice the budget of characters, cut to the budget
 * when longer, with the characters left out counted in the marker. */
static PyObject *render_string(Recorder *self, PyObject *obj) {
    Py_ssize_t length = PyUnicode_GET_LENGTH(obj), limit = self->max_chars, hidden = 0;
    if (PyUnicode_IS_ASCII(obj) && limit >= 2) {  /* printable ASCII without ' or \: repr only adds the quotes */
        Py_ssize_t head = Py_MIN(length, 2 * limit);
        const Py_UCS1 *chars = PyUnicode_1BYTE_DATA(obj);
        if (!repr_escapes(chars, head)) {
            Py_ssize_t full = head + 2;  /* the length of repr(head) */
            char marker[48] = "";
            if (full > limit || head < length)
                snprintf(marker, sizeof(marker), CUT_MARKER, full - limit + (length - head));
            Py_ssize_t shown = Py_MIN(full, limit), extra = (Py_ssize_t)strlen(marker);
            PyObject *text = PyUnicode_New(shown + extra, 127);
            if (text == NULL) return NULL;
            Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
            out[0] = '\'';
            memcpy(out + 1, chars, Py_MIN(head, shown - 1));
            if (!extra) out[shown - 1] = '\'';
            memcpy(out + shown, marker, extra);
            return text;
        }
    }
    PyObject *head = Py_NewRef(obj);
    if (length > 2 * limit) {
        hidden = length - 2 * limit;
        Py_SETREF(head, PyUnicode_Substring(obj, 0, 2 * limit));
        if (head == NULL) return NULL;
    }
    PyObject *text = PyObject_Repr(head);
    Py_DECREF(head);
    if (text == NULL || (PyUnicode_GET_LENGTH(text) <= limit && !hidden)) return text;
    return cut_text(text, limit, hidden);
}

/* The exact rendering of an object, as the Python renderer gives it. Simple values, strings, lists and tuples of
 * atoms (reusing the item reprs of ``old_proof`` for items that are the same objects as then), long lists and
 * tuples of simple values and short dicts and sets of atoms are rendered here (no user code runs for them);
 * everything else by the Python renderer. */
static PyObject *render(Recorder *self, PyObject *obj, PyObject *old_proof, Rendered *info) {
    PyTypeObject *type = Py_TYPE(obj);
    info->texts = NULL;
    if (is_simple(obj)) {
        if (type == &PyLong_Type) {  /* larger ints take the Python renderer's guarded path */
            int overflow;
            PyLong_AsLongLongAndOverflow(obj, &overflow);
            if (overflow) return call1(RENDER(self), obj);
        }
        PyObject *text = atom_repr(obj);
        if (text == NULL || PyUnicode_GET_LENGTH(text) <= self->max_chars) return text;
        Py_DECREF(text);
        return call1(RENDER(self), obj);
    }
    if (type == &PyUnicode_Type) return render_string(self, obj);
    if (!is_container(type)) return call1(RENDER(self), obj);
    PyObject *text = NULL;
    int whole = PyObject_Length(obj) <= whole_limit(self, type);
    if (is_sequence(type)) {
        PyObject *old_items = NULL, *old_texts = NULL;
        if (old_proof != NULL && PyTuple_Check(old_proof) && PyTuple_GET_SIZE(old_proof) == 5 &&
            PyTuple_GET_ITEM(old_proof, 0) == ID_PROOF && PyTuple_GET_ITEM(old_proof, 4) != Py_None) {
            old_items = PyTuple_GET_ITEM(old_proof, 3);
            old_texts = PyTuple_GET_ITEM(old_proof, 4);
        }
        text = whole ? render_whole_sequence(self, obj, old_items, old_texts, info)
                     : render_cut_sequence(self, obj, old_items, old_texts, info);
    } else if (whole) {  /* dicts and sets: their plain repr, when their items are atoms */
        PyObject *items = container_items(obj, PY_SSIZE_T_MAX);
        if (items == NULL) return NULL;
        int atoms = all_atoms(items);
        Py_DECREF(items);
        if (atoms) {
            text = PyObject_Repr(obj);
            int found = text == NULL ? -1 : PyUnicode_GET_LENGTH(text) > self->max_chars ? 1
                                      : PyUnicode_Contains(text, ADDRESS_MARK);
            if (found != 0) Py_CLEAR(text);
        }
    }
    if (text != NULL || PyErr_Occurred()) return text;
    Py_CLEAR(info->texts);
    return call1(RENDER(self), obj);
}

/* A proof that ``obj`` renders as ``text`` while it holds: an identity proof (ID_PROOF, type, length, items,
 * item reprs or None) when every item the rendering depends on is an atom, else the Python renderer's fingerprint
 * (or None: no proof, render again at every step). */
static PyObject *make_proof(Recorder *self, PyObject *obj, PyObject *text, Rendered *info) {
    PyTypeObject *type = Py_TYPE(obj);
    if (!is_container(type)) Py_RETURN_NONE;  /* only builtin containers have proofs (see Renderer.fingerprint) */
    Py_ssize_t count = PyObject_Length(obj);
    if (count < 0) return NULL;
    PyObject *items = NULL;
    if (info->texts != NULL) {  /* rendered here: the items its reprs are of */
        items = container_items(obj, PyTuple_GET_SIZE(info->texts));
        if (items == NULL) return NULL;
    } else if (count <= whole_limit(self, type)) {  /* shown whole: every item matters */
        items = container_items(obj, PY_SSIZE_T_MAX);
        if (items == NULL) return NULL;
        if (!all_atoms(items)) Py_CLEAR(items);
    }
    if (items == NULL) {
        PyObject *proof = call2(FINGERPRINT(self), obj, text);
        if (proof == NULL || !PyTuple_Check(proof) || PyTuple_GET_SIZE(proof) != 4 || !is_sequence(type))
            return proof;
        /* A list or tuple the Python renderer cut: its length and the first ``keep`` items decide. */
        PyObject *keep = PyTuple_GET_ITEM(proof, 2);
        Py_ssize_t limit = keep == Py_None ? count : PyLong_AsSsize_t(keep);
        if (limit == -1 && PyErr_Occurred()) {
            Py_DECREF(proof);
            return NULL;
        }
        items = container_items(obj, limit);
        if (items == NULL) {
            Py_DECREF(proof);
            return NULL;
        }
        if (!all_atoms(items)) {  /* an item could change inside: keep marshal's proof */
            Py_DECREF(items);
            return proof;
        }
        Py_DECREF(proof);
    }
    PyObject *count_obj = PyLong_FromSsize_t(count);
    acyclic(items);
    acyclic(info->texts);
    PyObject *identity = count_obj == NULL ? NULL : acyclic(PyTuple_Pack(5, ID_PROOF, (PyObject *)type, count_obj,
                                                                         items, info->texts ? info->texts : Py_None));
    Py_XDECREF(count_obj);
    Py_DECREF(items);
    return identity;
}

/* 1 if the proof still holds, 0 if not, -1 on error. */
static int proof_holds(Recorder *self, PyObject *obj, PyObject *proof) {
    if (PyTuple_GET_SIZE(proof) != 5 || PyTuple_GET_ITEM(proof, 0) != ID_PROOF) {
        PyObject *result = call2(UNCHANGED(self), obj, proof);
        if (result == NULL) return -1;
        int holds = PyObject_IsTrue(result);
        Py_DECREF(result);
        return holds;
    }
    PyTypeObject *type = (PyTypeObject *)PyTuple_GET_ITEM(proof, 1);
    if (Py_TYPE(obj) != type) return 0;
    Py_ssize_t count = PyLong_AsSsize_t(PyTuple_GET_ITEM(proof, 2));
    PyObject *items = PyTuple_GET_ITEM(proof, 3);
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    if (type == &PyList_Type || type == &PyTuple_Type) {  /* the first n items are the same objects */
        if (Py_SIZE(obj) != count) return 0;
        PyObject **now = type == &PyList_Type ? ((PyListObject *)obj)->ob_item : ((PyTupleObject *)obj)->ob_item;
        return n == 0 || memcmp(now, ((PyTupleObject *)items)->ob_item, n * sizeof(PyObject *)) == 0;
    }
    if (type == &PyDict_Type) {
        if (PyDict_GET_SIZE(obj) != count) return 0;
        Py_ssize_t pos = 0, i = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (2 * i + 1 >= n || key != PyTuple_GET_ITEM(items, 2 * i) ||
                value != PyTuple_GET_ITEM(items, 2 * i + 1))
                return 0;
            i++;
        }
        return 1;
    }
    /* set, frozenset */
    if (PySet_GET_SIZE(obj) != count) return 0;
    PyObject *iter = PyObject_GetIter(obj), *item;
    if (iter == NULL) return -1;
    Py_ssize_t i = 0;
    int same = 1;
    while ((item = PyIter_Next(iter)) != NULL) {
        if (i >= n || item != PyTuple_GET_ITEM(items, i)) same = 0;
        Py_DECREF(item);
        i++;
        if (!same) break;
    }
    Py_DECREF(iter);
    if (PyErr_Occurred()) return -1;
    return same && i == n;
}

/* ---- snapshot ------------------------------------------------------------------------------------------- */

static PyObject *frame_locals(PyFrameObject *frame) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *proxy = PyFrame_GetLocals(frame);  /* 3.13: a write-through proxy (PEP 667); copy it in order */
    if (proxy == NULL || PyDict_Check(proxy)) return proxy;
    PyObject *copy = PyDict_New();
    if (copy != NULL && PyDict_Update(copy, proxy) < 0) Py_CLEAR(copy);
    Py_DECREF(proxy);
    return copy;
#else
    return PyFrame_GetLocals(frame);
#endif
}

/* A frame's bound locals as parallel arrays of names and values (borrowed: from the frame, or from its f_locals
 * dict, held here), in a fixed order per scope: the dict's, or the fast-locals array's. */
#define FEW_LOCALS 32
typedef struct {
    PyObject *dict;  /* the f_locals dict read, or NULL when read from the frame */
    Py_ssize_t count;
    PyObject **names, **values;
    PyObject *few[2 * FEW_LOCALS];
} Locals;

static int locals_alloc(Locals *locals, Py_ssize_t most) {
    locals->names = most <= FEW_LOCALS ? locals->few : PyMem_New(PyObject *, 2 * most);
    if (locals->names == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    locals->values = locals->names + (most <= FEW_LOCALS ? FEW_LOCALS : most);
    return 0;
}

static void locals_release(Locals *locals) {
    if (locals->names != NULL && locals->names != locals->few) PyMem_Free(locals->names);
    locals->names = NULL;
    Py_CLEAR(locals->dict);
}

static int read_locals(PyFrameObject *frame, Locals *locals) {
    locals->dict = NULL;
    locals->names = NULL;
    locals->count = 0;
#ifdef READ_FAST_LOCALS
    _PyInterpreterFrame *inner = frame->f_frame;
#if PY_VERSION_HEX >= 0x030D0000
    PyCodeObject *code = _PyFrame_GetCode(inner);
    int untouched = frame->f_extra_locals == NULL;  /* no name was added through the f_locals proxy */
    Py_ssize_t n = code->co_nlocals;
#else
    PyCodeObject *code = inner->f_code;
    int untouched = inner->f_locals == NULL;  /* no f_locals dict, which could hold names written into it */
    Py_ssize_t n = inner->stacktop ? code->co_nlocals : 0;  /* FastToLocals reads none while stacktop is 0 */
#endif
    int plain = untouched && (code->co_flags & CO_OPTIMIZED) && code->co_ncellvars == 0 && code->co_nfreevars == 0;
#ifdef CO_FAST_HIDDEN
    const char *kinds = PyBytes_AS_STRING(code->co_localspluskinds);
    for (Py_ssize_t i = 0; plain && i < code->co_nlocals; i++) plain = !(kinds[i] & CO_FAST_HIDDEN);
#endif
    if (plain) {  /* every slot is a plain local, NULL when unbound */
        if (locals_alloc(locals, n) < 0) return -1;
        for (Py_ssize_t i = 0; i < n; i++)
            if (inner->localsplus[i] != NULL) {
                locals->names[locals->count] = PyTuple_GET_ITEM(code->co_localsplusnames, i);
                locals->values[locals->count++] = inner->localsplus[i];
            }
        return 0;
    }
#endif
    PyObject *dict = frame_locals(frame);
    if (dict == NULL) return -1;
    locals->dict = dict;
    if (!PyDict_Check(dict)) {
        PyErr_SetString(PyExc_TypeError, "frame locals are not a dict");
        return -1;
    }
    if (locals_alloc(locals, PyDict_GET_SIZE(dict)) < 0) return -1;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (locals->count < PyDict_GET_SIZE(dict) && PyDict_Next(dict, &position, &key, &value)) {
        locals->names[locals->count] = key;
        locals->values[locals->count++] = value;
    }
    return 0;
}

/* The value of local ``name`` (borrowed), or NULL with an error. */
static PyObject *local_value(Locals *locals, PyObject *name) {
    for (Py_ssize_t i = 0; i < locals->count; i++)
        if (locals->names[i] == name) return locals->values[i];
    for (Py_ssize_t i = 0; i < locals->count; i++) {
        int equal = PyObject_RichCompareBool(locals->names[i], name, Py_EQ);
        if (equal != 0) return equal < 0 ? NULL : locals->values[i];
    }
    PyErr_Format(PyExc_KeyError, "local %R vanished", name);
    return NULL;
}

/* 1 if the locals' names are, in order, the names in ``known`` (a list), else 0. */
static int same_names(Locals *locals, PyObject *known) {
    if (known == NULL || PyList_GET_SIZE(known) != locals->count) return 0;
    for (Py_ssize_t i = 0; i < locals->count; i++) {
        PyObject *name = PyList_GET_ITEM(known, i);
        if (name != locals->names[i]) {
            int equal = PyObject_RichCompareBool(name, locals->names[i], Py_EQ);
            if (equal <= 0) return equal < 0 ? -1 : 0;
        }
    }
    return 1;
}

static PyObject *names_list(Locals *locals) {
    PyObject *list = PyList_New(locals->count);
    for (Py_ssize_t i = 0; list != NULL && i < locals->count; i++)
        PyList_SET_ITEM(list, i, Py_NewRef(locals->names[i]));
    return list;
}

static Py_ssize_t find_name(PyObject *list, PyObject *name) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++)
        if (PyList_GET_ITEM(list, i) == name) return i;
    return -1;
}

/* The common cases of TraceBuilder.order_names, by identity of the (interned) names: every name shown so far is
 * still bound and at most one is new (it goes last), or a new scope whose locals are its first parameters in
 * signature order. A new list, or NULL without an error for "ask the builder". */
static PyObject *fast_order(Scope *scope, PyCodeObject *code, PyObject *raw) {
    PyObject *names = scope->names, *added = NULL;
    Py_ssize_t n_raw = PyList_GET_SIZE(raw), n_new = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++)
        if (find_name(raw, PyList_GET_ITEM(names, i)) < 0) return NULL;  /* a name was unbound */
    for (Py_ssize_t i = 0; i < n_raw; i++) {
        PyObject *name = PyList_GET_ITEM(raw, i);
        if (!PyUnicode_Check(name) || (PyUnicode_GET_LENGTH(name) > 0 && PyUnicode_READ_CHAR(name, 0) == '.'))
            return NULL;  /* hidden interpreter locals: the builder leaves them out */
        if (find_name(names, name) < 0) {
            n_new++;
            added = name;
        }
    }
    if (n_new <= 1) {
        PyObject *order = PyList_GetSlice(names, 0, PyList_GET_SIZE(names));
        if (order != NULL && added != NULL && PyList_Append(order, added) < 0) Py_CLEAR(order);
        return order;
    }
    if (PyList_GET_SIZE(names) != 0) return NULL;
    int parameters = code->co_argcount + code->co_kwonlyargcount + !!(code->co_flags & CO_VARARGS) +
                     !!(code->co_flags & CO_VARKEYWORDS);
    if (n_raw > parameters) return NULL;
    PyObject *varnames = PyCode_GetVarnames(code);
    if (varnames == NULL) return NULL;
    int in_order = PyTuple_GET_SIZE(varnames) >= n_raw;
    for (Py_ssize_t i = 0; in_order && i < n_raw; i++)
        in_order = PyTuple_GET_ITEM(varnames, i) == PyList_GET_ITEM(raw, i);
    Py_DECREF(varnames);
    return in_order ? PyList_GetSlice(raw, 0, n_raw) : NULL;
}

/* The locals as the trace shows them (new dict), adding the characters newly rendered to *size. */
static PyObject *snapshot(Recorder *self, Scope *scope, PyFrameObject *frame, int full, Py_ssize_t *size) {
    Locals locals;
    if (read_locals(frame, &locals) < 0) goto fail_locals;
    int same = same_names(&locals, scope->raw_names);
    if (same < 0) goto fail_locals;
    if (!same) {
        PyObject *raw = names_list(&locals);
        if (raw == NULL) goto fail_locals;
        PyCodeObject *code = PyFrame_GetCode(frame);
        PyObject *names = fast_order(scope, code, raw);
        if (names == NULL && !PyErr_Occurred()) {
            PyObject *order_names = ORDER_NAMES(self);
            names = order_names == NULL ? NULL
                    : PyObject_CallFunctionObjArgs(order_names, (PyObject *)code, scope->names, raw, NULL);
        }
        Py_DECREF(code);
        if (names == NULL || !PyList_Check(names)) {
            if (names != NULL) PyErr_SetString(PyExc_TypeError, "order_names must return a list");
            Py_XDECREF(names);
            Py_DECREF(raw);
            goto fail_locals;
        }
        /* what is known of each name's value follows it to its new place; names no longer bound are forgotten */
        PyObject *entries = PyList_New(PyList_GET_SIZE(names));
        if (entries == NULL) {
            Py_DECREF(names);
            Py_DECREF(raw);
            goto fail_locals;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
            Py_ssize_t old = find_name(scope->names, PyList_GET_ITEM(names, i));
            PyList_SET_ITEM(entries, i, Py_NewRef(old >= 0 ? PyList_GET_ITEM(scope->entries, old) : Py_None));
        }
        Py_SETREF(scope->entries, entries);
        Py_XSETREF(scope->raw_names, raw);
        Py_SETREF(scope->names, names);
        Py_CLEAR(scope->unchanged);
        scope->in_order = PyList_GET_SIZE(names) == PyList_GET_SIZE(raw);
        for (Py_ssize_t i = 0; scope->in_order && i < PyList_GET_SIZE(names); i++)
            scope->in_order = PyList_GET_ITEM(names, i) == PyList_GET_ITEM(raw, i);
    }
    PyObject *names = scope->names, *entries = scope->entries;
    if (!full && scope->unchanged == NULL) {  /* a line frame starts as "all unchanged" and is corrected */
        scope->unchanged = _PyDict_NewPresized(PyList_GET_SIZE(names));
        for (Py_ssize_t i = 0; scope->unchanged != NULL && i < PyList_GET_SIZE(names); i++)
            if (PyDict_SetItem(scope->unchanged, PyList_GET_ITEM(names, i), UNCHANGED_TEXT) < 0)
                Py_CLEAR(scope->unchanged);
        if (scope->unchanged == NULL) goto fail_locals;
    }
    /* A line frame whose values are all unchanged shares the scope's "all unchanged" dict (nearly half of them
     * are; frames are never modified); the others get a copy, corrected. */
    PyObject *out = full ? _PyDict_NewPresized(PyList_GET_SIZE(names)) : NULL;
    if (full && out == NULL) goto fail_locals;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        /* in order: the i-th local is the i-th name */
        PyObject *obj = scope->in_order ? locals.values[i] : local_value(&locals, name);
        if (obj == NULL) goto fail;
        PyObject *before = PyList_GET_ITEM(entries, i);
        if (before == Py_None) before = NULL;
        if (before != NULL) {
            int holds = PyTuple_GET_ITEM(before, 0) == obj;
            PyObject *proof = PyTuple_GET_ITEM(before, 2);
            if (!holds && proof != Py_None) {
                holds = proof_holds(self, obj, proof);
                if (holds < 0) goto fail;
            }
            if (holds) {
                if (full && PyDict_SetItem(out, name, PyTuple_GET_ITEM(before, 1)) < 0) goto fail;
                continue;
            }
        }
        Rendered info;
        PyObject *text = render(self, obj, before != NULL ? PyTuple_GET_ITEM(before, 2) : NULL, &info);
        if (text == NULL) goto fail;
        PyObject *shown = text;
        if (before != NULL && !full) {
            int equal = PyUnicode_Compare(PyTuple_GET_ITEM(before, 1), text);
            if (equal == -1 && PyErr_Occurred()) {
                Py_DECREF(text);
                Py_XDECREF(info.texts);
                goto fail;
            }
            if (equal == 0) shown = UNCHANGED_TEXT;
        }
        *size += PyUnicode_GET_LENGTH(shown);
        if (out == NULL && shown != UNCHANGED_TEXT && (out = PyDict_Copy(scope->unchanged)) == NULL) {
            Py_DECREF(text);
            Py_XDECREF(info.texts);
            goto fail;
        }
        int set = full || shown != UNCHANGED_TEXT ? PyDict_SetItem(out, name, shown) : 0;
        int atom = is_atom(obj, 4);  /* depth 4: only true atoms; tuples get a proof */
        PyObject *proof = atom ? Py_NewRef(Py_None) : make_proof(self, obj, text, &info);
        Py_XDECREF(info.texts);
        if (set < 0 || proof == NULL) {
            Py_XDECREF(proof);
            Py_DECREF(text);
            goto fail;
        }
        PyObject *fields[3] = {atom ? obj : self->mutable, text, proof};
        if (before != NULL && Py_REFCNT(before) == 1) {  /* the list holds the only reference: update in place */
            for (int k = 0; k < 3; k++) {
                PyObject *old = PyTuple_GET_ITEM(before, k);
                PyTuple_SET_ITEM(before, k, Py_NewRef(fields[k]));
                Py_DECREF(old);
            }
        } else {
            PyObject *entry = acyclic(PyTuple_Pack(3, fields[0], fields[1], fields[2]));
            if (entry == NULL) {
                Py_DECREF(proof);
                Py_DECREF(text);
                goto fail;
            }
            PyObject *replaced = PyList_GET_ITEM(entries, i);
            PyList_SET_ITEM(entries, i, entry);  /* steals it */
            Py_DECREF(replaced);
        }
        Py_DECREF(proof);
        Py_DECREF(text);
    }
    locals_release(&locals);
    return out != NULL ? out : Py_NewRef(scope->unchanged);
fail:
    Py_XDECREF(out);
fail_locals:
    locals_release(&locals);
    return NULL;
}

/* ---- frames --------------------------------------------------------------------------------------------- */

#define MAX_CACHED_LINE 1000000

/* The cache entry of line ``lineno`` (grown to hold it), or NULL without an error for a line it does not cover. */
static LineInfo *line_info(Recorder *self, long lineno) {
    LineCache *cache = self->line_cache;
    if (lineno < 0 || lineno >= MAX_CACHED_LINE) return NULL;
    if (lineno >= cache->n_lines) {
        Py_ssize_t size = Py_MAX(lineno + 1, 2 * cache->n_lines);
        LineInfo *lines = PyMem_Realloc(cache->lines, size * sizeof(LineInfo));
        if (lines == NULL) return NULL;
        memset(lines + cache->n_lines, 0, (size - cache->n_lines) * sizeof(LineInfo));
        cache->lines = lines;
        cache->n_lines = size;
    }
    return &cache->lines[lineno];
}

static long lookup_statement(Recorder *self, long lineno) {
    PyObject *key = PyLong_FromLong(lineno);
    if (key == NULL) return -1;
    PyObject *statement = PyDict_GetItemWithError(self->statements, key);
    Py_DECREF(key);
    if (statement == NULL) return PyErr_Occurred() ? -1 : lineno;
    return PyLong_AsLong(statement);
}

/* The statement line ``lineno`` belongs to (the source map's statement_of). */
static long statement_of(Recorder *self, long lineno) {
    LineInfo *info = line_info(self, lineno);
    if (info == NULL) return lookup_statement(self, lineno);
    if (info->statement == 0) {
        long statement = lookup_statement(self, lineno);
        if (statement == -1 && PyErr_Occurred()) return -1;
        info->statement = statement;
    }
    return info->statement;
}

/* Line ``lineno`` as a frame shows it: its text (borrowed) and number (new reference); NULL on error. */
static PyObject *line_of(Recorder *self, long lineno, PyObject **text) {
    LineInfo *info = line_info(self, lineno);
    if (info != NULL && info->number != NULL) {
        *text = info->text;
        return Py_NewRef(info->number);
    }
    PyObject *number = PyLong_FromLong(lineno);
    if (number == NULL) return NULL;
    *text = PyDict_GetItemWithError(self->texts, number);
    if (*text == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(number);
            return NULL;
        }
        *text = EMPTY_TEXT;  /* a line outside the source, as SourceMap.text gives it */
    }
    if (info != NULL) {
        info->text = Py_NewRef(*text);
        info->number = Py_NewRef(number);
    }
    return number;
}

static int stop_at_limit(Recorder *self) {
    Py_ssize_t count = PyList_GET_SIZE(self->frames);
    const char *which = count >= self->max_frames ? "frames" : "bytes";
    self->finished = 1;
    Py_SETREF(self->status, Py_NewRef(STATUS_TRUNCATED));
    PyObject *message = PyUnicode_FromFormat("trace cut at the %s limit (%zd frames, %zd chars)", which, count,
                                             self->bytes);
    if (message == NULL) return -1;
    Py_SETREF(self->error, message);
    if (self->abort_on_limit) {
        PyErr_SetObject(self->limit_error, self->error);
        return -1;
    }
    return 0;
}

/* Append a frame; steals nothing. ``locals`` and ``value`` may be NULL. */
static int emit(Recorder *self, Scope *scope, int event, long lineno, PyObject *locals, PyObject *value,
                Py_ssize_t size) {
    PyObject *line;
    PyObject *lineno_obj = line_of(self, lineno, &line);
    if (lineno_obj == NULL) return -1;
    PyObject *args[5] = {EVENT_NAME[event], line, lineno_obj, locals ? locals : Py_None, value ? value : Py_None};
    PyObject *frame = new_frame(self, args);
    if (frame == NULL) goto fail;
    int appended = PyList_Append(self->frames, frame);
    Py_DECREF(frame);
    if (appended < 0) goto fail;
    scope->last_event = event;
    scope->last_statement = lineno;
    self->bytes += size + PyUnicode_GET_LENGTH(line);
    Py_DECREF(lineno_obj);
    if (PyList_GET_SIZE(self->frames) >= self->max_frames || self->bytes >= self->max_bytes)
        return stop_at_limit(self);
    return 0;
fail:
    Py_DECREF(lineno_obj);
    return -1;
}

static Scope *find_scope(Recorder *self, PyFrameObject *frame) {
    if (frame == self->last_frame) return self->last_scope;
    Scope *scope = (Scope *)PyDict_GetItemWithError(self->scopes, (PyObject *)frame);
    if (scope != NULL) {
        self->last_frame = frame;
        self->last_scope = scope;
    }
    return scope;
}

static int forget_scope(Recorder *self, PyFrameObject *frame) {
    if (frame == self->last_frame) {
        self->last_frame = NULL;
        self->last_scope = NULL;
    }
    return PyDict_DelItem(self->scopes, (PyObject *)frame);
}

/* ---- events --------------------------------------------------------------------------------------------- */

static int on_call(Recorder *self, PyFrameObject *frame) {
    PyCodeObject *code = PyFrame_GetCode(frame);
    PyObject *def_line = PyDict_GetItemWithError(self->code_info, (PyObject *)code);
    if (def_line == NULL) {
        if (PyErr_Occurred()) goto fail;
        PyObject *info = call1(DEF_LINE(self), (PyObject *)code);
        if (info == NULL || PyDict_SetItem(self->code_info, (PyObject *)code, info) < 0) {
            Py_XDECREF(info);
            goto fail;
        }
        def_line = info;
        Py_DECREF(info);  /* code_info holds it */
    }
    Py_DECREF(code);
    /* Code that is not stepped into (the standard library, other files) would still report every line to a C
     * trace function: its frame is told not to (the Python backends return None for it instead). */
    if (def_line == Py_None) return PyObject_SetAttr((PyObject *)frame, ATTRIBUTE[A_TRACE_LINES], Py_False);
    if (self->entry_frame == NULL) self->entry_frame = Py_NewRef(frame);
    Scope *scope = find_scope(self, frame);
    if (scope == NULL) {
        if (PyErr_Occurred()) return -1;
        scope = scope_new();
        if (scope == NULL || PyDict_SetItem(self->scopes, (PyObject *)frame, (PyObject *)scope) < 0) {
            Py_XDECREF(scope);
            return -1;
        }
        Py_DECREF(scope);  /* scopes holds it */
    }
    /* Call frames always carry every local in full, so a reader needs no earlier frame to know the state. */
    Py_ssize_t size = 0;
    PyObject *locals = snapshot(self, scope, frame, 1, &size);
    if (locals == NULL) return -1;
    int result = emit(self, scope, EV_CALL, PyLong_AsLong(def_line), locals, NULL, size);
    Py_DECREF(locals);
    return result;
fail:
    Py_DECREF(code);
    return -1;
}

static int on_line(Recorder *self, PyFrameObject *frame) {
    Scope *scope = find_scope(self, frame);
    if (scope == NULL) return PyErr_Occurred() ? -1 : 0;
    scope->fresh_exception = 0;
    long statement = statement_of(self, PyFrame_GetLineNumber(frame));
    if (statement == -1 && PyErr_Occurred()) return -1;
    /* A statement reported again without another step of this scope in between is one step. */
    if (scope->last_event == EV_LINE && scope->last_statement == statement) return 0;
    Py_ssize_t size = 0;
    PyObject *locals = snapshot(self, scope, frame, 0, &size);
    if (locals == NULL) return -1;
    int result = emit(self, scope, EV_LINE, statement, locals, NULL, size);
    Py_DECREF(locals);
    return result;
}

static int on_exception(Recorder *self, PyFrameObject *frame, PyObject *arg) {
    Scope *scope = find_scope(self, frame);
    if (scope == NULL) return PyErr_Occurred() ? -1 : 0;
    PyObject *exception = PyTuple_Check(arg) && PyTuple_GET_SIZE(arg) >= 2 ? PyTuple_GET_ITEM(arg, 1) : arg;
    Py_XSETREF(scope->exception, Py_NewRef(exception));
    scope->fresh_exception = 1;
    return 0;
}

/* ``settrace`` reports returns, yields and unwinding all as a return; the instruction tells them apart. */
static int on_return(Recorder *self, PyFrameObject *frame, PyObject *arg) {
    Scope *scope = find_scope(self, frame);
    if (scope == NULL) return PyErr_Occurred() ? -1 : 0;
    PyCodeObject *code = PyFrame_GetCode(frame);
    PyObject *bytecode = PyCode_GetCode(code);
    int flags = code->co_flags;
    Py_DECREF(code);
    if (bytecode == NULL) return -1;
    int lasti = PyFrame_GetLasti(frame);
    int op = lasti >= 0 && lasti < PyBytes_GET_SIZE(bytecode) ? (unsigned char)PyBytes_AS_STRING(bytecode)[lasti] : -1;
    Py_DECREF(bytecode);
    int event = EV_EXCEPTION, suspended = 0;
    PyObject *value = arg ? arg : Py_None;
    if (op >= 0 && self->return_ops[op]) {
        event = EV_RETURN;
    } else if ((flags & self->generator_flags) && op >= 0 && self->yield_ops[op] && !scope->fresh_exception) {
        event = EV_RETURN;
        suspended = 1;
    } else {
        value = scope->exception ? scope->exception : Py_None;
    }
    long statement = statement_of(self, PyFrame_GetLineNumber(frame));
    if (statement == -1 && PyErr_Occurred()) return -1;
    Rendered info;
    PyObject *text = render(self, value, NULL, &info);
    Py_XDECREF(info.texts);
    if (text == NULL) return -1;
    Py_INCREF(scope);  /* it may leave the scopes dict below */
    int result = emit(self, scope, event, statement, NULL, text, PyUnicode_GET_LENGTH(text));
    Py_DECREF(text);
    int limit_hit = result < 0 && PyErr_ExceptionMatches(self->limit_error);
    if (result == 0 || limit_hit) {
        if (!suspended) {
            PyObject *pending_type, *pending_value, *pending_tb;
            PyErr_Fetch(&pending_type, &pending_value, &pending_tb);
            if (forget_scope(self, frame) < 0) result = -1;
            PyErr_Restore(pending_type, pending_value, pending_tb);
        }
        if ((PyObject *)frame == self->entry_frame && !self->finished) {
            self->finished = 1;
            Py_SETREF(self->status, Py_NewRef(event == EV_RETURN ? STATUS_OK : STATUS_RAISED));
        }
    }
    Py_DECREF(scope);
    return result;
}

static int trace_function(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg) {
    Recorder *self = (Recorder *)obj;
    if (self->finished) return 0;
    int result = 0;
    switch (what) {
    case PyTrace_CALL: result = on_call(self, frame); break;
    case PyTrace_LINE: result = on_line(self, frame); break;
    case PyTrace_RETURN: result = on_return(self, frame, arg); break;
    case PyTrace_EXCEPTION: result = on_exception(self, frame, arg); break;
    default: return 0;
    }
    if (result < 0 && !self->finished) {  /* the tracer itself failed: say so in the trace and stop */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        self->finished = 1;
        Py_SETREF(self->status, Py_NewRef(STATUS_ERROR));
        PyObject *name = type ? PyType_GetName((PyTypeObject *)type) : NULL;
        PyObject *message = PyUnicode_FromFormat("the tracer failed: %S: %S", name ? name : Py_None,
                                                 value ? value : Py_None);
        Py_XDECREF(name);
        if (message == NULL) {  /* e.g. no stack left to format the value (RecursionError): the type alone */
            PyErr_Clear();
            message = type == PyExc_RecursionError
                ? PyUnicode_FromString("the tracer failed: RecursionError: maximum recursion depth exceeded")
                : PyUnicode_FromFormat("the tracer failed: %s",
                                       type ? ((PyTypeObject *)type)->tp_name : "unknown error");
            PyErr_Clear();
        }
        if (message != NULL) Py_SETREF(self->error, message);
        PyErr_Restore(type, value, tb);
    }
    return result;
}

/* ---- Python methods ------------------------------------------------------------------------------------- */

/* Install the recorder as this thread's trace function. */
static void recorder_start(Recorder *self) {
    PyEval_SetTrace(trace_function, (PyObject *)self);
}

/* Remove the trace function and forget live scopes. */
static void recorder_stop(Recorder *self) {
    PyEval_SetTrace(NULL, NULL);
    /* Interpreter frames are let go: a frame object kept past its run refers to its callers' frames, whose
     * locals hold this recorder, and that cycle would leave the whole trace to the cyclic GC. */
    PyDict_Clear(self->scopes);
    Py_CLEAR(self->entry_frame);
    self->last_frame = NULL;
    self->last_scope = NULL;
}

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "opencwm.trace._native.Recorder",
    .tp_doc = "Records a TraceBuilder's frames from C trace events (made by record()).",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)recorder_traverse,
    .tp_clear = (inquiry)recorder_clear,
    .tp_dealloc = (destructor)recorder_dealloc,
};

/* record(builder, func, args, kwargs): call ``func(*args, **kwargs)`` with a new recorder of ``builder`` as this
 * thread's trace function; then the trace function that was there before is put back, and the builder's
 * ``finished``, ``status`` and ``error`` are set from the recorder's. Returns None, or raises what the call raised
 * (the per-trace limit's exception among them). */
static PyObject *native_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[2]) || (args[3] != Py_None && !PyDict_Check(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "record(builder, func, args: tuple, kwargs: dict | None)");
        return NULL;
    }
    PyObject *builder = args[0], *limits[2] = {NULL, NULL};
    Py_ssize_t max_frames = -1, max_bytes = -1;
    if ((limits[0] = PyObject_GetAttr(builder, ATTRIBUTE[A_MAX_FRAMES])) != NULL &&
        (limits[1] = PyObject_GetAttr(builder, ATTRIBUTE[A_MAX_BYTES])) != NULL) {
        max_frames = PyLong_AsSsize_t(limits[0]);
        max_bytes = max_frames == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(limits[1]);
    }
    Py_XDECREF(limits[0]);
    Py_XDECREF(limits[1]);
    if ((max_frames == -1 || max_bytes == -1) && PyErr_Occurred()) return NULL;
    Recorder *self = (Recorder *)RecorderType.tp_alloc(&RecorderType, 0);
    if (self == NULL) return NULL;
    if (recorder_setup(self, builder, max_frames, max_bytes) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    /* the trace function there before (sys.settrace's or a C tracer's), put back exactly as it was */
    PyThreadState *thread = PyThreadState_Get();
    Py_tracefunc previous = thread->c_tracefunc;
    PyObject *previous_arg = Py_XNewRef(thread->c_traceobj);
    recorder_start(self);
    PyObject *result = PyObject_Call(args[1], args[2], args[3] == Py_None ? NULL : args[3]);
    recorder_stop(self);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);  /* what the call raised waits while the state is handed back */
    int failed = 0;
    if (previous != NULL) PyEval_SetTrace(previous, previous_arg);
    Py_XDECREF(previous_arg);
    failed |= PyObject_SetAttr(builder, ATTRIBUTE[A_FINISHED], self->finished ? Py_True : Py_False) < 0 ||
               PyObject_SetAttr(builder, ATTRIBUTE[A_STATUS], self->status) < 0 ||
               PyObject_SetAttr(builder, ATTRIBUTE[A_ERROR], self->error) < 0;
    Py_DECREF(self);
    if (type != NULL) {  /* the call's own exception wins over a failure to hand back */
        Py_XDECREF(result);
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (failed) {
        Py_XDECREF(result);
        return NULL;
    }
    Py_DECREF(result);
    Py_RETURN_NONE;
}

static PyMethodDef native_functions[] = {
    {"record", (PyCFunction)(void (*)(void))native_record, METH_FASTCALL,
     "record(builder, func, args, kwargs): call func(*args, **kwargs) under a new recorder feeding builder"},
    {"configure", native_configure, METH_VARARGS,
     "configure(frame_type, limit_error, mutable, return_ops, yield_ops, generator_flags): what every recorder "
     "shares (the frame class, the limit exception, the builder's marker for mutable objects, the opcodes that "
     "return and yield, the code flags of generators)"},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "The tracer's per-event hot path in C (see tracer.py).", -1, native_functions,
};

PyMODINIT_FUNC PyInit__native(void) {
    const char *names[5] = {NULL, "call", "line", "return", "exception"};
    for (int i = 0; i < A_COUNT; i++)
        if ((ATTRIBUTE[i] = PyUnicode_InternFromString(ATTRIBUTE_NAMES[i])) == NULL) return NULL;
    for (int i = 1; i < 5; i++)
        if ((EVENT_NAME[i] = PyUnicode_InternFromString(names[i])) == NULL) return NULL;
    if (!(STATUS_OK = PyUnicode_InternFromString("ok")) || !(STATUS_RAISED = PyUnicode_InternFromString("exception")) ||
        !(STATUS_TRUNCATED = PyUnicode_InternFromString("truncated")) ||
        !(STATUS_ERROR = PyUnicode_InternFromString("error")) || !(UNCHANGED_TEXT = PyUnicode_InternFromString("..")) ||
        !(EMPTY_TEXT = PyUnicode_InternFromString("")) || !(SEPARATOR = PyUnicode_InternFromString(", ")) ||
        !(ADDRESS_MARK = PyUnicode_InternFromString(" at 0x")))
        return NULL;
    if (PyType_Ready(&ScopeType) < 0 || PyType_Ready(&RecorderType) < 0 || PyType_Ready(&LineCacheType) < 0)
        return NULL;
    ID_PROOF = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (ID_PROOF == NULL) return NULL;
    return PyModule_Create(&native_module);
}
