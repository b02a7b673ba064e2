/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Guest entry and exception stubs (guests/ABI.md).
 *
 * _start:  rdi = vCPU index, rsi = argument GPA, rsp set by the host
 *          (16-byte aligned minus 8, as after a call).
 * Stubs:   one per vector; the host points IDT entry N at kh_exception_stubs[N].
 */

	.section .text.entry, "ax"
	.globl	_start
	.type	_start, @function
_start:
	/* rdi/rsi are already guest_main's arguments. */
	xorl	%ebp, %ebp		/* terminate frame-pointer chains */
	pushq	%rbp			/* rsp is now 16-byte aligned before the call */
	andq	$-16, %rsp		/* ...even if the host got it wrong */
	call	guest_main
	call	kh_done			/* reports DONE; does not return */
1:	cli
	hlt
	jmp	1b
	.size	_start, . - _start

/*
 * Vectors for which the CPU pushes an error code: #DF(8) #TS(10) #NP(11)
 * #SS(12) #GP(13) #PF(14) #AC(17) #CP(21) #VC(29) #SX(30).  The other stubs
 * push a 0 so every frame has the same layout.
 */
	.macro	KH_STUB vec
	.p2align 4
kh_stub_\vec:
	.if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$\vec
	jmp	kh_exception_common
	.endm

	.text
	.p2align 4
	/* Two nested .irp over hex digits give the 256 vectors without .altmacro. */
	.irp	hi, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
	.irp	lo, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
	KH_STUB	0x\hi\lo
	.endr
	.endr

/*
 * Frame on entry (low to high): vector, error code, rip, cs, rflags, rsp, ss.
 * Save the GPRs and CR2 below it to form struct kh_exc_frame (runtime.c) and
 * report; the exception is terminal for this vCPU, so nothing is restored.
 */
	.p2align 4
	.type	kh_exception_common, @function
kh_exception_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%cr2, %rax		/* read before anything else can fault */
	pushq	%rax
	cld				/* the C ABI assumes DF=0 */
	movq	%rsp, %rdi
	andq	$-16, %rsp
	call	kh_exception_report
2:	cli
	hlt
	jmp	2b
	.size	kh_exception_common, . - kh_exception_common

/* uint64_t kh_exception_stubs[256]: the host builds the IDT from this. */
	.section .rodata
	.p2align 3
	.globl	kh_exception_stubs
	.type	kh_exception_stubs, @object
kh_exception_stubs:
	.irp	hi, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
	.irp	lo, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
	.quad	kh_stub_0x\hi\lo
	.endr
	.endr
	.size	kh_exception_stubs, . - kh_exception_stubs

	.section .note.GNU-stack, "", @progbits
