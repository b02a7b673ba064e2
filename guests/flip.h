/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * flip: check what a vCPU reads from a GPA range that the host keeps turning
 * from RAM (a memslot whose words hold FLIP_RAM_WORD) into MMIO (no memslot;
 * the host answers reads with FLIP_MMIO_WORD) and back.
 *
 * The host publishes where it is in that cycle in flip_seq, a word in guest
 * RAM that is always present.  Per toggle it stores, in this order:
 *   seq % 4 == 1  before the delete ioctl      (deleting: either word is fine)
 *   seq % 4 == 2  after the delete returned    (absent:   only the MMIO word)
 *   seq % 4 == 3  before the create ioctl      (creating: either word is fine)
 *   seq % 4 == 0  after the create returned    (present:  only the RAM word)
 * so seq / 4 counts completed toggles.  Each vCPU loops until kh_stop:
 *   s1 = seq (acquire); v = *gpa; s2 = seq;
 * A read with s1 == s2 in a stable state (present/absent) must see that
 * state's word; any read must see one of the two words for its GPA.  A miss
 * is a violation: counted, the first FLIP_LOG_MAX logged per vCPU, and the
 * guest carries on (the host turns violations into a FAIL).
 *
 * vCPU v reads the pages of [flip_base, + flip_pages * 4096) in turn,
 * starting at page v % flip_pages, one 8-byte word per page.
 */
#ifndef FLIP_H
#define FLIP_H

#include "kh.h"

#define FLIP_LOG_MAX		8
#define FLIP_PAGE_SIZE		4096

enum flip_state {
	FLIP_PRESENT = 0,	/* create returned, next delete not begun */
	FLIP_DELETING = 1,
	FLIP_ABSENT = 2,	/* delete returned, next create not begun */
	FLIP_CREATING = 3,
};

/* The two words a read of GPA @gpa may return (the range lies below 4 GiB). */
#define FLIP_RAM_WORD(gpa)	(0x52414D2100000000ULL | (uint64_t)(gpa))	/* "RAM!" */
#define FLIP_MMIO_WORD(gpa)	(0x4D4D494F00000000ULL | (uint64_t)(gpa))	/* "MMIO" */

struct flip_violation {
	uint64_t tsc;		/* guest rdtsc just after the read */
	uint64_t seq_before;	/* s1 */
	uint64_t seq_after;	/* s2 */
	uint64_t gpa;
	uint64_t value;
};

_Static_assert(sizeof(struct flip_violation) == 40, "host mirrors 5 x u64");

/* Parameters (host writes). */
extern volatile uint64_t flip_seq;	/* the host's slot-operation sequence word */
extern uint64_t flip_base;		/* GPA, page aligned, range below 4 GiB */
extern uint64_t flip_pages;		/* >= 1 */

/* Results (guest writes, per vCPU). */
extern uint64_t flip_start_tsc[KH_MAX_VCPUS];	/* rdtsc when the vCPU started reading */
extern uint64_t flip_reads[KH_MAX_VCPUS];	/* every read */
extern uint64_t flip_checked[KH_MAX_VCPUS];	/* reads with s1 == s2 in a stable state */
extern uint64_t flip_seen_ram[KH_MAX_VCPUS];	/* reads that returned FLIP_RAM_WORD */
extern uint64_t flip_seen_mmio[KH_MAX_VCPUS];	/* reads that returned FLIP_MMIO_WORD */
extern uint64_t flip_violations[KH_MAX_VCPUS];
extern struct flip_violation flip_log[KH_MAX_VCPUS][FLIP_LOG_MAX];

#endif /* FLIP_H */
