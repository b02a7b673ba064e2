/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * kh.h - runtime for kvmharness guests.
 *
 * The guest <-> host contract is guests/ABI.md; keep this header in step with
 * it and with kvmharness/guest/ucall.py.
 */
#ifndef KH_H
#define KH_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define KH_MAX_VCPUS		64
#define KH_UCALL_PORT		0x6000
#define KH_UCALL_MAX_ARGS	24
#define KH_UCALL_MSG_SIZE	256

enum kh_ucall_cmd {
	KH_UCALL_SYNC = 1,
	KH_UCALL_PRINT = 2,
	KH_UCALL_ASSERT = 3,
	KH_UCALL_DONE = 4,
	KH_UCALL_EXCEPTION = 5,
};

struct kh_ucall {
	uint32_t cmd;
	uint32_t line;
	uint64_t file;
	uint64_t expr;
	uint32_t nargs;
	uint32_t pad;
	uint64_t args[KH_UCALL_MAX_ARGS];
	char msg[KH_UCALL_MSG_SIZE];
};

_Static_assert(offsetof(struct kh_ucall, nargs) == 24, "ABI.md: nargs at 24");
_Static_assert(offsetof(struct kh_ucall, args) == 32, "ABI.md: args at 32");
_Static_assert(offsetof(struct kh_ucall, msg) == 224, "ABI.md: msg at 224");
_Static_assert(sizeof(struct kh_ucall) == 480, "ABI.md: struct is 480 bytes");

/* Written by the host before the first KVM_RUN (guests/ABI.md). */
extern uint32_t kh_nr_vcpus;
extern volatile uint64_t kh_stop;
extern uint64_t kh_tsc_khz;
extern const uint64_t kh_exception_stubs[256];

/* Each guest defines this; _start calls it, then reports DONE. */
void guest_main(uint32_t vcpu, void *arg);

/* ---- ucalls ------------------------------------------------------------ */

void kh_ucall(struct kh_ucall *uc);
void kh_sync(const uint64_t *values, uint32_t n);
void kh_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void kh_done(void);
__attribute__((noreturn, format(printf, 6, 7)))
void kh_assert_fail(const char *file, uint32_t line, const char *expr,
		    uint32_t nargs, const uint64_t *values, const char *fmt, ...);

int kh_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int kh_snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#ifdef __FILE_NAME__
#define KH_FILE __FILE_NAME__	/* basename: the host prints "hello.c:42: ..." */
#else
#define KH_FILE __FILE__
#endif

/*
 * GUEST_SYNC(v...) - report up to 24 integer values; the host resumes the guest.
 * The negative array size turns "too many values" into a compile error.
 */
