// SPDX-License-Identifier: GPL-2.0-only
/*
 * Guest runtime: ucalls, a tiny printf, the spin barrier, exception reporting
 * and the libc functions gcc may call.
 *
 * Under instruction-emulating KVM (PVM) every guest instruction is costly, so
 * the ucall paths fill only the fields the host reads instead of zeroing the
 * whole 480-byte struct.
 */
#include "kh.h"

/* Host-written variables (guests/ABI.md).  Defaults make a bare run sane. */
uint32_t kh_nr_vcpus = 1;
volatile uint64_t kh_stop;
uint64_t kh_tsc_khz;

static __attribute__((noreturn)) void kh_halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" ::: "memory");
}

void kh_ucall(struct kh_ucall *uc)
{
	/*
	 * The struct lives on the stack, which is below 4 GiB (ABI.md), so its
	 * GPA fits in eax.  The "memory" clobber makes the stores land first.
	 */
	__asm__ volatile("outl %%eax, %%dx"
			 :: "a"((uint32_t)(uintptr_t)uc), "d"((uint16_t)KH_UCALL_PORT)
			 : "memory");
}

void kh_sync(const uint64_t *values, uint32_t n)
{
	struct kh_ucall uc;
	uint32_t i;

	uc.cmd = KH_UCALL_SYNC;
	uc.nargs = n;
	for (i = 0; i < n; i++)
		uc.args[i] = values[i];
	kh_ucall(&uc);
}

void kh_printf(const char *fmt, ...)
{
	struct kh_ucall uc;
	va_list ap;

	uc.cmd = KH_UCALL_PRINT;
	uc.nargs = 0;
	va_start(ap, fmt);
	kh_vsnprintf(uc.msg, sizeof(uc.msg), fmt, ap);
	va_end(ap);
	kh_ucall(&uc);
}

void kh_done(void)
{
	struct kh_ucall uc;

	uc.cmd = KH_UCALL_DONE;
	uc.nargs = 0;
	kh_ucall(&uc);
	kh_halt_forever();
}

void kh_assert_fail(const char *file, uint32_t line, const char *expr,
		    uint32_t nargs, const uint64_t *values, const char *fmt, ...)
{
	struct kh_ucall uc;
	uint32_t i;

	uc.cmd = KH_UCALL_ASSERT;
	uc.line = line;
	uc.file = (uint64_t)(uintptr_t)file;
	uc.expr = (uint64_t)(uintptr_t)expr;
	uc.nargs = nargs;
	for (i = 0; i < nargs; i++)
		uc.args[i] = values[i];
	uc.msg[0] = '\0';
	if (fmt) {
		va_list ap;

		va_start(ap, fmt);
		kh_vsnprintf(uc.msg, sizeof(uc.msg), fmt, ap);
		va_end(ap);
	}
	kh_ucall(&uc);
	kh_halt_forever();
}

/* ---- exceptions ---------------------------------------------------------- */

/* Layout built by kh_exception_common in entry.S, lowest address first. */
struct kh_exc_frame {
	uint64_t cr2;
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code;
	uint64_t rip, cs, rflags, rsp, ss;	/* pushed by the CPU */
};

void kh_exception_report(const struct kh_exc_frame *f);

__attribute__((noreturn)) void kh_exception_report(const struct kh_exc_frame *f)
{
	struct kh_ucall uc;
	uint64_t *a = uc.args;

	uc.cmd = KH_UCALL_EXCEPTION;
	/* Order fixed by ABI.md: vector..cr2, then rax..r15. */
	a[0] = f->vector;  a[1] = f->error_code; a[2] = f->rip;  a[3] = f->cs;
	a[4] = f->rflags;  a[5] = f->rsp;        a[6] = f->ss;   a[7] = f->cr2;
	a[8] = f->rax;     a[9] = f->rbx;        a[10] = f->rcx; a[11] = f->rdx;
	a[12] = f->rsi;    a[13] = f->rdi;       a[14] = f->rbp;
	a[15] = f->r8;     a[16] = f->r9;        a[17] = f->r10; a[18] = f->r11;
	a[19] = f->r12;    a[20] = f->r13;       a[21] = f->r14; a[22] = f->r15;
	uc.nargs = 23;
	kh_ucall(&uc);
	kh_halt_forever();
}

/* ---- barrier ------------------------------------------------------------- */

int kh_barrier_wait_n(struct kh_barrier *b, uint32_t n)
{
	/* Read the generation before arriving: it cannot move until we arrive. */
	uint32_t gen = kh_load_acquire(&b->generation);

	if (n <= 1)
		return 0;
	if (kh_add_fetch(&b->count, 1) == n) {
		/* Reset before releasing, so early leavers re-arrive on a clean count. */
		kh_store_relaxed(&b->count, 0);
		kh_store_release(&b->generation, gen + 1);
		return 0;
	}
	while (kh_load_acquire(&b->generation) == gen) {
		if (kh_stop)
			return -1;
		kh_pause();
	}
	return 0;
}

