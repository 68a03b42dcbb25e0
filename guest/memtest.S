/*
 * memtest: check and fill guest memory, job after job: the guest side of the kernel's
 * guest_memfd_test (guest_code: check the host's pattern, write a new one, GUEST_SYNC),
 * generalised to any range and to a sequence of jobs handed over in ucall replies.
 *
 * Arguments (set by the host), the first job:
 *   RDI  start guest address of the range
 *   RSI  length of the range in bytes (0 is a valid job: nothing checked, nothing written)
 *   RDX  expected byte (low 8 bits used)
 *   RCX  fill byte (low 8 bits used)
 *
 * Each job:
 *   1. checks that every byte in [start, start + length) equals the expected byte. On the first
 *      byte that differs: UCALL_ABORT, msg "memtest: byte mismatch", nargs 3, args[0] = address
 *      of that byte, args[1] = its value, args[2] = the expected byte; then hlt forever (even if
 *      the host resumes the vCPU).
 *   2. fills the range with the fill byte;
 *   3. UCALL_SYNC, nargs 4, args = (start, length, expected, fill), expected and fill reduced
 *      to their low 8 bits.
 *   4. reads the host's reply from the same struct ucall: if args[4] != 0, UCALL_DONE and hlt
 *      forever; otherwise args[0..3] are the next job (start, length, expected, fill), same
 *      meaning as RDI, RSI, RDX, RCX above. The reply's nargs is ignored.
 *
 * The range must not overlap this image or the stack. Needs a stack (RSP) for the ucall
 * macros. Position-independent; entry at offset 0.
 *
 * Registers: R12 start, R13 length, R14 expected, R15 fill (the current job).
 */
#include "ucall.h"

	.code64
	.text
start:
	movq %rdi, %r12
	movq %rsi, %r13
	movq %rdx, %r14
	movq %rcx, %r15

job:
	movzbl %r14b, %r14d
	movzbl %r15b, %r15d

	/* Check: 8 bytes at a time against the expected byte repeated, then byte by byte for the
	 * tail, or from the first 8-byte block that differs (which finds the first bad byte). */
	movq %r12, %r8                  /* R8 = cursor */
	movq %r13, %r9                  /* R9 = bytes left */
	movabsq $0x0101010101010101, %r10
	imulq %r14, %r10                /* R10 = expected byte in all 8 lanes */
1:	cmpq $8, %r9
	jb 2f
	cmpq %r10, (%r8)
	jne 2f
	addq $8, %r8
	subq $8, %r9
	jmp 1b
2:	testq %r9, %r9
	jz fill
	movzbl (%r8), %eax
	cmpb %r14b, %al
	jne mismatch
	incq %r8
	decq %r9
	jmp 2b

fill:
	movq %r12, %rdi
	movq %r13, %rcx
	movl %r15d, %eax
	cld
	rep stosb

	GUEST_SYNC4 %r12, %r13, %r14, %r15

	/* The reply. */
	cmpq $0, (ucall_area + UCALL_OFF_ARGS + 4 * 8)(%rip)
	jne done
	movq (ucall_area + UCALL_OFF_ARGS + 0 * 8)(%rip), %r12
	movq (ucall_area + UCALL_OFF_ARGS + 1 * 8)(%rip), %r13
	movq (ucall_area + UCALL_OFF_ARGS + 2 * 8)(%rip), %r14
	movq (ucall_area + UCALL_OFF_ARGS + 3 * 8)(%rip), %r15
	jmp job

done:
	GUEST_DONE
	HALT_LOOP

mismatch:                               /* R8 = address, RAX = actual byte, R14 = expected */
	GUEST_ABORT mismatch_text, %r8, %rax, %r14
	HALT_LOOP

mismatch_text:
	.asciz "memtest: byte mismatch"

	UCALL_STRUCT
