/**
 * kvm-gmem: the Linux KVM guest_memfd API for Node.js, on real /dev/kvm. This entry point holds
 * the kernel objects (Kvm, Vm, GuestMemfd, Vcpu), host memory (Mapping), errors and constants.
 * Guest programs are in `kvm-gmem/guest`, fd passing in `kvm-gmem/ipc`, host qualification in
 * `kvm-gmem/selftest`.
 *
 * ```ts
 * import { Kvm, GuestMemfdFlag } from 'kvm-gmem';
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * using gmem = vm.createGuestMemfd({ size: 1 << 20, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED });
 * using map = gmem.map();
 * vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: map, guestMemfd: gmem });
 * ```
 * @module
 */
export { Kvm, KVM_DEVICE } from './kvm/kvm.js';
export { Vm } from './kvm/vm.js';
export type {
  GuestMemfdOptions, MemoryRegion, MemoryRegion2, Memslot, UserspaceAddr, VmAdoptOptions, VcpuAdoptOptions,
  MemoryAttributeRange, GuestMemfdRange, ConvertMemoryOptions,
} from './kvm/vm.js';
export { GuestMemfd } from './kvm/guest-memfd.js';
export type { GuestMemfdStat, MapOptions, AdoptOptions } from './kvm/guest-memfd.js';
export { Vcpu } from './kvm/vcpu.js';
export type {
  RunAsyncOptions, GpaRange, PreFaultMemoryError, PreFaultMemoryOptions, PreFaultMemoryAsyncOptions,
} from './kvm/vcpu.js';
export { CpuidFlag, CPUID_ENTRY_SIZE, MAX_CPUID_ENTRIES } from './kvm/cpuid.js';
export type { CpuidEntry } from './kvm/cpuid.js';
export { RunLayout, mapGpaRange } from './kvm/exits.js';
export type {
  VcpuExit, ExitReasonName, IoExit, MmioExit, HltExit, ShutdownExit, FailEntryExit, InternalErrorExit,
  SystemEventExit, MemoryFaultExit, HypercallExit, MapGpaRange, IntrExit, OtherExit,
} from './kvm/exits.js';
export type { Regs, RegsInput, Sregs, Segment, DTable, Fpu } from './kvm/x86-state.js';
export { Mapping, MAX_MAPPING_LENGTH, MAX_LIVE_MAPPINGS } from './memory/mapping.js';
export type { MemoryPolicy, MbindOptions } from './memory/mapping.js';
export { fdKind, fdFacts, classifyFd, ANON_INODE_FS_MAGIC, GUEST_MEMFD_MAGIC } from './core/fd-identity.js';
export type { FdKind, FdFacts } from './core/fd-identity.js';
export { KvmError, KvmStateError, GuestMemoryFaultError, sigbusCodeName } from './core/errors.js';
export type {
  KvmErrorInfo, KvmStateCode, KvmArgCode, KvmArgError, KvmErrorCode, ErrnoCode, GuestMemoryFaultInfo,
} from './core/errors.js';
export {
  Cap, GuestMemfdFlag, MemslotFlag, VmType, FallocMode, PAGE_SIZE, decodeBits,
  ExitReason, exitReasonName, MemoryFaultFlag, SystemEventType, InternalErrorSuberror, Madvise, MemPolicy,
  MemoryAttribute, Hypercall, MapGpaRangeAttr, HypercallExitFlag, HypercallError,
} from './core/constants.js';
export type { CapName } from './core/constants.js';
