// The runtime export surface of each entry point, pinned: adding or removing an export is a
// deliberate edit here (types and interfaces are not listed: they cost nothing at run time).
import { expectTypeOf } from 'vitest';
import type * as main from 'kvm-gmem';
import type * as guest from 'kvm-gmem/guest';
import type * as ipc from 'kvm-gmem/ipc';
import type * as selftest from 'kvm-gmem/selftest';

expectTypeOf<keyof typeof main>().toEqualTypeOf<
  | 'ANON_INODE_FS_MAGIC' | 'CPUID_ENTRY_SIZE' | 'Cap' | 'CpuidFlag' | 'ExitReason' | 'FallocMode'
  | 'GUEST_MEMFD_MAGIC' | 'GuestMemfd' | 'GuestMemfdFlag' | 'GuestMemoryFaultError' | 'InternalErrorSuberror'
  | 'KVM_DEVICE' | 'Kvm' | 'KvmError' | 'KvmStateError' | 'MAX_CPUID_ENTRIES' | 'MAX_LIVE_MAPPINGS'
  | 'MAX_MAPPING_LENGTH' | 'Madvise' | 'Mapping' | 'MemPolicy' | 'MemoryFaultFlag' | 'MemslotFlag' | 'PAGE_SIZE'
  | 'RunLayout' | 'SystemEventType' | 'Vcpu' | 'Vm' | 'VmType' | 'classifyFd' | 'decodeBits' | 'exitReasonName'
  | 'fdFacts' | 'fdKind' | 'sigbusCodeName'
  | 'Hypercall' | 'HypercallError' | 'HypercallExitFlag' | 'MapGpaRangeAttr' | 'MemoryAttribute' | 'mapGpaRange'
>();

expectTypeOf<keyof typeof guest>().toEqualTypeOf<
  | 'BENCH_PORT' | 'CONSOLE_PORT' | 'GuestAssertionError' | 'UCALL_MAX_ARGS' | 'UCALL_MSG_LEN' | 'UCALL_PORT'
  | 'UCALL_STRUCT_SIZE' | 'UcallCmd' | 'UcallOffset' | 'UnexpectedExitError' | 'X86' | 'bootGuest' | 'getUcall'
  | 'guestImage' | 'guestImageNames' | 'guestImagePath' | 'guestMemory' | 'loadImage' | 'pageTablesSize' | 'replyUcall'
  | 'runUntilUcall' | 'runUntilUcallSync' | 'setEntry' | 'setupLongMode'
>();

expectTypeOf<keyof typeof ipc>().toEqualTypeOf<
  'DEFAULT_SEND_TIMEOUT_MS' | 'FdChannel' | 'FdListener' | 'MAX_FDS' | 'MAX_PAYLOAD' | 'MAX_PAYLOAD_DEPTH'
>();

expectTypeOf<keyof typeof selftest>().toEqualTypeOf<
  | 'filterCases' | 'formatHostInfo' | 'hostInfo' | 'hostPaging' | 'loadExpectations' | 'numaNodes'
  | 'parseExpectations' | 'planSelftests' | 'probeHost' | 'reportJson' | 'runSelftests'
>();
