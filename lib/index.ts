/**
 * kvm-gmem: the Linux KVM guest_memfd API for Node.js, on real /dev/kvm.
 *
 * ```ts
 * import { Kvm, GuestMemfdFlag, MemslotFlag } from 'kvm-gmem';
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * using gmem = vm.createGuestMemfd({ size: 1 << 20, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED });
 * using map = gmem.map();
 * vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: map, guestMemfd: gmem });
 * ```
 * @module
 */
export { Kvm, KVM_DEVICE } from './kvm.js';
export { Vm } from './vm.js';
export type { GuestMemfdOptions, MemoryRegion, MemoryRegion2, Memslot, UserspaceAddr } from './vm.js';
export { GuestMemfd } from './guest-memfd.js';
export { FdChannel, FdListener, MAX_FDS, MAX_PAYLOAD, MAX_PAYLOAD_DEPTH } from './fd-channel.js';
export { fdKind, fdFacts, classifyFd, ANON_INODE_FS_MAGIC, GUEST_MEMFD_MAGIC } from './fd-identity.js';
export type { FdKind, FdFacts } from './fd-identity.js';
export type {
  SendItem, SendOptions, ReceiveOptions, ConnectOptions, ListenOptions, AcceptOptions, FromFdOptions, ReceivedFd, ReceivedMessage,
} from './fd-channel.js';
export type { GuestMemfdStat } from './guest-memfd.js';
export type { MapOptions, AdoptOptions } from './guest-memfd.js';
export { Mapping, MAX_MAPPING_LENGTH, MAX_LIVE_MAPPINGS } from './mapping.js';
export type { MemoryPolicy, MbindOptions } from './mapping.js';
export { KvmError, KvmStateError, GuestMemoryFaultError, sigbusCodeName } from './errors.js';
export type { KvmErrorInfo, KvmStateCode, GuestMemoryFaultInfo } from './errors.js';
export {
  Cap, GuestMemfdFlag, MemslotFlag, VmType, FallocMode, PAGE_SIZE, decodeBits,
  ExitReason, exitReasonName, MemoryFaultFlag, SystemEventType, InternalErrorSuberror, Madvise, MemPolicy,
} from './constants.js';
export { Vcpu } from './vcpu.js';
export { CpuidFlag, CPUID_ENTRY_SIZE, MAX_CPUID_ENTRIES } from './cpuid.js';
export type { CpuidEntry } from './cpuid.js';
export type { RunAsyncOptions } from './vcpu.js';
export { RunLayout } from './exits.js';
export type {
  VcpuExit, ExitReasonName, IoExit, MmioExit, HltExit, ShutdownExit, FailEntryExit, InternalErrorExit,
  SystemEventExit, MemoryFaultExit, IntrExit, OtherExit,
} from './exits.js';
export type { Regs, RegsInput, Sregs, Segment, DTable, Fpu } from './x86-state.js';
export { X86, setupLongMode, loadImage, setEntry, bootGuest, pageTablesSize } from './x86.js';
export type { LongModeOptions, EntryOptions, BootOptions } from './x86.js';
export {
  guestImage, guestImageNames, guestImagePath, UCALL_PORT, CONSOLE_PORT, BENCH_PORT, UcallCmd,
  UCALL_STRUCT_SIZE, UcallOffset, UCALL_MAX_ARGS, UCALL_MSG_LEN,
} from './guest-images.js';
export type { GuestImageName } from './guest-images.js';
export {
  getUcall, replyUcall, runUntilUcall, runUntilUcallSync, GuestAssertionError, UnexpectedExitError,
} from './ucall.js';
export type { Ucall, UcallLoopOptions } from './ucall.js';
export type { CapName } from './constants.js';
export { hostInfo, formatHostInfo, hostPaging, numaNodes } from './info.js';
export {
  SelftestFailure, runCase, check, checkEq, checkErrno, checkBytes,
} from './selftest/harness.js';
export type { SelftestCase, SelftestGroup, CaseContext, CaseOutcome, CaseVerdict } from './selftest/harness.js';
export { probeHost } from './selftest/host.js';
export type { HostFacts, VmTypeFacts } from './selftest/host.js';
export { planSelftests, filterCases } from './selftest/plan.js';
export { runSelftests, reportJson } from './selftest/runner.js';
export type { RunOptions, RunReport, CaseReport } from './selftest/runner.js';
export { loadExpectations, parseExpectations } from './selftest/expect.js';
export type { Expectation, ExpectationFile } from './selftest/expect.js';
export type { CaseResult, Totals } from './selftest/ktap.js';
export type { HostInfo, CapabilityInfo, HostPaging } from './info.js';
