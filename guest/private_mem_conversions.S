/*
 * private_mem_conversions: the guest of the kernel's x86/private_mem_conversions_test
 * (guest_code), step for step: the explicit-conversion test without and with fallocate, then
 * the PUNCH_HOLE test imprecise and precise, then done.
 * https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/x86/private_mem_conversions_test.c
 *
 * Arguments (set by the host):
 *   RDI  base_gpa: this vCPU's data range [base_gpa, base_gpa + PER_CPU_DATA_SIZE), which must
 *        be mapped (guest virtual = guest physical) and covered by a guest_memfd memslot
 *   RSI  1: hypercalls with `vmmcall` (AMD and Hygon hosts), 0: with `vmcall` (Intel)
 *
 * Conversions are KVM_HC_MAP_GPA_RANGE hypercalls (nr 12): RAX = 12, RBX = gpa, RCX = pages,
 * RDX = flags, RSI = 0, with the test's own flag bits (KVM passes them through untouched):
 * MAP_SET_ATTRIBUTES (1), MAP_SHARED (2), MAP_DO_FALLOCATE (4). A result in RAX other than 0:
 * UCALL_ABORT, msg "private_mem_conversions: map_gpa_range failed", nargs 4, args = (RAX, gpa,
 * size in bytes, flags), then hlt forever (upstream: GUEST_ASSERT(!ret) in
 * kvm_hypercall_map_gpa_range). Without KVM_CAP_EXIT_HYPERCALL for nr 12 KVM answers
 * -KVM_ENOSYS (-1000) itself.
 *
 * Sync points (UCALL_SYNC), as upstream's guest_sync_shared / guest_sync_private:
 *   (SYNC_SHARED = 0, gpa, size, current pattern, new pattern): nargs 5; the host checks its
 *     view holds the current pattern, then writes the new one;
 *   (SYNC_PRIVATE = 1, gpa, size, pattern): nargs 4; the host checks its (shared) view still
 *     holds the pattern.
 * A byte the guest reads back wrong (upstream's memcmp_g): UCALL_ABORT, msg
 * "private_mem_conversions: byte mismatch", nargs 3, args = (address, actual byte, expected
 * byte), then hlt forever. At the end UCALL_DONE and hlt forever.
 *
 * Needs a stack (RSP): it calls its helpers. Position-independent; entry at offset 0.
 *
 * Registers: R15 base_gpa, R14 use_vmmcall, R13 fallocate flag (0 or MAP_DO_FALLOCATE) or
 * precise (0 or 1), R12 index into test_ranges, R11 gpa, R10 size, R9 j. The helpers clobber
 * RAX, RBX, RCX, RDX, RSI, RDI, R8 only.
 */
#include "ucall.h"

#define PAGE_SIZE 0x1000
#define SZ_2M 0x200000
#define PER_CPU_DATA_SIZE (SZ_2M+PAGE_SIZE)  /* no spaces: macro arguments split at them */
#define NR_TEST_RANGES 5

#define KVM_HC_MAP_GPA_RANGE 12
#define MAP_SET_ATTRIBUTES 1
#define MAP_SHARED 2
#define MAP_DO_FALLOCATE 4

#define SYNC_SHARED 0
#define SYNC_PRIVATE 1

/* Patterns, named as upstream's locals. */
#define DEF_P 0xaa
#define INIT_P 0xcc
#define P1 0x11
#define P2 0x22
#define P3 0x33
#define P4 0x44

	/* memset(\gpa, \pattern, \size): operands are registers or immediates. */
	.macro MEMSET gpa:req, pattern:req, size:req
	movq \gpa, %rdi
	movq \pattern, %rsi
	movq \size, %rdx
	call do_memset
	.endm

	/* memcmp_g(\gpa, \pattern, \size): aborts on the first byte that differs. */
	.macro MEMCMP gpa:req, pattern:req, size:req
	movq \gpa, %rdi
	movq \pattern, %rsi
	movq \size, %rdx
	call do_memcmp
	.endm

	/* kvm_hypercall_map_gpa_range(\gpa, \size, \flags), asserting a zero result. */
	.macro MAP_GPA gpa:req, size:req, flags:req
	movq \gpa, %rdi
	movq \size, %rsi
	movq \flags, %rdx
	call map_gpa_range
	.endm

	.code64
	.text
