/*
 * ucall.h: the guest -> host call convention of the kvm-gmem guest programs, for guest programs
 * written in GNU assembler (guest/<name>.S, preprocessed by the C compiler); a mirror of the
 * kernel KVM selftests' ucall:
 * https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/include/ucall_common.h?h=v6.18
 *
 * The #defines below are the ABI shared with the host; lib/guest-images.ts carries the same
 * numbers and test/guest-images.test.ts parses this file to check that they agree. Keep every
 * constant on one line of the form `#define NAME value`.
 *
 * A call: the guest fills a struct ucall in its own memory and executes
 *         out %eax, %dx        with DX = UCALL_PORT and EAX = guest address of the struct.
 * Guest memory is identity mapped, so that address is the struct's guest-physical address
 * (below 4 GiB). The host reads the struct, may write a reply into args[], and resumes the
 * vCPU; when the out instruction returns the guest may read args[] back.
 *
 * struct ucall (little endian, 8-byte aligned, UCALL_STRUCT_SIZE bytes):
 *         u64  cmd;                   @ UCALL_OFF_CMD      one of UCALL_NONE..UCALL_DONE
 *         u64  nargs;                 @ UCALL_OFF_NARGS    how many args[] the guest set
 *         u64  args[UCALL_MAX_ARGS];  @ UCALL_OFF_ARGS     arguments, and the host reply
 *         char msg[UCALL_MSG_LEN];    @ UCALL_OFF_MSG      NUL-terminated text (ABORT, PRINTF)
 */
#ifndef KVM_GMEM_GUEST_UCALL_H
#define KVM_GMEM_GUEST_UCALL_H

/* I/O ports. */
#define UCALL_PORT 0x1000    /* out %eax, %dx: EAX = guest address of a struct ucall */
#define CONSOLE_PORT 0xE9    /* outb: one byte of console text */
#define BENCH_PORT 0x10      /* outb: the benchmark's exit (port_loop) */

/* ucall commands (struct ucall.cmd). */
#define UCALL_NONE 0
#define UCALL_SYNC 1         /* a checkpoint: args carry values; the host may reply in args */
#define UCALL_ABORT 2        /* a guest assertion failed: msg says what, args carry values */
#define UCALL_PRINTF 3       /* msg is text to print */
#define UCALL_DONE 4         /* the guest finished */

/* struct ucall layout. */
#define UCALL_STRUCT_SIZE 192
#define UCALL_OFF_CMD 0
#define UCALL_OFF_NARGS 8
#define UCALL_OFF_ARGS 16
#define UCALL_OFF_MSG 64
#define UCALL_MAX_ARGS 6
#define UCALL_MSG_LEN 128

#ifdef __ASSEMBLER__
/*
 * Assembler macros, named after the kernel selftests' C macros (GUEST_SYNC, GUEST_DONE,
 * GUEST_PRINTF; GUEST_ABORT stands for the failure path of GUEST_ASSERT): the UCALL_* names are
 * taken by the constants above, and the preprocessor would substitute them. Every program that
 * makes ucalls places UCALL_STRUCT once (after its code); the other macros address that area
 * RIP-relative, so the image stays position-independent.
 *
 * Register use: every macro below preserves all general-purpose registers (it saves what it
 * uses on the stack and restores it) and clobbers only RFLAGS. They need the stack: up to 32
 * bytes below RSP. Argument operands (a0..a5) are 64-bit registers (%rax, %r8...) or
 * immediates that fit in a sign-extended 32 bits ($42); not memory operands. Arguments are
 * stored before any register is touched, so any register may be passed, %rax and %rdx too.
 * Labels inside the macros are local and unique (.L...\@), so they never capture the caller's
 * numeric labels (1:, 1b).
 */

	/* The one struct ucall of this program, labelled ucall_area, zero-filled, cache-line aligned
	 * (64 bytes) so that the guest's writes to it never share a line with code. */
	.macro UCALL_STRUCT
	.balign 64, 0
ucall_area:
	.skip UCALL_STRUCT_SIZE, 0
	.endm

	/* The trap itself: EAX = address of ucall_area, DX = UCALL_PORT, out. */
	.macro UCALL_OUT
	pushq %rax
	pushq %rdx
	leaq ucall_area(%rip), %rax
	movl $UCALL_PORT, %edx
	outl %eax, %dx
	popq %rdx
	popq %rax
	.endm

	/* Copies the NUL-terminated string at \label into msg, at most UCALL_MSG_LEN - 1 bytes,
	 * always NUL-terminated. */
	.macro UCALL_COPY_MSG label:req
	pushq %rax
	pushq %rcx
	pushq %rsi
	pushq %rdi
	leaq \label(%rip), %rsi
	leaq (ucall_area + UCALL_OFF_MSG)(%rip), %rdi
	movl $(UCALL_MSG_LEN - 1), %ecx
.Lucall_copy_\@:
	movb (%rsi), %al
	movb %al, (%rdi)
	testb %al, %al
	jz .Lucall_copied_\@
	incq %rsi
	incq %rdi
	decl %ecx
	jnz .Lucall_copy_\@
	movb $0, (%rdi)
