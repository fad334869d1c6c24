/*
 * p11shim: a pass-through PKCS#11 module that injects faults (part of hsm.testing).
 *
 * Every function of the CK_FUNCTION_LIST forwards to a real PKCS#11 module. Before it does,
 * it reads a control file; while that file exists it may add latency, block (hang) and/or
 * return a chosen CKR code instead of calling the real module. Deleting the file heals at
 * once: nothing is re-initialized.
 *
 * Configuration: a sidecar file next to this shared object, named after it plus ".conf"
 * (found with dladdr, so several shims load side by side in one process, each with its own
 * real module and control file):
 *
 *     module=/abs/path/of/the/real/module.so
 *     control=/abs/path/of/the/control/file
 *     count=/abs/path/of/the/count/file          (optional: call counting)
 *
 * Control file (at most 4 KiB, "key=value" lines, '#' starts a comment line; read on every
 * call while it exists, so write it atomically: temporary file + rename; once it was found
 * absent it is looked for again 1 ms later at most, so a change takes effect within 1 ms):
 *
 *     error=0x30              CKR code returned instead of calling the real module
 *     delay_ms=250            sleep this long first (ends early if the file changes)
 *     hang=1                  block until the file changes or disappears
 *     calls=C_Encrypt,C_Decrypt
 *                             only these functions; "*" means every function; absent means
 *                             every function except C_Initialize, C_Finalize, C_GetInfo
 *                             (a faulted C_Finalize still finalizes the real module)
 *     until_ms=1700000000000  the fault ends by itself at this Unix time (milliseconds)
 *
 * A delay never sleeps less than asked: it is measured on CLOCK_MONOTONIC in nanoseconds.
 *
 * Call counting: while the count file exists (same format; only "calls=" is read, absent
 * or "*" meaning every function), every call of a function it names appends one line, the
 * function's name, to "<count file>.log" (O_APPEND: whole lines, from any process), before
 * any fault applies. Like the control file, an absent count file is looked for again 1 ms
 * later at most, so counting off costs the healthy path nothing but a compare.
 *
 * Thread safety: the global state is written once (pthread_once) when the list is first
 * requested, except two words (when to look for the control and count files again) read
 * and written atomically; each call keeps its fault state on its own stack. C_Initialize passes
 * its CK_C_INITIALIZE_ARGS through unchanged.
 *
 * Build: cc -shared -fPIC -O2 -fvisibility=hidden -I/usr/include/p11-kit-1 \
 *            -o libp11shim.so p11shim.c -ldl -pthread
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "p11-kit/pkcs11.h"

#define SHIM_EXPORT __attribute__((visibility("default")))
#define CONTROL_MAX 4096
#define POLL_MS 10
/* After finding no control file, skip looking again for this long: the healthy path then
 * costs a clock read instead of a failed open() (~3 us in some sandboxes). Writers wait
 * this long after a change before they call it done (hsm.testing.faults.SETTLE_S). */
#define ABSENT_TTL_NS 1000000LL

/* -- state written once, by load_real() under pthread_once ---------------------------- */

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static void *real_handle; /* never closed: unloading at exit is SoftHSM's own business */
static CK_FUNCTION_LIST_PTR real;
static char control_path[PATH_MAX];
static char count_path[PATH_MAX]; /* empty: this shim's sidecar names no count file */
static char count_log[PATH_MAX];  /* count_path + ".log" */
static CK_FUNCTION_LIST shim_list; /* filled in by load_real() */

/* -- state shared by every call: two words, read and written atomically --------------- */

static long long absent_until_ns;       /* CLOCK_MONOTONIC ns; before it, no control file */
static long long count_absent_until_ns; /* the same for the count file */

/* -- time ---------------------------------------------------------------------------- */

