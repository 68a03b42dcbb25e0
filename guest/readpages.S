/*
 * readpages: reads guest memory and nothing else: the guests of the kernel's
 * pre_fault_memory_test (one u64 from each page of a range, then done) and
 * x86/private_mem_kvm_exits_test (guest_repeatedly_read: one address, forever).
 *
 * Arguments (set by the host):
 *   RDI  guest address: the first page of the range, or the address read forever
 *   RSI  page count
 *
 * What it does:
 *   - RSI > 0: reads the u64 at RDI + i * 4096 for each i < RSI (loads only, into RAX), then
 *     UCALL_DONE (nargs 0) and hlt forever. Needs a stack (RSP) for the ucall.
 *   - RSI = 0: reads the u64 at RDI forever (`movq (%rdi), %rax` in a tight loop). Never exits
 *     by itself: a fault on the access (a memory_fault exit, a #PF into a triple fault) or a
 *     signal ends the run. No stack use, no ucall.
 *
 * It never writes guest memory outside its own struct ucall. Position-independent; entry at
 * offset 0.
 */
#include "ucall.h"

	.code64
	.text
start:
	testq %rsi, %rsi
	jz forever

1:	movq (%rdi), %rax
	addq $0x1000, %rdi
	decq %rsi
	jnz 1b

	GUEST_DONE
	HALT_LOOP

forever:
2:	movq (%rdi), %rax
	jmp 2b

	UCALL_STRUCT