.Lucall_copied_\@:
	popq %rdi
	popq %rsi
	popq %rcx
	popq %rax
	.endm

	/* Stores the given arguments into args[0..] and their count into nargs (the highest
	 * non-blank position + 1; blank arguments before it are left as they were). */
	.macro UCALL_SET_ARGS a0, a1, a2, a3, a4, a5
	.Lucall_nargs_\@ = 0
	.ifnb \a0
	movq \a0, (ucall_area + UCALL_OFF_ARGS + 0)(%rip)
	.Lucall_nargs_\@ = 1
	.endif
	.ifnb \a1
	movq \a1, (ucall_area + UCALL_OFF_ARGS + 8)(%rip)
	.Lucall_nargs_\@ = 2
	.endif
	.ifnb \a2
	movq \a2, (ucall_area + UCALL_OFF_ARGS + 16)(%rip)
	.Lucall_nargs_\@ = 3
	.endif
	.ifnb \a3
	movq \a3, (ucall_area + UCALL_OFF_ARGS + 24)(%rip)
	.Lucall_nargs_\@ = 4
	.endif
	.ifnb \a4
	movq \a4, (ucall_area + UCALL_OFF_ARGS + 32)(%rip)
	.Lucall_nargs_\@ = 5
	.endif
	.ifnb \a5
	movq \a5, (ucall_area + UCALL_OFF_ARGS + 40)(%rip)
	.Lucall_nargs_\@ = 6
	.endif
	movq $.Lucall_nargs_\@, (ucall_area + UCALL_OFF_NARGS)(%rip)
	.endm

	/* A ucall with command \cmd (a constant: UCALL_SYNC...) and up to six arguments. */
	.macro GUEST_UCALL cmd:req, a0, a1, a2, a3, a4, a5
	UCALL_SET_ARGS \a0, \a1, \a2, \a3, \a4, \a5
	movq $(\cmd), (ucall_area + UCALL_OFF_CMD)(%rip)
	UCALL_OUT
	.endm

	/* UCALL_SYNC with 0..6 arguments: GUEST_SYNC0, GUEST_SYNC1 %rax, GUEST_SYNC4 a, b, c, d... */
	.macro GUEST_SYNC0
	GUEST_UCALL UCALL_SYNC
	.endm
	.macro GUEST_SYNC1 a0:req
	GUEST_UCALL UCALL_SYNC, \a0
	.endm
	.macro GUEST_SYNC2 a0:req, a1:req
	GUEST_UCALL UCALL_SYNC, \a0, \a1
	.endm
	.macro GUEST_SYNC3 a0:req, a1:req, a2:req
	GUEST_UCALL UCALL_SYNC, \a0, \a1, \a2
	.endm
	.macro GUEST_SYNC4 a0:req, a1:req, a2:req, a3:req
	GUEST_UCALL UCALL_SYNC, \a0, \a1, \a2, \a3
	.endm
	.macro GUEST_SYNC5 a0:req, a1:req, a2:req, a3:req, a4:req
	GUEST_UCALL UCALL_SYNC, \a0, \a1, \a2, \a3, \a4
	.endm
	.macro GUEST_SYNC6 a0:req, a1:req, a2:req, a3:req, a4:req, a5:req
	GUEST_UCALL UCALL_SYNC, \a0, \a1, \a2, \a3, \a4, \a5
	.endm

	/* UCALL_DONE, nargs = 0. */
	.macro GUEST_DONE
	GUEST_UCALL UCALL_DONE
	.endm

	/* UCALL_ABORT: msg = the string at \label, args = up to six values (nargs = how many). */
	.macro GUEST_ABORT label:req, a0, a1, a2, a3, a4, a5
	UCALL_SET_ARGS \a0, \a1, \a2, \a3, \a4, \a5
	UCALL_COPY_MSG \label
	movq $UCALL_ABORT, (ucall_area + UCALL_OFF_CMD)(%rip)
	UCALL_OUT
	.endm

	/* UCALL_PRINTF: msg = the string at \label (plain text, no formatting), nargs = 0. */
	.macro GUEST_PRINTF label:req
	UCALL_SET_ARGS
	UCALL_COPY_MSG \label
	movq $UCALL_PRINTF, (ucall_area + UCALL_OFF_CMD)(%rip)
	UCALL_OUT
	.endm

	/* Writes the NUL-terminated string at \label to CONSOLE_PORT, one outb per byte. */
	.macro CONSOLE_PUTS label:req
	pushq %rax
	pushq %rdx
	pushq %rsi
	leaq \label(%rip), %rsi
	movl $CONSOLE_PORT, %edx
.Lconsole_next_\@:
	movb (%rsi), %al
	testb %al, %al
	jz .Lconsole_done_\@
	outb %al, %dx
	incq %rsi
	jmp .Lconsole_next_\@
.Lconsole_done_\@:
	popq %rsi
	popq %rdx
	popq %rax
	.endm

	/* hlt forever: the end of every program (with interrupts off, each hlt exits to the host;
	 * if the host resumes the vCPU it halts again). */
	.macro HALT_LOOP
.Lhalt_\@:
	hlt
	jmp .Lhalt_\@
	.endm

#endif /* __ASSEMBLER__ */
#endif /* KVM_GMEM_GUEST_UCALL_H */