static long long clock_ms(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(long long ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* -- the control file ---------------------------------------------------------------- */

struct fault {
    CK_RV error;
    long long delay_ms;
    int hang;
    long long until_ms;
    const char *calls; /* points into the buffer; NULL when there is no calls= line */
    size_t calls_len;
};

/* Read a small file into buf (NUL-terminated); its length, or -1 when there is none. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
    if (path[0] == '\0')
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t used = 0;
    while (used < size - 1) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    return (ssize_t)used;
}

static ssize_t read_control(char *buf, size_t size)
{
    return read_small(control_path, buf, size);
}

static int key_is(const char *key, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(key, want, len) == 0;
}

static void parse_control(const char *buf, struct fault *f)
{
    memset(f, 0, sizeof *f);
    const char *line = buf;
    while (*line) {
        const char *end = strchr(line, '\n');
        if (end == NULL)
            end = line + strlen(line);
        while (line < end && (*line == ' ' || *line == '\t'))
            line++;
        const char *eq = memchr(line, '=', (size_t)(end - line));
        if (*line != '#' && eq != NULL) {
            const char *key = line;
            size_t key_len = (size_t)(eq - line);
            while (key_len > 0 && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t'))
                key_len--;
            const char *value = eq + 1;
            while (value < end && (*value == ' ' || *value == '\t'))
                value++;
            const char *value_end = end;
            while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t' ||
                                         value_end[-1] == '\r'))
                value_end--;
            if (key_is(key, key_len, "error"))
                f->error = (CK_RV)strtoull(value, NULL, 0);
            else if (key_is(key, key_len, "delay_ms"))
                f->delay_ms = strtoll(value, NULL, 10);
            else if (key_is(key, key_len, "hang"))
                f->hang = strtol(value, NULL, 10) != 0;
            else if (key_is(key, key_len, "until_ms"))
                f->until_ms = strtoll(value, NULL, 10);
            else if (key_is(key, key_len, "calls")) {
                f->calls = value;
                f->calls_len = (size_t)(value_end - value);
            }
            /* unknown keys are ignored: newer writers, older shims */
        }
        line = *end ? end + 1 : end;
    }
    if (f->delay_ms < 0)
        f->delay_ms = 0;
}

/* Does the fault apply to the function called `name`? */
static int applies(const struct fault *f, const char *name, int library_call)
{
    if (f->calls == NULL)
        return !library_call;
    size_t name_len = strlen(name);
    const char *p = f->calls, *end = f->calls + f->calls_len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *a = p, *b = item_end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        size_t len = (size_t)(b - a);
        if ((len == 1 && *a == '*') || (len == name_len && memcmp(a, name, len) == 0))
            return 1;
        p = item_end + 1;
    }
    return 0;
}

/* Sleep as the fault says (a delay: never less than delay_ms). 1 if the control file
 * changed (or vanished) meanwhile, else 0. */
static int wait_out(const struct fault *f, const char *seen, ssize_t seen_len)
{
    char now[CONTROL_MAX];
    long long end_ns = monotonic_ns() + f->delay_ms * 1000000LL;
    for (;;) {
        long long left = f->hang ? LLONG_MAX : end_ns - monotonic_ns();
        if (f->until_ms > 0) {
            long long to_end = (f->until_ms - clock_ms(CLOCK_REALTIME)) * 1000000LL;
            if (to_end < left)
                left = to_end;
        }
        if (left <= 0)
            return 0;
        sleep_ns(left < POLL_MS * 1000000LL ? left : POLL_MS * 1000000LL);
        ssize_t n = read_control(now, sizeof now);
        if (n != seen_len || (n > 0 && memcmp(now, seen, (size_t)n) != 0))
            return 1;
    }
}

