/*
 * fault: an invalid opcode. With no IDT (the host sets none) the #UD cannot be delivered, the
 * CPU escalates to a double fault and then a triple fault: the host sees KVM_EXIT_SHUTDOWN.
 *
 * Arguments: none. Position-independent; entry at offset 0.
 */
	.code64
	.text
start:
	ud2
1:	hlt                             /* not reached when there is no IDT */
	jmp 1b
