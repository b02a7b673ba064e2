// SPDX-License-Identifier: GPL-2.0-only
/*
 * mmio: per-access cost of PIO, MMIO reads/writes, ROM writes, ioeventfd and
 * coalesced-MMIO writes (see mmio.h for the parameters and results).
 */
#include "mmio.h"

uint32_t mmio_kinds;
uint32_t mmio_rounds = 1;
uint64_t mmio_addr[MMIO_NR_KINDS];
uint64_t mmio_accesses[MMIO_NR_KINDS];

uint64_t mmio_round_tsc[MMIO_NR_KINDS][MMIO_MAX_ROUNDS];
uint32_t mmio_rounds_done[MMIO_NR_KINDS];

/*
 * The accesses are written in asm so each is exactly one plain mov/in that
 * every decoder (VT-x/AMD-V emulation of MMIO, PVM's full emulation) handles,
 * whatever the compiler would otherwise pick (e.g. a read-modify-write).
 */
static inline uint64_t mmio_load(uint64_t addr)
{
	uint64_t v;

	__asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(addr) : "memory");
	return v;
}

static inline void mmio_store(uint64_t addr, uint64_t v)
{
	__asm__ volatile("movq %0, (%1)" :: "r"(v), "r"(addr) : "memory");
}

static inline uint32_t mmio_inl(uint16_t port)
{
	uint32_t v;

	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static void mmio_check_params(void)
{
	uint32_t k;

	GUEST_ASSERT_GE(mmio_rounds, 1);
	GUEST_ASSERT_LE(mmio_rounds, MMIO_MAX_ROUNDS);
	GUEST_ASSERT_EQ(mmio_kinds & ~((1U << MMIO_NR_KINDS) - 1), 0);
	for (k = 0; k < MMIO_NR_KINDS; k++) {
		if (!(mmio_kinds & (1U << k)))
			continue;
		GUEST_ASSERT_MSG(mmio_accesses[k] >= 1, "kind %u: no accesses", k);
		if (k == MMIO_KIND_PIO)
			GUEST_ASSERT_LE(mmio_addr[k], 0xffff);
		else
			GUEST_ASSERT_MSG(mmio_addr[k] && mmio_addr[k] % 8 == 0,
					 "kind %u: address %lx not 8-byte aligned", k, mmio_addr[k]);
	}
}

/* One timed round; returns the TSC delta.  Checks are outside the timed region. */
static uint64_t mmio_round(uint32_t kind, uint32_t round)
{
	uint64_t addr = mmio_addr[kind], n = mmio_accesses[kind], i, sum = 0, t0, t1;

	t0 = kh_rdtsc_ordered();
	switch (kind) {
	case MMIO_KIND_PIO:
		for (i = 0; i < n; i++)
			sum += mmio_inl((uint16_t)addr);
		break;
	case MMIO_KIND_READ:
		for (i = 0; i < n; i++)
			sum += mmio_load(addr);
		break;
	default:
		for (i = 0; i < n; i++)
			mmio_store(addr, MMIO_WRITE_VALUE(kind, round, i));
		break;
	}
	t1 = kh_rdtsc_ordered();

	if (kind == MMIO_KIND_PIO)
		GUEST_ASSERT_MSG(sum == n * MMIO_PIO_VALUE,
				 "PIO reads of port %lx summed to %lx, expected %lu x %x",
				 addr, sum, n, MMIO_PIO_VALUE);
	else if (kind == MMIO_KIND_READ)
		GUEST_ASSERT_MSG(sum == n * MMIO_READ_VALUE(addr),
				 "MMIO reads of %lx summed to %lx, expected %lu x %llx",
				 addr, sum, n, MMIO_READ_VALUE(addr));
	return t1 - t0;
}

void guest_main(uint32_t vcpu, void *arg)
{
	uint32_t kind, round;

	(void)arg;
	if (vcpu != 0)
		return;
	mmio_check_params();
	for (kind = 0; kind < MMIO_NR_KINDS; kind++) {
		if (!(mmio_kinds & (1U << kind)))
			continue;
		for (round = 0; round < mmio_rounds && !kh_stop; round++) {
			mmio_round_tsc[kind][round] = mmio_round(kind, round);
			kh_store_release(&mmio_rounds_done[kind], round + 1);
			GUEST_SYNC(MMIO_SYNC_ROUND, kind, round, mmio_accesses[kind]);
		}
	}
}
