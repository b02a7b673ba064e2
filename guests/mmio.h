/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mmio: time the guest-visible cost of one access, per access kind.
 *
 * For every kind whose bit is set in mmio_kinds (in enum order), the guest
 * runs mmio_rounds rounds; a round is mmio_accesses[kind] back-to-back
 * accesses to the single address mmio_addr[kind], bracketed by fenced rdtsc.
 * The round's total TSC delta goes to mmio_round_tsc[kind][round] (the host
 * divides by the access count).  After each round the guest reports
 * GUEST_SYNC(MMIO_SYNC_ROUND, kind, round, accesses), outside the timed
 * region, so the host can drain the coalesced ring and read the eventfd
 * between rounds.  vCPU 0 only: other vCPUs return at once.
 *
 * Reads check what they got: a round's values must sum to accesses times
 * MMIO_READ_VALUE(addr) (MMIO read) or MMIO_PIO_VALUE (PIO), otherwise a
 * GUEST_ASSERT fails; a harness that answers wrongly cannot report a time.
 */
#ifndef MMIO_H
#define MMIO_H

#include "kh.h"

enum mmio_kind {
	MMIO_KIND_PIO = 0,		/* inl from port mmio_addr[]: exits to userspace */
	MMIO_KIND_READ = 1,		/* 8-byte load from a GPA with no memslot */
	MMIO_KIND_WRITE = 2,		/* 8-byte store to a GPA with no memslot */
	MMIO_KIND_ROM_WRITE = 3,	/* 8-byte store into a KVM_MEM_READONLY slot */
	MMIO_KIND_IOEVENTFD = 4,	/* 8-byte store to an ioeventfd address: no exit */
	MMIO_KIND_COALESCED = 5,	/* 8-byte store into a coalesced-MMIO zone: no exit */
	MMIO_NR_KINDS = 6,
};

#define MMIO_MAX_ROUNDS		256
#define MMIO_SYNC_ROUND		0x4D4D	/* first SYNC value: "round finished" */

/* What the host answers, so the guest can check its reads. */
#define MMIO_READ_VALUE(addr)	(0x4D4D494F00000000ULL ^ (uint64_t)(addr))
#define MMIO_PIO_VALUE		0x50494F21U	/* "PIO!" */
/* Value of write i of round r: lets the host check order and completeness. */
#define MMIO_WRITE_VALUE(kind, round, i) \
	(((uint64_t)(kind) << 56) | ((uint64_t)(round) << 32) | (uint64_t)(i))

/* Parameters (host writes). */
extern uint32_t mmio_kinds;				/* bit k: run kind k */
extern uint32_t mmio_rounds;				/* 1 .. MMIO_MAX_ROUNDS */
extern uint64_t mmio_addr[MMIO_NR_KINDS];		/* GPA, or port for PIO */
extern uint64_t mmio_accesses[MMIO_NR_KINDS];		/* accesses per round, >= 1 */

/* Results (guest writes). */
extern uint64_t mmio_round_tsc[MMIO_NR_KINDS][MMIO_MAX_ROUNDS];
extern uint32_t mmio_rounds_done[MMIO_NR_KINDS];

#endif /* MMIO_H */
