/*
 * upgrade: the guest of the live-upgrade experiment (lib/upgrade/). It fills its data region with
 * a pattern that depends on the address, then counts forever, checking in with the host every
 * `period` increments; on request it checks the region against the pattern. Everything it needs
 * to go on after a takeover is in its registers and in guest memory (no interrupts, no MSRs
 * beyond EFER, no FPU/SSE state, no MXCSR), so a VMM that copies the memory and restores
 * KVM_GET_REGS / KVM_GET_SREGS into a new VM resumes it where it stopped.
 *
 * Arguments (set by the host):
 *   RDI  data base: guest address of the region (4 KiB-aligned)
 *   RSI  data length in bytes (a multiple of 4096; 0 is allowed)
 *   RDX  seed
 *   RCX  guest address of the u64 counter (outside the region, the image and the stack)
 *   R8   period: increments between two tick SYNCs (0 is taken as 1)
 *   R9   fill: non-zero to fill the region first; 0 when the host wrote the pattern
 *
 * The pattern: every u64 of the 4 KiB page at guest address P holds P XOR seed. One value per
 * page, so that a page is filled with one `rep stosq` and checked with one `repe scasq`: guest
 * instructions are slow on an emulating host, string instructions much less so per byte.
 *
 * Calls (struct ucall; args[0] is a tag):
 *   SYNC (1 TICK, counter, period)                 every `period` increments
 *   SYNC (2 FILLED, pages filled, base, length)    after the fill
 *   SYNC (3 VERIFIED, pages checked, stride, base) after a check
 *   ABORT "upgrade: pattern mismatch" (address of the first bad u64, its value, expected value)
 *   ABORT "upgrade: counter lost" (the counter in memory, the guest's register copy)
 *   DONE                                           when asked to stop; then hlt forever
 * Before each SYNC the guest zeroes args[4] and args[5]; the host's reply goes there:
 *   args[5] = 0 go on counting; 1 check the region, every args[4]-th page (0 is taken as 1),
 *   then SYNC VERIFIED; 2 DONE and hlt forever. Any other value is taken as 0.
 *
 * The counter: each step increments the u64 in memory and a copy in RBP, then compares them; an
 * ABORT "upgrade: counter lost" means the registers and the memory came from different moments
 * (e.g. a takeover restored registers from one pause and memory from another). The step can be
 * interrupted between any two instructions and resumed in another VM: both are carried over.
 *
 * Needs a stack (RSP) for the ucall macros. Position-independent; entry at offset 0.
 *
 * Registers: R12 base, R13 length, R14 seed, R15 counter address, RBX period, RBP the counter's
 * register copy, R10 increments left until the next tick.
 */
#include "ucall.h"

#define TAG_TICK 1
#define TAG_FILLED 2
#define TAG_VERIFIED 3
#define OP_CONTINUE 0
#define OP_VERIFY 1
#define OP_DONE 2
#define PAGE_QWORDS 512
#define PAGE_SHIFT 12

	/* Zeroes the reply slots args[4] and args[5], then SYNC with three arguments. */
	.macro REQUEST a0:req, a1:req, a2:req, a3
	movq $0, (ucall_area + UCALL_OFF_ARGS + 4 * 8)(%rip)
	movq $0, (ucall_area + UCALL_OFF_ARGS + 5 * 8)(%rip)
	.ifnb \a3
	GUEST_SYNC4 \a0, \a1, \a2, \a3
	.else
	GUEST_SYNC3 \a0, \a1, \a2
	.endif
	.endm

	.code64
	.text
start:
	movq %rdi, %r12
	movq %rsi, %r13
	movq %rdx, %r14
	movq %rcx, %r15
	movq %r8, %rbx
	testq %rbx, %rbx
	jnz 1f
	movl $1, %ebx
1:	movq $0, (%r15)
	xorl %ebp, %ebp
	cld
	testq %r9, %r9
	jz count_start

	/* Fill: page by page, RAX = P ^ seed, 512 x stosq. R11 counts pages. */
	movq %r12, %r8
	leaq (%r12,%r13), %r9
	xorl %r11d, %r11d
2:	cmpq %r9, %r8
	jae 3f
	movq %r8, %rax
	xorq %r14, %rax
	movq %r8, %rdi
	movl $PAGE_QWORDS, %ecx
	rep stosq
	addq $(1 << PAGE_SHIFT), %r8
	incq %r11
	jmp 2b
3:	REQUEST $TAG_FILLED, %r11, %r12, %r13
	jmp reply

count_start:
	movq %rbx, %r10
count:
	incq (%r15)
	incq %rbp
	cmpq %rbp, (%r15)
	jne counter_lost
	decq %r10
	jnz count
	REQUEST $TAG_TICK, %rbp, %rbx
	/* fall through */

reply:
	movq (ucall_area + UCALL_OFF_ARGS + 5 * 8)(%rip), %rax
	cmpq $OP_VERIFY, %rax
	je verify
	cmpq $OP_DONE, %rax
	je done
	jmp count_start

	/* Check every stride-th page: RAX = P ^ seed, repe scasq over its 512 u64. R11 counts
	 * pages, RDX is the stride in bytes. */
verify:
	movq (ucall_area + UCALL_OFF_ARGS + 4 * 8)(%rip), %rdx
	testq %rdx, %rdx
	jnz 4f
	movl $1, %edx
4:	pushq %rdx                      /* the stride in pages, for the report */
	shlq $PAGE_SHIFT, %rdx
	movq %r12, %r8
	leaq (%r12,%r13), %r9
	xorl %r11d, %r11d
5:	cmpq %r9, %r8
	jae 6f
	movq %r8, %rax
	xorq %r14, %rax
	movq %r8, %rdi
	movl $PAGE_QWORDS, %ecx
	repe scasq
	jne mismatch
	addq %rdx, %r8
	incq %r11
	jmp 5b
6:	popq %rdx
	REQUEST $TAG_VERIFIED, %r11, %rdx, %r12
	jmp reply

mismatch:                               /* RDI is past the u64 that differs; RAX = expected */
	leaq -8(%rdi), %rdi
	movq (%rdi), %rsi
	GUEST_ABORT mismatch_text, %rdi, %rsi, %rax
	HALT_LOOP

counter_lost:
	movq (%r15), %rax
	GUEST_ABORT counter_text, %rax, %rbp
	HALT_LOOP

done:
	GUEST_DONE
	HALT_LOOP

mismatch_text:
	.asciz "upgrade: pattern mismatch"
counter_text:
	.asciz "upgrade: counter lost"

	UCALL_STRUCT