start:
	movq %rdi, %r15
	movq %rsi, %r14

	/* guest_code: explicit conversion without and with fallocate... */
	xorl %r13d, %r13d
	call explicit_conversion
	movl $MAP_DO_FALLOCATE, %r13d
	call explicit_conversion

	/* ...then PUNCH_HOLE with all of the range faulted in, and with only the target. */
	xorl %r13d, %r13d
	call punch_hole_test
	movl $1, %r13d
	call punch_hole_test

	GUEST_DONE
	HALT_LOOP

/*
 * guest_test_explicit_conversion(base_gpa = R15, do_fallocate = R13 != 0).
 */
explicit_conversion:
	/* Memory is shared by default: the host sees what the guest wrote, and the guest the host's. */
	MEMSET %r15, $DEF_P, $PER_CPU_DATA_SIZE
	MEMCMP %r15, $DEF_P, $PER_CPU_DATA_SIZE
	GUEST_SYNC5 $SYNC_SHARED, %r15, $PER_CPU_DATA_SIZE, $DEF_P, $INIT_P
	MEMCMP %r15, $INIT_P, $PER_CPU_DATA_SIZE

	xorl %r12d, %r12d
.Lec_range:
	call load_range                 /* R11 = gpa, R10 = size */

	/* Pattern one marks the test region apart from the rest (initial pattern). */
	MEMSET %r11, $P1, %r10

	/* To private (allocating guest_memfd with fallocate), then private data in it. */
	movq %r13, %rdx
	orq $MAP_SET_ATTRIBUTES, %rdx
	MAP_GPA %r11, %r10, %rdx

	cmpq $PAGE_SIZE, %r10
	jbe .Lec_small
	MEMSET %r11, $P2, $PAGE_SIZE
	jmp .Lec_skip

.Lec_small:
	MEMSET %r11, $P2, %r10
	GUEST_SYNC4 $SYNC_PRIVATE, %r11, %r10, $P1   /* the host still sees pattern one */

	/* The private data reads back; the shared rest still holds the initial pattern. */
	MEMCMP %r11, $P2, %r10
	cmpq %r15, %r11
	jbe 1f
	movq %r11, %rdx
	subq %r15, %rdx                 /* gpa - base_gpa */
	MEMCMP %r15, $INIT_P, %rdx
1:	leaq (%r11, %r10), %rdi         /* gpa + size */
	leaq PER_CPU_DATA_SIZE(%r15), %rdx
	cmpq %rdx, %rdi
	jae 2f
	subq %rdi, %rdx                 /* (base_gpa + PER_CPU_DATA_SIZE) - (gpa + size) */
	MEMCMP %rdi, $INIT_P, %rdx
2:

	/* Odd-numbered pages back to shared: holes in a private range. */
	xorl %r9d, %r9d
.Lec_page:
	cmpq %r10, %r9
	jae .Lec_skip
	leaq (%r11, %r9), %rbx          /* gpa + j */
	testq $PAGE_SIZE, %r9           /* (j >> PAGE_SHIFT) & 1 */
	jz .Lec_even
	movq %r13, %rdx
	orq $(MAP_SET_ATTRIBUTES | MAP_SHARED), %rdx
	MAP_GPA %rbx, $PAGE_SIZE, %rdx
	leaq (%r11, %r9), %rbx
	GUEST_SYNC5 $SYNC_SHARED, %rbx, $PAGE_SIZE, $P1, $P3
	MEMCMP %rbx, $P3, $PAGE_SIZE
	jmp .Lec_next_page
.Lec_even:
	GUEST_SYNC4 $SYNC_PRIVATE, %rbx, $PAGE_SIZE, $P1
.Lec_next_page:
	addq $PAGE_SIZE, %r9
	jmp .Lec_page

.Lec_skip:
	/* All of it back to shared; pattern three fills the even pages; the host writes four. */
	movq %r13, %rdx
	orq $(MAP_SET_ATTRIBUTES | MAP_SHARED), %rdx
	MAP_GPA %r11, %r10, %rdx
	MEMSET %r11, $P3, %r10
	GUEST_SYNC5 $SYNC_SHARED, %r11, %r10, $P3, $P4
	MEMCMP %r11, $P4, %r10

	/* Back to the initial pattern, and every private page freed: a clean slate. */
	MEMSET %r11, $INIT_P, %r10
	MAP_GPA %r15, $PER_CPU_DATA_SIZE, $(MAP_SET_ATTRIBUTES|MAP_SHARED|MAP_DO_FALLOCATE)

	incl %r12d
	cmpl $NR_TEST_RANGES, %r12d
	jb .Lec_range
	ret

