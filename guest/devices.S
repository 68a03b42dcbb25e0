/*
 * devices: one exit of each I/O kind, for the host's exit decoding.
 *
 * Arguments (set by the host):
 *   RDI  a guest address that no memslot covers (so accesses there exit as MMIO)
 *
 * What it does:
 *   (a) `inl %dx, %eax` with DX = DEVICES_IN_PORT (0x11): a port IN of 4 bytes;
 *       UCALL_SYNC nargs 1, args[0] = EAX zero-extended (what the host answered);
 *   (b) `movq (%rdi), %rax`: an MMIO read of 8 bytes at RDI;
 *       UCALL_SYNC nargs 1, args[0] = RAX (what the host answered);
 *   (c) `movb $0x5a, (%rdi)`: an MMIO write of 1 byte (0x5a) at RDI, then
 *       `movl $0x12345678, 8(%rdi)`: an MMIO write of 4 bytes (78 56 34 12) at RDI + 8;
 *   (d) UCALL_DONE, then hlt forever.
 * Needs a stack (RSP) for the ucall macros. Position-independent; entry at offset 0.
 */
#include "ucall.h"

#define DEVICES_IN_PORT 0x11

	.code64
	.text
start:
	movl $DEVICES_IN_PORT, %edx
	inl %dx, %eax                   /* writing EAX zero-extends into RAX */
	GUEST_SYNC1 %rax

	movq (%rdi), %rax
	GUEST_SYNC1 %rax

	movb $0x5a, (%rdi)
	movl $0x12345678, 8(%rdi)

	GUEST_DONE
	HALT_LOOP

	UCALL_STRUCT
