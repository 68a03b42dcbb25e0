/*
 * port_loop: the exit benchmark. A C program and the library both run this exact image and
 * count the exits, so it does nothing but the port writes (no ucall, no stack use).
 *
 * Arguments (set by the host):
 *   RDI  N, the number of port writes (u64; 0 is allowed)
 *
 * What it does: N times `outb %al, $BENCH_PORT` (port 0x10, 1 byte) with AL = the low byte of
 * the count still to go (N, N-1, ..., 1), then hlt forever. With N = 0 it goes straight to hlt.
 * Position-independent; entry at offset 0.
 */
#include "ucall.h"

	.code64
	.text
start:
	movq %rdi, %rcx                 /* RCX = writes still to go */
	testq %rcx, %rcx
	jz 2f
1:	movb %cl, %al
	outb %al, $BENCH_PORT
	decq %rcx
	jnz 1b
2:	hlt
	jmp 2b