/* Count this call if the count file says so (one line appended to the log). */
static void count_call(const char *name, long long now)
{
    if (count_path[0] == '\0' || now < __atomic_load_n(&count_absent_until_ns, __ATOMIC_RELAXED))
        return; /* the usual path: counting is off */
    char buf[CONTROL_MAX];
    if (read_small(count_path, buf, sizeof buf) < 0) {
        __atomic_store_n(&count_absent_until_ns, now + ABSENT_TTL_NS, __ATOMIC_RELAXED);
        return;
    }
    struct fault which; /* only its calls= is used */
    parse_control(buf, &which);
    if (which.calls != NULL && !applies(&which, name, 0))
        return;
    char line[64];
    int len = snprintf(line, sizeof line, "%s\n", name);
    int fd = open(count_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t ignored = write(fd, line, (size_t)len); /* one short write: a whole line */
    (void)ignored;
    close(fd);
}

/* CKR_OK: call the real module; anything else: return that instead. Counts the call first. */
static CK_RV check_fault(const char *name, int library_call)
{
    char buf[CONTROL_MAX];
    /* Sampled before looking: a late store below can only shorten the skip window. */
    long long now = monotonic_ns();
    count_call(name, now);
    if (now < __atomic_load_n(&absent_until_ns, __ATOMIC_RELAXED))
        return CKR_OK; /* the healthy path: no file a moment ago */
    for (;;) {
        ssize_t len = read_control(buf, sizeof buf);
        if (len < 0) {
            __atomic_store_n(&absent_until_ns, now + ABSENT_TTL_NS, __ATOMIC_RELAXED);
            return CKR_OK;
        }
        struct fault f;
        parse_control(buf, &f);
        if (f.until_ms > 0 && clock_ms(CLOCK_REALTIME) >= f.until_ms)
            return CKR_OK;
        if (!applies(&f, name, library_call))
            return CKR_OK;
        if (f.hang || f.delay_ms > 0) {
            if (wait_out(&f, buf, len))
                continue; /* changed while we waited: obey the new file */
            if (f.until_ms > 0 && clock_ms(CLOCK_REALTIME) >= f.until_ms)
                return CKR_OK; /* the fault ran out while we waited */
        }
        return f.error;
    }
}

/* -- forwarding ---------------------------------------------------------------------- */

#define FORWARD(name, library_call, params, args)                                          \
    static CK_RV shim_##name params                                                        \
    {                                                                                      \
        CK_RV rv = check_fault(#name, library_call);                                       \
        if (rv != CKR_OK)                                                                  \
            return rv;                                                                     \
        if (real->name == NULL)                                                            \
            return CKR_FUNCTION_NOT_SUPPORTED;                                             \
        return real->name args;                                                            \
    }

/* the library-level calls: not faulted unless calls= names them */
FORWARD(C_Initialize, 1, (CK_VOID_PTR init_args), (init_args))
FORWARD(C_GetInfo, 1, (CK_INFO_PTR info), (info))

/* A faulted C_Finalize still finalizes the real module, then returns the injected code:
 * callers (python-pkcs11 among them) treat a module as finalized whatever C_Finalize
 * answered, and a real module left initialized would refuse the next C_Initialize. */
static CK_RV shim_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV injected = check_fault("C_Finalize", 1);
    CK_RV rv = real->C_Finalize(reserved);
    return injected != CKR_OK ? injected : rv;
}

FORWARD(C_GetSlotList, 0, (CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count),
        (present, list, count))
FORWARD(C_GetSlotInfo, 0, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))
FORWARD(C_GetTokenInfo, 0, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))
FORWARD(C_GetMechanismList, 0, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),
        (slot, list, count))
FORWARD(C_GetMechanismInfo, 0, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                CK_MECHANISM_INFO_PTR info), (slot, type, info))
FORWARD(C_InitToken, 0, (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len,
                         CK_UTF8CHAR_PTR label), (slot, pin, pin_len, label))
FORWARD(C_InitPIN, 0, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len),
        (s, pin, pin_len))
FORWARD(C_SetPIN, 0, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len,
                      CK_UTF8CHAR_PTR new_pin, CK_ULONG new_len),
        (s, old_pin, old_len, new_pin, new_len))
FORWARD(C_OpenSession, 0, (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE_PTR s), (slot, flags, app, notify, s))
FORWARD(C_CloseSession, 0, (CK_SESSION_HANDLE s), (s))
FORWARD(C_CloseAllSessions, 0, (CK_SLOT_ID slot), (slot))
FORWARD(C_GetSessionInfo, 0, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info), (s, info))
FORWARD(C_GetOperationState, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG_PTR len),
        (s, state, len))
