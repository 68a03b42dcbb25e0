/**
 * Named KVM constants (include/uapi/linux/kvm.h, Linux 6.18, x86_64). Call sites use these
 * names, never bare numbers.
 * @module
 */

/**
 * KVM_CAP_* capability numbers, for `kvm.checkExtension()` and `vm.checkExtension()`
 * (ioctl KVM_CHECK_EXTENSION). A value of 0 means "not supported"; some capabilities return
 * a count or a bitmask instead of 1.
 */
export const Cap = {
  /** KVM_CAP_IRQCHIP: in-kernel interrupt controller. */
  IRQCHIP: 0,
  /** KVM_CAP_HLT: HLT exits to userspace. */
  HLT: 1,
  /** KVM_CAP_USER_MEMORY: KVM_SET_USER_MEMORY_REGION. */
  USER_MEMORY: 3,
  /** KVM_CAP_NR_VCPUS: recommended maximum number of vCPUs. */
  NR_VCPUS: 9,
  /** KVM_CAP_NR_MEMSLOTS: number of memslots per address space. */
  NR_MEMSLOTS: 10,
  /** KVM_CAP_SYNC_MMU: guest memory follows host page-table changes. */
  SYNC_MMU: 16,
  /** KVM_CAP_MAX_VCPUS: hard maximum number of vCPUs. */
  MAX_VCPUS: 66,
  /** KVM_CAP_READONLY_MEM: KVM_MEM_READONLY memslots. */
  READONLY_MEM: 81,
  /** KVM_CAP_MULTI_ADDRESS_SPACE: number of memslot address spaces. */
  MULTI_ADDRESS_SPACE: 118,
  /** KVM_CAP_MAX_VCPU_ID: largest vCPU id + 1. */
  MAX_VCPU_ID: 128,
  /** KVM_CAP_IMMEDIATE_EXIT: kvm_run.immediate_exit. */
  IMMEDIATE_EXIT: 136,
  /**
   * KVM_CAP_EXIT_HYPERCALL: bitmask of hypercalls (1 << Hypercall.*) KVM can forward to userspace
   * as KVM_EXIT_HYPERCALL; enable with `vm.enableCap(Cap.EXIT_HYPERCALL, [mask])`.
   */
  EXIT_HYPERCALL: 201,
  /** KVM_CAP_USER_MEMORY2: KVM_SET_USER_MEMORY_REGION2. */
  USER_MEMORY2: 231,
  /** KVM_CAP_MEMORY_FAULT_INFO: KVM_EXIT_MEMORY_FAULT details. */
  MEMORY_FAULT_INFO: 232,
  /** KVM_CAP_MEMORY_ATTRIBUTES: bitmask of KVM_SET_MEMORY_ATTRIBUTES attributes (PRIVATE = 8). */
  MEMORY_ATTRIBUTES: 233,
  /** KVM_CAP_GUEST_MEMFD: KVM_CREATE_GUEST_MEMFD. */
  GUEST_MEMFD: 234,
  /** KVM_CAP_VM_TYPES: bitmask of supported VM types (1 << VmType.*). */
  VM_TYPES: 235,
  /** KVM_CAP_PRE_FAULT_MEMORY: KVM_PRE_FAULT_MEMORY. */
  PRE_FAULT_MEMORY: 236,
  /** KVM_CAP_GUEST_MEMFD_FLAGS: bitmask of GuestMemfdFlag values this VM accepts. */
  GUEST_MEMFD_FLAGS: 244,
} as const;

/** The name of a {@link Cap} entry. */
export type CapName = keyof typeof Cap;

/**
 * Flags for `vm.createGuestMemfd()` (struct kvm_create_guest_memfd.flags, a u64, so the
 * values are bigints: `gmem.flags & GuestMemfdFlag.MMAP` works directly).
 */
export const GuestMemfdFlag = {
  /** GUEST_MEMFD_FLAG_MMAP: the file can be mmap()ed by the host (Linux 6.18). */
  MMAP: 1n << 0n,
  /** GUEST_MEMFD_FLAG_INIT_SHARED: memory starts shared with the host, not private (Linux 6.18). */
  INIT_SHARED: 1n << 1n,
} as const;

/** Memslot flags (struct kvm_userspace_memory_region2.flags, a u32). */
export const MemslotFlag = {
  /** KVM_MEM_LOG_DIRTY_PAGES: track dirty pages in this slot. */
  LOG_DIRTY_PAGES: 1 << 0,
  /** KVM_MEM_READONLY: guest writes exit to userspace as MMIO. */
  READONLY: 1 << 1,
  /** KVM_MEM_GUEST_MEMFD: the slot's private memory comes from a guest_memfd. */
  GUEST_MEMFD: 1 << 2,
} as const;