/*
 * guest_test_punch_hole(base_gpa = R15, precise = R13 != 0): punching guest_memfd (flags
 * MAP_SHARED | MAP_DO_FALLOCATE, attributes untouched) frees private memory, which then reads
 * back as zeros.
 */
punch_hole_test:
	MAP_GPA %r15, $PER_CPU_DATA_SIZE, $MAP_SET_ATTRIBUTES   /* all private, no fallocate */

	xorl %r12d, %r12d
.Lph_range:
	call load_range                 /* R11 = gpa, R10 = size */

	/* Free everything first, even when it is all faulted back in below. */
	MAP_GPA %r15, $PER_CPU_DATA_SIZE, $(MAP_SHARED|MAP_DO_FALLOCATE)

	testq %r13, %r13
	jz .Lph_all
	MEMSET %r11, $INIT_P, %r10
	MEMCMP %r11, $INIT_P, %r10
	jmp .Lph_punch
.Lph_all:
	MEMSET %r15, $INIT_P, $PER_CPU_DATA_SIZE
	MEMCMP %r15, $INIT_P, $PER_CPU_DATA_SIZE

.Lph_punch:
	MAP_GPA %r11, %r10, $(MAP_SHARED|MAP_DO_FALLOCATE)
	MEMCMP %r11, $0, %r10

	incl %r12d
	cmpl $NR_TEST_RANGES, %r12d
	jb .Lph_range
	ret

/* R11 = base_gpa + test_ranges[R12].offset, R10 = test_ranges[R12].size. */
load_range:
	leaq test_ranges(%rip), %rax
	movl %r12d, %ecx
	shlq $4, %rcx
	movq (%rax, %rcx), %r11
	addq %r15, %r11
	movq 8(%rax, %rcx), %r10
	ret

/* memset(RDI, RSI (low byte), RDX bytes). */
do_memset:
	movl %esi, %eax
	movq %rdx, %rcx
	cld
	rep stosb
	ret

/*
 * memcmp_g(RDI, RSI (low byte), RDX bytes): 8 bytes at a time (`repe scasq`), then byte by byte
 * for the tail, or from the 8-byte block that differs, which finds the first bad byte.
 */
do_memcmp:
	movzbl %sil, %esi
	movabsq $0x0101010101010101, %rax
	imulq %rsi, %rax                /* the pattern in all 8 lanes */
	movq %rdx, %rcx
	shrq $3, %rcx
	andl $7, %edx                   /* RDX = tail bytes */
	cld
	jrcxz 2f
	repe scasq
	je 2f
	subq $8, %rdi                   /* back to the block that differs */
	movl $8, %edx
2:	testq %rdx, %rdx
	jz 3f
	movzbl (%rdi), %eax
	cmpl %esi, %eax
	jne mismatch
	incq %rdi
	decq %rdx
	jmp 2b
3:	ret

mismatch:                               /* RDI = address, RAX = actual byte, RSI = expected */
	GUEST_ABORT mismatch_text, %rdi, %rax, %rsi
	HALT_LOOP

/* kvm_hypercall_map_gpa_range(RDI = gpa, RSI = size in bytes, RDX = flags). */
map_gpa_range:
	movq %rdi, %rbx                 /* a0: gpa */
	movq %rsi, %rcx
	shrq $12, %rcx                  /* a1: pages */
	movq %rsi, %r8                  /* the size, for the abort */
	xorl %esi, %esi                 /* a3: 0; a2 (flags) is in RDX */
	movl $KVM_HC_MAP_GPA_RANGE, %eax
	testq %r14, %r14
	jnz 1f
	vmcall
	jmp 2f
1:	vmmcall
2:	testq %rax, %rax
	jnz map_failed
	ret

map_failed:                             /* RAX = result, RBX = gpa, R8 = size, RDX = flags */
	GUEST_ABORT map_failed_text, %rax, %rbx, %r8, %rdx
	HALT_LOOP

	.balign 16
test_ranges:                            /* (offset, size), as upstream's test_ranges[] */
	.quad 0, PAGE_SIZE
	.quad 0, SZ_2M
	.quad PAGE_SIZE, PAGE_SIZE
	.quad PAGE_SIZE, SZ_2M
	.quad SZ_2M, PAGE_SIZE

mismatch_text:
	.asciz "private_mem_conversions: byte mismatch"
map_failed_text:
	.asciz "private_mem_conversions: map_gpa_range failed"

	UCALL_STRUCT