FORWARD(C_SetOperationState, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG len,
                                 CK_OBJECT_HANDLE enc_key, CK_OBJECT_HANDLE auth_key),
        (s, state, len, enc_key, auth_key))
FORWARD(C_Login, 0, (CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                     CK_ULONG pin_len), (s, user, pin, pin_len))
FORWARD(C_Logout, 0, (CK_SESSION_HANDLE s), (s))
FORWARD(C_CreateObject, 0, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count,
                            CK_OBJECT_HANDLE_PTR obj), (s, tmpl, count, obj))
FORWARD(C_CopyObject, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl,
                          CK_ULONG count, CK_OBJECT_HANDLE_PTR new_obj),
        (s, obj, tmpl, count, new_obj))
FORWARD(C_DestroyObject, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj), (s, obj))
FORWARD(C_GetObjectSize, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size),
        (s, obj, size))
FORWARD(C_GetAttributeValue, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                 CK_ATTRIBUTE_PTR tmpl, CK_ULONG count), (s, obj, tmpl, count))
FORWARD(C_SetAttributeValue, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                                 CK_ATTRIBUTE_PTR tmpl, CK_ULONG count), (s, obj, tmpl, count))
FORWARD(C_FindObjectsInit, 0, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count),
        (s, tmpl, count))
FORWARD(C_FindObjects, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR objs, CK_ULONG max,
                           CK_ULONG_PTR count), (s, objs, max, count))
FORWARD(C_FindObjectsFinal, 0, (CK_SESSION_HANDLE s), (s))
FORWARD(C_EncryptInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key),
        (s, mech, key))
FORWARD(C_Encrypt, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                       CK_ULONG_PTR out_len), (s, in, in_len, out, out_len))
FORWARD(C_EncryptUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                             CK_BYTE_PTR out, CK_ULONG_PTR out_len), (s, in, in_len, out, out_len))
FORWARD(C_EncryptFinal, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, out, out_len))
FORWARD(C_DecryptInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key),
        (s, mech, key))
FORWARD(C_Decrypt, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                       CK_ULONG_PTR out_len), (s, in, in_len, out, out_len))
FORWARD(C_DecryptUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                             CK_BYTE_PTR out, CK_ULONG_PTR out_len), (s, in, in_len, out, out_len))
FORWARD(C_DecryptFinal, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, out, out_len))
FORWARD(C_DigestInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech), (s, mech))
FORWARD(C_Digest, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                      CK_ULONG_PTR out_len), (s, in, in_len, out, out_len))
FORWARD(C_DigestUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len),
        (s, in, in_len))
FORWARD(C_DigestKey, 0, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key), (s, key))
FORWARD(C_DigestFinal, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, out, out_len))
FORWARD(C_SignInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key),
        (s, mech, key))
FORWARD(C_Sign, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig,
                    CK_ULONG_PTR sig_len), (s, in, in_len, sig, sig_len))
FORWARD(C_SignUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len),
        (s, in, in_len))
FORWARD(C_SignFinal, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len),
        (s, sig, sig_len))
FORWARD(C_SignRecoverInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech,
                               CK_OBJECT_HANDLE key), (s, mech, key))
FORWARD(C_SignRecover, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                           CK_BYTE_PTR sig, CK_ULONG_PTR sig_len), (s, in, in_len, sig, sig_len))
FORWARD(C_VerifyInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key),
        (s, mech, key))
FORWARD(C_Verify, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig,
                      CK_ULONG sig_len), (s, in, in_len, sig, sig_len))
FORWARD(C_VerifyUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len),
        (s, in, in_len))
FORWARD(C_VerifyFinal, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len),
        (s, sig, sig_len))