/** VM types for `kvm.createVm(type)` (x86: KVM_X86_*_VM). Supported ones are bits of Cap.VM_TYPES. */
export const VmType = {
  /** KVM_X86_DEFAULT_VM: an ordinary VM. */
  DEFAULT: 0,
  /** KVM_X86_SW_PROTECTED_VM: software-protected VM (testing private memory without hardware). */
  SW_PROTECTED: 1,
  /** KVM_X86_SEV_VM. */
  SEV: 2,
  /** KVM_X86_SEV_ES_VM. */
  SEV_ES: 3,
  /** KVM_X86_SNP_VM. */
  SNP: 4,
  /** KVM_X86_TDX_VM. */
  TDX: 5,
} as const;

/** fallocate() modes used on guest_memfd (linux/falloc.h). */
export const FallocMode = {
  /** FALLOC_FL_KEEP_SIZE: guest_memfd requires it (mode 0 is refused with EOPNOTSUPP). */
  KEEP_SIZE: 0x01,
  /** FALLOC_FL_PUNCH_HOLE: must be combined with KEEP_SIZE. */
  PUNCH_HOLE: 0x02,
} as const;

/**
 * KVM_EXIT_* values of kvm_run.exit_reason: why KVM_RUN came back to userspace.
 * `vcpu.run()` decodes the common ones into a {@link VcpuExit}; the rest arrive as
 * `reason: 'other'` with the raw number.
 */
export const ExitReason = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, S390_SIEIC: 13, S390_RESET: 14,
  DCR: 15, NMI: 16, INTERNAL_ERROR: 17, OSI: 18, PAPR_HCALL: 19, S390_UCONTROL: 20, WATCHDOG: 21,
  S390_TSCH: 22, EPR: 23, SYSTEM_EVENT: 24, S390_STSI: 25, IOAPIC_EOI: 26, HYPERV: 27, ARM_NISV: 28,
  X86_RDMSR: 29, X86_WRMSR: 30, DIRTY_RING_FULL: 31, AP_RESET_HOLD: 32, X86_BUS_LOCK: 33, XEN: 34,
  RISCV_SBI: 35, RISCV_CSR: 36, NOTIFY: 37, LOONGARCH_IOCSR: 38, MEMORY_FAULT: 39, TDX: 40,
} as const;

/** The name of an exit reason number ('KVM_EXIT_IO'), or undefined for a number KVM does not define here. */
export function exitReasonName(n: number): string | undefined {
  for (const [name, v] of Object.entries(ExitReason)) if (v === n) return `KVM_EXIT_${name}`;
  return undefined;
}

/** kvm_run.memory_fault.flags bits (a u64). */
export const MemoryFaultFlag = {
  /** KVM_MEMORY_EXIT_FLAG_PRIVATE: the guest accessed the gpa as private memory. */
  PRIVATE: 1n << 3n,
} as const;

/**
 * Attributes for `vm.setMemoryAttributes()` (KVM_MEMORY_ATTRIBUTE_*, a u64 bitmask). A VM accepts
 * the bits its own KVM_CAP_MEMORY_ATTRIBUTES reports (ask the VM: /dev/kvm answers for all types).
 */
export const MemoryAttribute = {
  /** KVM_MEMORY_ATTRIBUTE_PRIVATE: the guest accesses the range as private (guest_memfd) memory. */
  PRIVATE: 1n << 3n,
} as const;

/** KVM_HC_* hypercall numbers (include/uapi/linux/kvm_para.h) that KVM can forward to userspace. */
export const Hypercall = {
  /** KVM_HC_MAP_GPA_RANGE: the guest asks to convert [gpa, gpa + npages * 4096) private or shared. */
  MAP_GPA_RANGE: 12,
} as const;

/** KVM_MAP_GPA_RANGE_* bits of a MAP_GPA_RANGE hypercall's attributes (args[2]). */
export const MapGpaRangeAttr = {
  /** KVM_MAP_GPA_RANGE_PAGE_SZ_4K: the guest maps with 4 KiB pages. */
  PAGE_SZ_4K: 0n,
  /** KVM_MAP_GPA_RANGE_PAGE_SZ_2M. */
  PAGE_SZ_2M: 1n << 0n,
  /** KVM_MAP_GPA_RANGE_PAGE_SZ_1G. */
  PAGE_SZ_1G: 1n << 1n,
  /** KVM_MAP_GPA_RANGE_ENCRYPTED: to private. */
  ENCRYPTED: 1n << 4n,
  /** KVM_MAP_GPA_RANGE_DECRYPTED: to shared (the ENCRYPTED bit clear). */
  DECRYPTED: 0n,
} as const;