#define GUEST_SYNC(...)							\
	do {								\
		const uint64_t __kh_v[] = { 0, ##__VA_ARGS__ };		\
		(void)sizeof(char[sizeof(__kh_v) / 8 - 1 <= KH_UCALL_MAX_ARGS ? 1 : -1]); \
		kh_sync(__kh_v + 1, sizeof(__kh_v) / 8 - 1);		\
	} while (0)

#define GUEST_PRINTF(fmt, ...)	kh_printf(fmt, ##__VA_ARGS__)
#define GUEST_DONE()		kh_done()

#define GUEST_ASSERT(cond)						\
	do {								\
		if (__builtin_expect(!(cond), 0))			\
			kh_assert_fail(KH_FILE, __LINE__, #cond, 0, NULL, NULL); \
	} while (0)

/* Like GUEST_ASSERT, with a printf-style message shown after the expression. */
#define GUEST_ASSERT_MSG(cond, fmt, ...)				\
	do {								\
		if (__builtin_expect(!(cond), 0))			\
			kh_assert_fail(KH_FILE, __LINE__, #cond, 0, NULL, fmt, ##__VA_ARGS__); \
	} while (0)

/*
 * Binary asserts evaluate each operand once and carry both values to the host.
 * Both sides are converted to their common type (what `a op b` would use), so
 * GUEST_ASSERT_LT(u32_var, 5) needs no casts; beware that a negative signed
 * value compared with an unsigned one becomes large, as in plain C.
 */
#define __GUEST_ASSERT_CMP(a, op, b)					\
	do {								\
		__typeof__(1 ? (a) : (b)) __kh_a = (a);			\
		__typeof__(1 ? (a) : (b)) __kh_b = (b);			\
		if (__builtin_expect(!(__kh_a op __kh_b), 0)) {		\
			const uint64_t __kh_v[2] = {			\
				(uint64_t)__kh_a, (uint64_t)__kh_b };	\
			kh_assert_fail(KH_FILE, __LINE__, #a " " #op " " #b, \
				       2, __kh_v, NULL);		\
		}							\
	} while (0)

#define GUEST_ASSERT_EQ(a, b)	__GUEST_ASSERT_CMP(a, ==, b)
#define GUEST_ASSERT_NE(a, b)	__GUEST_ASSERT_CMP(a, !=, b)
#define GUEST_ASSERT_LT(a, b)	__GUEST_ASSERT_CMP(a, <, b)
#define GUEST_ASSERT_LE(a, b)	__GUEST_ASSERT_CMP(a, <=, b)
#define GUEST_ASSERT_GT(a, b)	__GUEST_ASSERT_CMP(a, >, b)
#define GUEST_ASSERT_GE(a, b)	__GUEST_ASSERT_CMP(a, >=, b)

/* ---- timing and ordering ---------------------------------------------- */

static inline void kh_lfence(void) { __asm__ volatile("lfence" ::: "memory"); }
static inline void kh_mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void kh_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void kh_barrier_compiler(void) { __asm__ volatile("" ::: "memory"); }

/* Raw rdtsc; not ordered against surrounding loads. */
static inline uint64_t kh_rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
	return ((uint64_t)hi << 32) | lo;
}

/* rdtsc fenced on both sides, for timing a region of memory accesses. */
static inline uint64_t kh_rdtsc_ordered(void)
{
	uint64_t t;

	kh_lfence();
	t = kh_rdtsc();
	kh_lfence();
	return t;
}

static inline uint64_t kh_rdtscp(uint32_t *aux)
{
	uint32_t lo, hi, c;

	__asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(c) :: "memory");
	if (aux)
		*aux = c;
	return ((uint64_t)hi << 32) | lo;
}

/* TSC ticks to nanoseconds; 0 when the host could not tell the frequency. */
static inline uint64_t kh_tsc_to_ns(uint64_t ticks)
{
	if (!kh_tsc_khz)
		return 0;
	return ticks / kh_tsc_khz * 1000000 + ticks % kh_tsc_khz * 1000000 / kh_tsc_khz;
}

/* ---- atomics (thin wrappers so guests read like the kernel) ------------ */

#define kh_load_acquire(p)	__atomic_load_n((p), __ATOMIC_ACQUIRE)
#define kh_store_release(p, v)	__atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define kh_load_relaxed(p)	__atomic_load_n((p), __ATOMIC_RELAXED)
#define kh_store_relaxed(p, v)	__atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define kh_fetch_add(p, v)	__atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define kh_add_fetch(p, v)	__atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define kh_exchange(p, v)	__atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define kh_cmpxchg(p, expected_ptr, desired)				\
	__atomic_compare_exchange_n((p), (expected_ptr), (desired), 0,	\
				    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)

/* ---- spin barrier -------------------------------------------------------- */

/*
 * Sense-reversing barrier whose "sense" is a generation counter, so no
 * per-vCPU state is needed and it can be reused back to back.
 */
struct kh_barrier {
	uint32_t count;
	uint32_t generation;
};

/*
 * Wait until @n vCPUs have arrived.  Returns 0, or -1 if kh_stop was set while
 * waiting (a vCPU that died never arrives; the host stops the rest).
 */
int kh_barrier_wait_n(struct kh_barrier *b, uint32_t n);

/* The barrier across all kh_nr_vcpus vCPUs. */
int kh_barrier_wait(void);

/* ---- libc bits gcc may emit calls to ----------------------------------- */

void *memset(void *s, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif /* KH_H */
