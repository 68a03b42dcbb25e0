/*
 * rendezvous: two vCPUs that finish only if they run at the same time.
 *
 * Arguments (set by the host):
 *   RDI  guest address of my flag (u64)
 *   RSI  guest address of the peer's flag (u64)
 *
 * What it does: stores 1 to my flag, spins (with pause) until the peer's flag is non-zero,
 * then UCALL_DONE and hlt forever. Two vCPUs run it with the flags swapped. They may share one
 * loaded copy of the image: both write the same bytes into its struct ucall (cmd DONE, nargs 0).
 * Needs a stack (RSP) for the ucall macros. Position-independent; entry at offset 0.
 */
#include "ucall.h"

	.code64
	.text
start:
	movq $1, (%rdi)
1:	cmpq $0, (%rsi)
	jne 2f
	pause
	jmp 1b
2:	GUEST_DONE
	HALT_LOOP

	UCALL_STRUCT
