// SPDX-License-Identifier: GPL-2.0-only
/*
 * flip: a RAM <-> MMIO GPA range read under memslot churn (see flip.h).
 */
#include "flip.h"

volatile uint64_t flip_seq;
uint64_t flip_base;
uint64_t flip_pages = 1;

uint64_t flip_start_tsc[KH_MAX_VCPUS];
uint64_t flip_reads[KH_MAX_VCPUS];
uint64_t flip_checked[KH_MAX_VCPUS];
uint64_t flip_seen_ram[KH_MAX_VCPUS];
uint64_t flip_seen_mmio[KH_MAX_VCPUS];
uint64_t flip_violations[KH_MAX_VCPUS];
struct flip_violation flip_log[KH_MAX_VCPUS][FLIP_LOG_MAX];

/* One plain mov: whichever of RAM or an MMIO exit serves it, it is one access. */
static inline uint64_t flip_load(uint64_t addr)
{
	uint64_t v;

	__asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(addr) : "memory");
	return v;
}

static void flip_record(uint32_t vcpu, uint64_t s1, uint64_t s2, uint64_t gpa, uint64_t v)
{
	uint64_t n = flip_violations[vcpu];

	if (n < FLIP_LOG_MAX) {
		struct flip_violation *e = &flip_log[vcpu][n];

		e->tsc = kh_rdtsc();
		e->seq_before = s1;
		e->seq_after = s2;
		e->gpa = gpa;
		e->value = v;
	}
	/* The count last, so a host reading mid-run never sees a half-written entry. */
	kh_store_release(&flip_violations[vcpu], n + 1);
}

void guest_main(uint32_t vcpu, void *arg)
{
	uint64_t page, pages = flip_pages, base = flip_base;
	uint64_t reads = 0, checked = 0, ram = 0, mmio = 0;

	(void)arg;
	GUEST_ASSERT_LT(vcpu, KH_MAX_VCPUS);
	GUEST_ASSERT_GE(pages, 1);
	GUEST_ASSERT_EQ(base % FLIP_PAGE_SIZE, 0);
	GUEST_ASSERT_LE(base + pages * FLIP_PAGE_SIZE, 1ULL << 32);

	page = vcpu % pages;
	flip_start_tsc[vcpu] = kh_rdtsc();
	while (!kh_stop) {
		uint64_t gpa = base + page * FLIP_PAGE_SIZE, s1, s2, v;
		int is_ram, is_mmio, ok;

		/*
		 * x86 keeps loads in program order (and an MMIO exit is serialising), so
		 * s1 <= the state the access saw <= s2; acquire also stops the compiler.
		 */
		s1 = kh_load_acquire(&flip_seq);
		v = flip_load(gpa);
		s2 = kh_load_acquire(&flip_seq);

		is_ram = v == FLIP_RAM_WORD(gpa);
		is_mmio = v == FLIP_MMIO_WORD(gpa);
		ok = is_ram || is_mmio;
		if (ok && s1 == s2) {
			if (s1 % 4 == FLIP_PRESENT) {
				ok = is_ram;
				checked++;
			} else if (s1 % 4 == FLIP_ABSENT) {
				ok = is_mmio;
				checked++;
			}
		}
		if (!ok)
			flip_record(vcpu, s1, s2, gpa, v);
		reads++;
		ram += is_ram;
		mmio += is_mmio;
		if (++page == pages)
			page = 0;
		/* Publish progress now and then: cheap, and a host watching sees it move. */
		if (!(reads & 255)) {
			flip_reads[vcpu] = reads;
			flip_checked[vcpu] = checked;
		}
	}
	flip_reads[vcpu] = reads;
	flip_checked[vcpu] = checked;
	flip_seen_ram[vcpu] = ram;
	flip_seen_mmio[vcpu] = mmio;
}