/** kvm_run.hypercall.flags bits (a u64). */
export const HypercallExitFlag = {
  /** KVM_EXIT_HYPERCALL_LONG_MODE: the guest made the hypercall in 64-bit mode. */
  LONG_MODE: 1n << 0n,
} as const;

/**
 * KVM_E* codes (include/uapi/linux/kvm_para.h) a hypercall returns to the guest, negated in RAX;
 * an answer to a forwarded hypercall (`exit.ret[0]`) uses them the same way.
 */
export const HypercallError = {
  /** KVM_EPERM: the guest is not allowed (e.g. CPL > 0). */
  EPERM: 1,
  /** KVM_EINVAL: bad arguments (unaligned gpa, zero pages); also userspace's "not convertible". */
  EINVAL: 22,
  /** KVM_ENOSYS: the hypercall is not handled (not enabled for userspace). */
  ENOSYS: 1000,
} as const;

/** kvm_run.system_event.type values (KVM_SYSTEM_EVENT_*). */
export const SystemEventType = {
  SHUTDOWN: 1, RESET: 2, CRASH: 3, WAKEUP: 4, SUSPEND: 5, SEV_TERM: 6, TDX_FATAL: 7,
} as const;

/** kvm_run.internal.suberror values (KVM_INTERNAL_ERROR_*). */
export const InternalErrorSuberror = {
  /** KVM could not emulate an instruction. */
  EMULATION: 1,
  /** An exception was raised while delivering another one. */
  SIMUL_EX: 2,
  /** An exit while an event was being delivered. */
  DELIVERY_EV: 3,
  /** An exit reason KVM does not handle. */
  UNEXPECTED_EXIT_REASON: 4,
} as const;

/**
 * madvise(2) advice values (MADV_*, include/uapi/asm-generic/mman-common.h) for
 * `Mapping.advise()`. On a guest_memfd mapping the kernel decides what each means; e.g. COLLAPSE
 * is refused there (EINVAL) on kernels whose guest_memfd has no huge pages.
 */
export const Madvise = {
  /** MADV_NORMAL: no special treatment. */
  NORMAL: 0,
  /** MADV_RANDOM: expect random access (no read-ahead). */
  RANDOM: 1,
  /** MADV_SEQUENTIAL: expect sequential access. */
  SEQUENTIAL: 2,
  /** MADV_WILLNEED: expect access soon (read ahead). */
  WILLNEED: 3,
  /** MADV_DONTNEED: drop the range from this mapping; a shared file's data stays in the file. */
  DONTNEED: 4,
  /** MADV_REMOVE: free the range's backing store, like a punch-hole of the file. */
  REMOVE: 9,
  /** MADV_HUGEPAGE: allow transparent huge pages for the range. */
  HUGEPAGE: 14,
  /** MADV_NOHUGEPAGE: no transparent huge pages for the range. */
  NOHUGEPAGE: 15,
  /** MADV_POPULATE_READ: fault the range in readable now (EFAULT where it cannot be). */
  POPULATE_READ: 22,
  /** MADV_POPULATE_WRITE: fault the range in writable now (EFAULT where it cannot be). */
  POPULATE_WRITE: 23,
  /** MADV_COLLAPSE: collapse the range into transparent huge pages now, synchronously. */
  COLLAPSE: 25,
} as const;

/**
 * NUMA memory policy modes (MPOL_*, include/uapi/linux/mempolicy.h) for `Mapping.mbind()` and
 * what `Mapping.memPolicy()` reports.
 */
export const MemPolicy = {
  /** MPOL_DEFAULT: the thread's policy (with an empty nodemask). */
  DEFAULT: 0,
  /** MPOL_PREFERRED: allocate on the one node given, fall back to others. */
  PREFERRED: 1,
  /** MPOL_BIND: allocate only on the nodes given. */
  BIND: 2,
  /** MPOL_INTERLEAVE: spread pages over the nodes given. */
  INTERLEAVE: 3,
  /** MPOL_LOCAL: allocate on the node of the CPU that faults (with an empty nodemask). */
  LOCAL: 4,
} as const;

/** The host page size this library assumes (x86_64). */
export const PAGE_SIZE = 4096;

/** Names the set bits of `value` using `table` (unknown bits as hex). */
export function decodeBits(value: bigint | number, table: Record<string, bigint | number>): string[] {
  let rest = BigInt(value);
  const names: string[] = [];
  for (const [name, bit] of Object.entries(table)) {
    const b = BigInt(bit);
    if (b !== 0n && (rest & b) === b) {
      names.push(name);
      rest &= ~b;
    }
  }
  if (rest !== 0n) names.push(`0x${rest.toString(16)}`);
  return names;
}
