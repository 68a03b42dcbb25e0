/*
 * hello: the smallest complete guest program: console output, a computation on host-provided
 * data, a reply to the host, the end.
 *
 * Arguments (set by the host):
 *   RDI  guest address of a buffer the host filled (ignored when RSI is 0)
 *   RSI  length of that buffer in bytes (may be 0)
 *
 * What it does:
 *   1. writes "Hello from guest code on guest_memfd memory!\n" to CONSOLE_PORT (0xE9), one
 *      outb per byte;
 *   2. sums the RSI bytes at RDI (unsigned bytes, u64 sum) and reports
 *      UCALL_SYNC nargs 1, args[0] = the sum;
 *   3. writes "bye\n" to CONSOLE_PORT;
 *   4. UCALL_DONE, then hlt forever.
 *
 * Needs a stack (RSP) for the ucall macros. Position-independent; entry at offset 0.
 */
#include "ucall.h"

	.code64
	.text
start:
	CONSOLE_PUTS hello_text

	xorl %eax, %eax                 /* RAX = sum */
	testq %rsi, %rsi
	jz 2f
1:	movzbl (%rdi), %ecx
	addq %rcx, %rax
	incq %rdi
	decq %rsi
	jnz 1b
2:	GUEST_SYNC1 %rax

	CONSOLE_PUTS bye_text
	GUEST_DONE
	HALT_LOOP

hello_text:
	.asciz "Hello from guest code on guest_memfd memory!\n"
bye_text:
	.asciz "bye\n"

	UCALL_STRUCT