FORWARD(C_VerifyRecoverInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech,
                                 CK_OBJECT_HANDLE key), (s, mech, key))
FORWARD(C_VerifyRecover, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len,
                             CK_BYTE_PTR out, CK_ULONG_PTR out_len), (s, sig, sig_len, out, out_len))
FORWARD(C_DigestEncryptUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                                   CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, in, in_len, out, out_len))
FORWARD(C_DecryptDigestUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                                   CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, in, in_len, out, out_len))
FORWARD(C_SignEncryptUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                                 CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, in, in_len, out, out_len))
FORWARD(C_DecryptVerifyUpdate, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                                   CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, in, in_len, out, out_len))
FORWARD(C_GenerateKey, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR tmpl,
                           CK_ULONG count, CK_OBJECT_HANDLE_PTR key), (s, mech, tmpl, count, key))
FORWARD(C_GenerateKeyPair, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech,
                               CK_ATTRIBUTE_PTR pub_tmpl, CK_ULONG pub_count,
                               CK_ATTRIBUTE_PTR priv_tmpl, CK_ULONG priv_count,
                               CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),
        (s, mech, pub_tmpl, pub_count, priv_tmpl, priv_count, pub, priv))
FORWARD(C_WrapKey, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE wrapping,
                       CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
        (s, mech, wrapping, key, out, out_len))
FORWARD(C_UnwrapKey, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE unwrapping,
                         CK_BYTE_PTR in, CK_ULONG in_len, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count,
                         CK_OBJECT_HANDLE_PTR key), (s, mech, unwrapping, in, in_len, tmpl, count, key))
FORWARD(C_DeriveKey, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE base,
                         CK_ATTRIBUTE_PTR tmpl, CK_ULONG count, CK_OBJECT_HANDLE_PTR key),
        (s, mech, base, tmpl, count, key))
FORWARD(C_SeedRandom, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR seed, CK_ULONG len), (s, seed, len))
FORWARD(C_GenerateRandom, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len), (s, out, len))
FORWARD(C_GetFunctionStatus, 0, (CK_SESSION_HANDLE s), (s))
FORWARD(C_CancelFunction, 0, (CK_SESSION_HANDLE s), (s))
FORWARD(C_WaitForSlotEvent, 0, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved),
        (flags, slot, reserved))

