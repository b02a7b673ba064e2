/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hammer: touch one 8-byte word per page of a per-vCPU range, N passes, and
 * time each pass with rdtsc.  A pass makes no exits of its own, so its time
 * is guest page-fault / EPT / NPT work only.
 *
 * vCPU v hammers [hammer_base + v * hammer_stride_per_vcpu,
 *                 ... + hammer_pages * hammer_page_size).
 * The host sets the parameters by symbol name and reads the results after
 * DONE (or between passes when hammer_sync_each_pass is set).
 */
#ifndef HAMMER_H
#define HAMMER_H

#include "kh.h"

#define HAMMER_MAX_PASSES	4096

/* Parameters (host writes). */
extern uint64_t hammer_base;		/* GPA of vCPU 0's range, 8-byte aligned */
extern uint64_t hammer_stride_per_vcpu;	/* 0 (shared range) or >= pages * page_size */
extern uint64_t hammer_pages;		/* pages per vCPU, >= 1 */
extern uint64_t hammer_page_size;	/* step in bytes, default 4096, multiple of 8 */
extern uint32_t hammer_passes;		/* 1 .. HAMMER_MAX_PASSES */
extern uint32_t hammer_write;		/* 0: read, 1: write HAMMER_WRITE_VALUE */
extern uint32_t hammer_sync_each_pass;	/* non-zero: GUEST_SYNC(pass) after each pass */
/*
 * Non-zero: after pass p (its hammer_passes_done already stored) spin in the guest,
 * without an exit, until the host stores hammer_released >= p + 1 (or kh_stop): the
 * vCPU stays parked inside KVM_RUN while another host thread works on the VM.
 */
extern uint32_t hammer_park_each_pass;
extern uint32_t hammer_released;

/*
 * Optional ROM reader: after each pass, read one word per page of
 * [hammer_rom_base, + hammer_rom_bytes) and check it.  A word is
 * HAMMER_ROM_WORD(offset) while the ROM memslot exists, or all-ones while it
 * is deleted (the access exits as MMIO and the host answers like an unmapped
 * PCI ROM BAR).  Anything else is a GUEST_ASSERT failure.
 */
extern uint64_t hammer_rom_base;	/* 0: no ROM reading */
extern uint64_t hammer_rom_bytes;
#define HAMMER_ROM_WORD(offset)	(0x524F4D0000000000ULL | (uint64_t)(offset))
#define HAMMER_ROM_ABSENT	(~0ULL)

/* Value written by pass p of vCPU v: lets the host check who wrote last. */
#define HAMMER_WRITE_VALUE(v, p)	(((uint64_t)(v) << 32) | ((uint64_t)(p) + 1))

/* Results (guest writes). */
extern uint64_t hammer_pass_tsc[KH_MAX_VCPUS][HAMMER_MAX_PASSES];
/*
 * The longest gap, in TSC cycles, between two consecutive page accesses of a
 * pass (the pass start counts as the first): how long the vCPU was held up at
 * once, e.g. by an exit or a zap that held mmu_lock.  Unordered rdtsc: a
 * stall worth reporting is far longer than the reordering window.
 */
extern uint64_t hammer_pass_max_gap[KH_MAX_VCPUS][HAMMER_MAX_PASSES];
/*
 * The TSC when each pass ended (the end of its hammer_pass_tsc interval): the
 * host maps it onto its own clock to draw the passes over time against the
 * memslot changes it made.
 */
extern uint64_t hammer_pass_end_tsc[KH_MAX_VCPUS][HAMMER_MAX_PASSES];
extern uint32_t hammer_passes_done[KH_MAX_VCPUS];
extern uint64_t hammer_checksum[KH_MAX_VCPUS];	/* read mode: sum of words read */
extern uint64_t hammer_rom_present[KH_MAX_VCPUS];	/* ROM words read with the pattern */
extern uint64_t hammer_rom_absent[KH_MAX_VCPUS];	/* ROM words read as all-ones */

#endif /* HAMMER_H */
