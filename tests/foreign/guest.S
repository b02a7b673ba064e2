/*
 * A freestanding guest that does not link the kvmharness runtime, run with
 * Machine.foreign() (guests/ABI.md, "Foreign guests").  The host picks what it
 * does through `mode`; every path ends in HLT or a CPU exception.
 *
 * Entry: rdi = vCPU index, rsp = a harness stack, 64-bit mode, identity paging.
 */
	.text
	.globl	_start
	.type	_start, @function
_start:
	movq	$0x5eed, %r12		/* a marker the exception report must show */
	movl	mode(%rip), %eax
	cmpl	$1, %eax
	je	general_protection
	cmpl	$2, %eax
	je	page_fault
	cmpl	$3, %eax
	je	triple_fault
	cmpl	$4, %eax
	je	own_port
	/* mode 0: result[vcpu] = MAGIC + vcpu */
	movabsq	$0x600dc0de00000000, %rax
	addq	%rdi, %rax
	movq	%rax, result(,%rdi,8)
	hlt
general_protection:			/* mode 1: load from a non-canonical address */
	movabsq	$0x8000000000000000, %rbx
	movq	(%rbx), %rax
	hlt
page_fault:				/* mode 2: load from an unmapped address */
	movq	fault_addr(%rip), %rbx
	movq	(%rbx), %rax
	hlt
triple_fault:				/* mode 3: a #PF that cannot be delivered */
	lidt	null_idt(%rip)
	movq	fault_addr(%rip), %rbx
	movq	(%rbx), %rax
	hlt
own_port:				/* mode 4: the guest's own use of the stubs' port */
	outb	%al, $0xe5
	hlt
	.size	_start, . - _start

	.data
	.globl	mode, fault_addr, result
	.type	mode, @object
	.size	mode, 4
mode:	.long	0
	.p2align 3
	.type	fault_addr, @object
	.size	fault_addr, 8
fault_addr:
	.quad	0x140000000		/* 5 GiB: canonical, not mapped */
	.type	result, @object
	.size	result, 16
result:	.quad	0, 0
null_idt:
	.word	0
	.quad	0

	.section .note.GNU-stack, "", @progbits
