/*
 * spin: runs until the host stops it (a signal kicks the vCPU out of KVM_RUN), counting.
 *
 * Arguments (set by the host):
 *   RDI  guest address of a u64 counter
 *
 * What it does: forever `incq (%rdi)`, `pause`. Never exits by itself; no ucall, no stack use.
 * Position-independent; entry at offset 0.
 */
	.code64
	.text
start:
1:	incq (%rdi)
	pause
	jmp 1b