/* -- loading the real module ---------------------------------------------------------- */

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static void complain(const char *what, const char *detail)
{
    fprintf(stderr, "hsm p11shim: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
}

/* Read "<this shared object>.conf": module= and control= lines. 0 on success. */
static int read_sidecar(char *module, size_t module_size)
{
    Dl_info info;
    if (dladdr((void *)&shim_C_GetFunctionList, &info) == 0 || info.dli_fname == NULL) {
        complain("can't find its own file name (dladdr)", NULL);
        return -1;
    }
    char conf[PATH_MAX];
    if (snprintf(conf, sizeof conf, "%s.conf", info.dli_fname) >= (int)sizeof conf) {
        complain("path too long", info.dli_fname);
        return -1;
    }
    FILE *fp = fopen(conf, "re");
    if (fp == NULL) {
        complain("can't read its configuration", conf);
        return -1;
    }
    char line[PATH_MAX + 32];
    module[0] = '\0';
    while (fgets(line, sizeof line, fp) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strchr(line, '=');
        if (line[0] == '#' || eq == NULL)
            continue;
        *eq = '\0';
        if (strcmp(line, "module") == 0)
            snprintf(module, module_size, "%s", eq + 1);
        else if (strcmp(line, "control") == 0)
            snprintf(control_path, sizeof control_path, "%s", eq + 1);
        else if (strcmp(line, "count") == 0 && strlen(eq + 1) + 4 < sizeof count_log) {
            snprintf(count_path, sizeof count_path, "%s", eq + 1);
            snprintf(count_log, sizeof count_log, "%s.log", eq + 1);
        }
    }
    fclose(fp);
    if (module[0] == '\0') {
        complain("no module= line in", conf);
        return -1;
    }
    return 0;
}

static void load_real(void)
{
    char module[PATH_MAX];
    if (read_sidecar(module, sizeof module) != 0)
        return;
    void *handle = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        complain("can't load the real module", dlerror());
        return;
    }
    CK_C_GetFunctionList get_list = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    Dl_info mine, theirs;
    if (get_list == NULL || dladdr((void *)get_list, &theirs) == 0 ||
        dladdr((void *)&shim_C_GetFunctionList, &mine) == 0 ||
        theirs.dli_fbase == mine.dli_fbase) {
        /* the same object would call back into us, inside pthread_once: refuse */
        complain("module= names no PKCS#11 module other than the shim itself", module);
        dlclose(handle);
        return;
    }
    CK_FUNCTION_LIST_PTR list = NULL;
    if (get_list(&list) != CKR_OK || list == NULL) {
        complain("the real module gave no function list", module);
        dlclose(handle);
        return;
    }

    shim_list.version = list->version;
    if (shim_list.version.major != 2) { /* the layout below is 2.40's, whatever is behind */
        shim_list.version.major = 2;
        shim_list.version.minor = 40;
    }
#define SET(name) shim_list.name = shim_##name
    SET(C_Initialize); SET(C_Finalize); SET(C_GetInfo);
    shim_list.C_GetFunctionList = shim_C_GetFunctionList;
    SET(C_GetSlotList); SET(C_GetSlotInfo); SET(C_GetTokenInfo); SET(C_GetMechanismList);
    SET(C_GetMechanismInfo); SET(C_InitToken); SET(C_InitPIN); SET(C_SetPIN);
    SET(C_OpenSession); SET(C_CloseSession); SET(C_CloseAllSessions); SET(C_GetSessionInfo);
    SET(C_GetOperationState); SET(C_SetOperationState); SET(C_Login); SET(C_Logout);
    SET(C_CreateObject); SET(C_CopyObject); SET(C_DestroyObject); SET(C_GetObjectSize);
    SET(C_GetAttributeValue); SET(C_SetAttributeValue); SET(C_FindObjectsInit);
    SET(C_FindObjects); SET(C_FindObjectsFinal); SET(C_EncryptInit); SET(C_Encrypt);
    SET(C_EncryptUpdate); SET(C_EncryptFinal); SET(C_DecryptInit); SET(C_Decrypt);
    SET(C_DecryptUpdate); SET(C_DecryptFinal); SET(C_DigestInit); SET(C_Digest);
    SET(C_DigestUpdate); SET(C_DigestKey); SET(C_DigestFinal); SET(C_SignInit); SET(C_Sign);
    SET(C_SignUpdate); SET(C_SignFinal); SET(C_SignRecoverInit); SET(C_SignRecover);
    SET(C_VerifyInit); SET(C_Verify); SET(C_VerifyUpdate); SET(C_VerifyFinal);
    SET(C_VerifyRecoverInit); SET(C_VerifyRecover); SET(C_DigestEncryptUpdate);
    SET(C_DecryptDigestUpdate); SET(C_SignEncryptUpdate); SET(C_DecryptVerifyUpdate);
    SET(C_GenerateKey); SET(C_GenerateKeyPair); SET(C_WrapKey); SET(C_UnwrapKey);
    SET(C_DeriveKey); SET(C_SeedRandom); SET(C_GenerateRandom); SET(C_GetFunctionStatus);
    SET(C_CancelFunction); SET(C_WaitForSlotEvent);
#undef SET
    real_handle = handle;
    real = list; /* last: a non-NULL `real` means the list is complete */
}

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, load_real);
    if (real == NULL)
        return CKR_GENERAL_ERROR; /* load_real said why on stderr */
    *list = &shim_list;
    return CKR_OK;
}

/* The one exported symbol. No C_GetInterface: callers then use this 2.40 list, never the
 * real module's (which a caller could otherwise reach, bypassing the faults). */
SHIM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    return shim_C_GetFunctionList(list);
}
