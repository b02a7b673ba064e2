// SPDX-License-Identifier: GPL-2.0-only
/*
 * hammer: the memory hammer (see hammer.h for the parameters and results).
 */
#include "hammer.h"

uint64_t hammer_base;
uint64_t hammer_stride_per_vcpu;
uint64_t hammer_pages;
uint64_t hammer_page_size = 4096;
uint32_t hammer_passes;
uint32_t hammer_write;
uint32_t hammer_sync_each_pass;
uint32_t hammer_park_each_pass;
uint32_t hammer_released;

uint64_t hammer_pass_tsc[KH_MAX_VCPUS][HAMMER_MAX_PASSES];
uint64_t hammer_pass_max_gap[KH_MAX_VCPUS][HAMMER_MAX_PASSES];
uint64_t hammer_pass_end_tsc[KH_MAX_VCPUS][HAMMER_MAX_PASSES];
uint32_t hammer_passes_done[KH_MAX_VCPUS];
uint64_t hammer_checksum[KH_MAX_VCPUS];
uint64_t hammer_rom_base;
uint64_t hammer_rom_bytes;
uint64_t hammer_rom_present[KH_MAX_VCPUS];
uint64_t hammer_rom_absent[KH_MAX_VCPUS];

static void hammer_check_params(uint32_t vcpu)
{
	uint64_t span;

	GUEST_ASSERT_LT(vcpu, KH_MAX_VCPUS);
	GUEST_ASSERT_LE(kh_nr_vcpus, KH_MAX_VCPUS);
	GUEST_ASSERT_GE(hammer_passes, 1);
	GUEST_ASSERT_LE(hammer_passes, HAMMER_MAX_PASSES);
	GUEST_ASSERT_GE(hammer_pages, 1);
	GUEST_ASSERT_GE(hammer_page_size, 8);
	GUEST_ASSERT_EQ(hammer_page_size % 8, 0);
	GUEST_ASSERT_EQ(hammer_base % 8, 0);
	GUEST_ASSERT_LE(hammer_write, 1);
	span = hammer_pages * hammer_page_size;
	GUEST_ASSERT_EQ(span / hammer_page_size, hammer_pages);	/* no overflow */
	GUEST_ASSERT_MSG(hammer_stride_per_vcpu == 0 || hammer_stride_per_vcpu >= span,
			 "per-vCPU ranges overlap: stride %lu < %lu pages * %lu",
			 hammer_stride_per_vcpu, hammer_pages, hammer_page_size);
	GUEST_ASSERT_EQ(hammer_stride_per_vcpu % 8, 0);
	GUEST_ASSERT_EQ(hammer_rom_base % 4096, 0);
	GUEST_ASSERT_EQ(hammer_rom_bytes % 4096, 0);
}

/* The longest gap so far between accesses, ending one at @now. */
static inline uint64_t hammer_gap(uint64_t *prev, uint64_t now, uint64_t max_gap)
{
	uint64_t gap = now - *prev;

	*prev = now;
	return gap > max_gap ? gap : max_gap;
}

/*
 * One pass: no calls, no exits; the loop is the measurement.  Each access is
 * followed by an rdtsc, so the largest gap between accesses is known.
 */
static uint64_t hammer_read_pass(uint64_t addr, uint64_t pages, uint64_t step,
				 uint64_t start, uint64_t *max_gap)
{
	uint64_t sum = 0, prev = start, gap = 0;

	for (; pages; pages--, addr += step) {
		sum += *(volatile uint64_t *)(uintptr_t)addr;
		gap = hammer_gap(&prev, kh_rdtsc(), gap);
	}
	*max_gap = gap;
	return sum;
}

static void hammer_write_pass(uint64_t addr, uint64_t pages, uint64_t step, uint64_t value,
			      uint64_t start, uint64_t *max_gap)
{
	uint64_t prev = start, gap = 0;

	for (; pages; pages--, addr += step) {
		*(volatile uint64_t *)(uintptr_t)addr = value;
		gap = hammer_gap(&prev, kh_rdtsc(), gap);
	}
	*max_gap = gap;
}

/* Between passes (never inside one): the ROM may come and go under us. */
static void hammer_read_rom(uint32_t vcpu)
{
	uint64_t off;

	for (off = 0; off < hammer_rom_bytes; off += 4096) {
		uint64_t word = *(volatile uint64_t *)(uintptr_t)(hammer_rom_base + off);

		if (word == HAMMER_ROM_WORD(off))
			hammer_rom_present[vcpu]++;
		else if (word == HAMMER_ROM_ABSENT)
			hammer_rom_absent[vcpu]++;
		else
			GUEST_ASSERT_MSG(0, "ROM word at %lx reads %lx: neither the ROM pattern "
					 "nor the absent-ROM value", hammer_rom_base + off, word);
	}
}

void guest_main(uint32_t vcpu, void *arg)
{
	uint64_t base, pages, step, sum = 0;
	uint32_t pass, npasses;

	(void)arg;
	hammer_check_params(vcpu);
	base = hammer_base + vcpu * hammer_stride_per_vcpu;
	pages = hammer_pages;
	step = hammer_page_size;
	npasses = hammer_passes;

	/* Start together, so concurrent passes really overlap in time. */
	if (kh_barrier_wait())
		return;

	for (pass = 0; pass < npasses && !kh_stop; pass++) {
		uint64_t t0, t1, max_gap;

		t0 = kh_rdtsc_ordered();
		if (hammer_write) {
			hammer_write_pass(base, pages, step, HAMMER_WRITE_VALUE(vcpu, pass), t0,
					  &max_gap);
			/* lfence does not wait for stores: drain them inside the pass. */
			kh_mfence();
		} else {
			sum += hammer_read_pass(base, pages, step, t0, &max_gap);
		}
		t1 = kh_rdtsc_ordered();

		hammer_pass_tsc[vcpu][pass] = t1 - t0;
		hammer_pass_max_gap[vcpu][pass] = max_gap;
		hammer_pass_end_tsc[vcpu][pass] = t1;
		/* Store the count after the sample, so the host never reads a stale one. */
		kh_store_release(&hammer_passes_done[vcpu], pass + 1);
		hammer_checksum[vcpu] = sum;
		if (hammer_rom_base)
			hammer_read_rom(vcpu);
		if (hammer_sync_each_pass)
			GUEST_SYNC(pass);
		if (hammer_park_each_pass)
			while (kh_load_acquire(&hammer_released) < pass + 1 && !kh_stop)
				kh_pause();
	}
}
