/*
 * halt: hlt forever. With interrupts off each hlt exits to the host (KVM_EXIT_HLT, when the VM
 * has no in-kernel irqchip); resuming the vCPU halts it again.
 *
 * Arguments: none. Position-independent; entry at offset 0.
 */
	.code64
	.text
start:
1:	hlt
	jmp 1b
