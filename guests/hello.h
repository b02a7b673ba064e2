/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hello: the smallest guest, also used to test the harness's error paths.
 * The host sets the globals below by symbol name before the first KVM_RUN.
 */
#ifndef HELLO_H
#define HELLO_H

#include "kh.h"

enum hello_mode {
	HELLO_NORMAL = 0,	/* SYNC(1, vcpu), SYNC(2, HELLO_CHECKSUM), PRINT, DONE */
	HELLO_ASSERT_FAIL = 1,	/* GUEST_ASSERT_EQ(hello_seven, 5): "(7 vs 5)" */
	HELLO_DIVIDE_ERROR = 2,	/* #DE: divide by a volatile zero */
	HELLO_PAGE_FAULT = 3,	/* #PF: read hello_fault_addr (host leaves it unmapped) */
	HELLO_SPIN = 4,		/* spin forever, checking nothing (watchdog tests) */
	HELLO_TRIPLE_FAULT = 5,	/* lidt a null IDT, then ud2: KVM_EXIT_SHUTDOWN */
	HELLO_BARRIER_SUM = 6,	/* per-vCPU sums into hello_result, vCPU 0 checks */
	HELLO_READ_GPAS = 7,	/* hello_read_values[i] = *(u64 *)hello_read_gpas[i] */
	HELLO_GP_FAULT = 8,	/* #GP: read a non-canonical address */
	HELLO_FAULT_TOGETHER = 9, /* barrier, then vCPU v reads hello_fault_addr + v * 4096 */
	HELLO_TRIPLE_FAULT_PF = 10, /* lidt a null IDT, read hello_fault_addr: shutdown */
	HELLO_TSC_SPIN = 11,	/* vCPU v spins hello_spin_cycles[v] TSC cycles, no exit in
				 * between; its first and last TSC reads go to
				 * hello_spin_start_tsc[v] / hello_spin_end_tsc[v] (a guest of
				 * known duration: the harness's run timing is checked on it) */
};

/* Mode 0: second SYNC value, sum of 1..100 computed at run time. */
#define HELLO_CHECKSUM		5050

/* Mode 6: vCPU v sums i over [v * HELLO_SUM_SPAN, (v + 1) * HELLO_SUM_SPAN). */
#define HELLO_SUM_SPAN		1000

#define HELLO_MAX_READS		16

extern uint32_t hello_mode;
extern uint64_t hello_fault_addr;	/* default 1 << 46: canonical, never mapped */
extern uint32_t hello_seven;		/* 7; the failing assert compares it with 5 */
extern uint64_t hello_result[KH_MAX_VCPUS];
extern uint64_t hello_read_gpas[HELLO_MAX_READS];
extern uint64_t hello_read_values[HELLO_MAX_READS];
extern uint32_t hello_read_count;
extern uint64_t hello_spin_cycles[KH_MAX_VCPUS];
extern uint64_t hello_spin_start_tsc[KH_MAX_VCPUS];
extern uint64_t hello_spin_end_tsc[KH_MAX_VCPUS];

#endif /* HELLO_H */
