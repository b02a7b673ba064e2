// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello: a trivial guest (mode 0) plus the failure modes the host-side tests
 * need (see hello.h).  Each mode is chosen by the host through hello_mode.
 */
#include "hello.h"

uint32_t hello_mode;
uint64_t hello_fault_addr = 1ULL << 46;
uint32_t hello_seven = 7;
uint64_t hello_result[KH_MAX_VCPUS];
uint64_t hello_read_gpas[HELLO_MAX_READS];
uint64_t hello_read_values[HELLO_MAX_READS];
uint32_t hello_read_count;
uint64_t hello_spin_cycles[KH_MAX_VCPUS];
uint64_t hello_spin_start_tsc[KH_MAX_VCPUS];
uint64_t hello_spin_end_tsc[KH_MAX_VCPUS];

static void hello_normal(uint32_t vcpu)
{
	volatile uint64_t n = 100;	/* volatile: compute at run time, not compile time */
	uint64_t i, sum = 0;

	GUEST_SYNC(1, vcpu);
	for (i = 1; i <= n; i++)
		sum += i;
	GUEST_SYNC(2, sum);
	GUEST_PRINTF("hello from vcpu %u of %u, tsc %lu kHz\n", vcpu, kh_nr_vcpus, kh_tsc_khz);
	GUEST_ASSERT(sum == HELLO_CHECKSUM);
	GUEST_ASSERT_EQ(sum, (uint64_t)HELLO_CHECKSUM);
	GUEST_ASSERT_LT(vcpu, kh_nr_vcpus);
}

static void hello_triple_fault(void)
{
	/*
	 * With a zero-limit IDT the #UD cannot be delivered: #GP, #DF, shutdown.
	 * ud2 rather than int3: PVM's emulator fails a software interrupt through a
	 * bad IDT with KVM_EXIT_INTERNAL_ERROR instead of a triple fault.
	 */
	static const struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) null_idt = { 0, 0 };

	__asm__ volatile("lidt %0; ud2" :: "m"(null_idt) : "memory");
}

/* A #PF that cannot be delivered: CR2 holds the address when the vCPU shuts down. */
static void hello_triple_fault_pf(void)
{
	static const struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) null_idt = { 0, 0 };

	__asm__ volatile("lidt %0; movq (%1), %%rax" :: "m"(null_idt), "r"(hello_fault_addr)
			 : "rax", "memory");
}

static uint64_t hello_sum_range(uint64_t lo, uint64_t hi)
{
	uint64_t i, sum = 0;

	for (i = lo; i < hi; i++)
		sum += i;
	return sum;
}

static void hello_barrier_sum(uint32_t vcpu)
{
	uint64_t lo = (uint64_t)vcpu * HELLO_SUM_SPAN, total = 0;
	uint32_t v;

	GUEST_ASSERT_LE(kh_nr_vcpus, KH_MAX_VCPUS);
	GUEST_ASSERT_EQ(kh_barrier_wait(), 0);
	hello_result[vcpu] = hello_sum_range(lo, lo + HELLO_SUM_SPAN);
	/* Second use of the same barrier: it must be reusable. */
	GUEST_ASSERT_EQ(kh_barrier_wait(), 0);
	if (vcpu != 0)
		return;
	for (v = 0; v < kh_nr_vcpus; v++) {
		/* Closed form of the sum over [v*S, (v+1)*S). */
		uint64_t want = (uint64_t)HELLO_SUM_SPAN * v * HELLO_SUM_SPAN +
				(uint64_t)HELLO_SUM_SPAN * (HELLO_SUM_SPAN - 1) / 2;

		GUEST_ASSERT_EQ(hello_result[v], want);
		total += hello_result[v];
	}
	GUEST_SYNC(6, total);
}

/* The first TSC read is the guest's start, the last its end: DONE follows at once. */
static void hello_tsc_spin(uint32_t vcpu)
{
	uint64_t start = kh_rdtsc_ordered(), now;

	hello_spin_start_tsc[vcpu] = start;
	do {
		now = kh_rdtsc_ordered();
	} while (now - start < hello_spin_cycles[vcpu]);
	hello_spin_end_tsc[vcpu] = now;
}

void guest_main(uint32_t vcpu, void *arg)
{
	volatile uint32_t zero = 0;
	uint32_t i;

	(void)arg;
	switch (hello_mode) {
	case HELLO_NORMAL:
		hello_normal(vcpu);
		break;
	case HELLO_ASSERT_FAIL:
		GUEST_ASSERT_EQ(hello_seven, 5);
		break;
	case HELLO_DIVIDE_ERROR:
		GUEST_SYNC(100 / zero);
		break;
	case HELLO_PAGE_FAULT:
		GUEST_SYNC(*(volatile uint64_t *)(uintptr_t)hello_fault_addr);
		break;
	case HELLO_SPIN:
		for (;;)
			kh_barrier_compiler();
	case HELLO_TRIPLE_FAULT:
		hello_triple_fault();
		break;
	case HELLO_BARRIER_SUM:
		hello_barrier_sum(vcpu);
		break;
	case HELLO_GP_FAULT:
		GUEST_SYNC(*(volatile uint64_t *)0x8000000000000000ULL);
		break;
	case HELLO_FAULT_TOGETHER:
		/* Both vCPUs fault within a few instructions of each other. */
		kh_barrier_wait();
		GUEST_SYNC(*(volatile uint64_t *)(uintptr_t)(hello_fault_addr + vcpu * 4096ULL));
		break;
	case HELLO_TRIPLE_FAULT_PF:
		hello_triple_fault_pf();
		break;
	case HELLO_READ_GPAS:
		GUEST_ASSERT_LE(hello_read_count, HELLO_MAX_READS);
		for (i = 0; i < hello_read_count; i++)
			hello_read_values[i] = *(volatile uint64_t *)(uintptr_t)hello_read_gpas[i];
		GUEST_SYNC(7, hello_read_count);
		break;
	case HELLO_TSC_SPIN:
		hello_tsc_spin(vcpu);
		break;
	default:
		GUEST_ASSERT_MSG(0, "unknown hello_mode %u", hello_mode);
	}
}