static struct kh_barrier kh_all_vcpus_barrier;

int kh_barrier_wait(void)
{
	return kh_barrier_wait_n(&kh_all_vcpus_barrier, kh_nr_vcpus);
}

/* ---- printf -------------------------------------------------------------- */

struct kh_out {
	char *buf;
	size_t size;
	size_t len;	/* characters produced, even past size (snprintf semantics) */
};

static void kh_putc(struct kh_out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void kh_put_padded(struct kh_out *o, const char *s, size_t n, int width,
			  char pad, int left)
{
	int fill = width > (int)n ? width - (int)n : 0;

	if (!left && pad == '0' && n && (*s == '-')) {
		/* Zero padding goes after the sign: -0042, not 00-42. */
		kh_putc(o, *s++);
		n--;
	}
	if (!left)
		while (fill-- > 0)
			kh_putc(o, pad);
	while (n--)
		kh_putc(o, *s++);
	if (left)
		while (fill-- > 0)
			kh_putc(o, ' ');
}

static size_t kh_utoa(char *end, uint64_t v, unsigned int base, int upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char *p = end;

	do {
		*--p = digits[v % base];
		v /= base;
	} while (v);
	return (size_t)(end - p);
}

/*
 * Supports %d %i %u %x %X %p %s %c %%, the l/ll/z length modifiers, field
 * width (also '*'), '0' and '-' flags.  Anything else is printed verbatim.
 */
int kh_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct kh_out o = { buf, size, 0 };
	char num[24];

	for (; *fmt; fmt++) {
		int width = 0, left = 0, lng = 0;
		char pad = ' ';
		const char *spec = fmt;
		uint64_t u;
		size_t n;

		if (*fmt != '%') {
			kh_putc(&o, *fmt);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '0')
				pad = '0';
			else if (*fmt == '-')
				left = 1;
			else
				break;
		}
		if (*fmt == '*') {
			width = va_arg(ap, int);
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng = 1;
			fmt++;
		}

		switch (*fmt) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			int neg = v < 0;

			u = neg ? -(uint64_t)v : (uint64_t)v;
			n = kh_utoa(num + sizeof(num), u, 10, 0);
			if (neg)
				num[sizeof(num) - ++n] = '-';
			kh_put_padded(&o, num + sizeof(num) - n, n, width, pad, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X':
			u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
			n = kh_utoa(num + sizeof(num), u, *fmt == 'u' ? 10 : 16, *fmt == 'X');
			kh_put_padded(&o, num + sizeof(num) - n, n, width, pad, left);
			break;
		case 'p':
			u = (uint64_t)(uintptr_t)va_arg(ap, void *);
			n = kh_utoa(num + sizeof(num), u, 16, 0);
			num[sizeof(num) - ++n] = 'x';
			num[sizeof(num) - ++n] = '0';
			kh_put_padded(&o, num + sizeof(num) - n, n, width, ' ', left);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);

			if (!s)
				s = "(null)";
			kh_put_padded(&o, s, strlen(s), width, ' ', left);
			break;
		}
		case 'c':
			num[0] = (char)va_arg(ap, int);
			kh_put_padded(&o, num, 1, width, ' ', left);
			break;
		case '%':
			kh_putc(&o, '%');
			break;
		default:
			/* Unknown conversion: show it as written, so the bug is visible. */
			while (spec <= fmt && *spec)
				kh_putc(&o, *spec++);
			if (!*fmt)
				fmt--;
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

int kh_snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = kh_vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

/* ---- libc ---------------------------------------------------------------- */

/*
 * String instructions rather than C loops: gcc would turn a loop here back
 * into a call to the very function being defined, and one rep instruction is
 * cheaper to emulate than a loop.
 */
void *memset(void *s, int c, size_t n)
{
	void *d = s;

	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return s;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) :: "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	if ((uintptr_t)dst <= (uintptr_t)src || (uintptr_t)dst >= (uintptr_t)src + n)
		return memcpy(dst, src, n);
	/* Overlapping with dst above src: copy backwards. */
	{
		char *d = (char *)dst + n - 1;
		const char *s = (const char *)src + n - 1;

		__asm__ volatile("std; rep movsb; cld"
				 : "+D"(d), "+S"(s), "+c"(n) :: "memory");
	}
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const volatile unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	const volatile char *p = s;

	while (*p)
		p++;
	return (size_t)(p - s);
}
