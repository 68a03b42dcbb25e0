/**
 * Decoding kvm_run: why KVM_RUN returned, as a discriminated union on `reason`.
 *
 * The views an exit carries (`io.data`, `mmio.data`) point into the vCPU's shared kvm_run
 * mapping, without copying: they are valid until the vCPU runs again. Fill them to answer an
 * IN or an MMIO read; KVM completes the instruction with those bytes on the next run. A
 * hypercall's `ret` is the same kind of view: set `ret[0]` to answer it.
 * @module
 */
import {
  ExitReason, Hypercall, HypercallExitFlag, MapGpaRangeAttr, MemoryFaultFlag, PAGE_SIZE, exitReasonName,
} from '../core/constants.js';

/** Byte offsets in struct kvm_run (x86_64), checked against native/uapi/kvm.h by a test. */
export const RunLayout = {
  immediate_exit: 1,
  exit_reason: 8,
  'io.direction': 32, 'io.size': 33, 'io.port': 34, 'io.count': 36, 'io.data_offset': 40,
  'mmio.phys_addr': 32, 'mmio.data': 40, 'mmio.len': 48, 'mmio.is_write': 52,
  'fail_entry.hardware_entry_failure_reason': 32, 'fail_entry.cpu': 40,
  'internal.suberror': 32, 'internal.ndata': 36, 'internal.data': 40,
  'system_event.type': 32, 'system_event.ndata': 36, 'system_event.data': 40,
  'memory_fault.flags': 32, 'memory_fault.gpa': 40, 'memory_fault.size': 48,
  'hypercall.nr': 32, 'hypercall.args': 40, 'hypercall.ret': 88, 'hypercall.flags': 96,
  kvm_valid_regs: 288, kvm_dirty_regs: 296,
} as const;

interface ExitBase {
  /** The raw kvm_run.exit_reason (an {@link ExitReason} value). */
  exitReason: number;
}

/** KVM_EXIT_IO: the guest executed IN/OUT (or INS/OUTS) on a port. */
export interface IoExit extends ExitBase {
  reason: 'io';
  direction: 'in' | 'out';
  /** Bytes per element: 1, 2 or 4. */
  size: number;
  port: number;
  /** Elements (more than 1 for string I/O). */
  count: number;
  /** size * count bytes: what the guest wrote (out), or where to put what it reads (in). */
  data: Uint8Array;
}

/** KVM_EXIT_MMIO: a guest access to a guest-physical address that no memslot backs. */
export interface MmioExit extends ExitBase {
  reason: 'mmio';
  /** The guest-physical address accessed. */
  address: bigint;
  /** Bytes accessed (1 to 8). */
  length: number;
  isWrite: boolean;
  /** `length` bytes: the written value (write), or where to put the value read (read). */
  data: Uint8Array;
}

/** KVM_EXIT_HLT: the guest executed HLT with interrupts that KVM does not handle in-kernel. */
export interface HltExit extends ExitBase { reason: 'hlt' }

/** KVM_EXIT_SHUTDOWN: the vCPU triple-faulted (or the guest asked for a shutdown). */
export interface ShutdownExit extends ExitBase { reason: 'shutdown' }

/** KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest. */
export interface FailEntryExit extends ExitBase {
  reason: 'fail_entry';
  hardwareEntryFailureReason: bigint;
  cpu: number;
}

/** KVM_EXIT_INTERNAL_ERROR: KVM could not go on (e.g. an instruction it cannot emulate). */
export interface InternalErrorExit extends ExitBase {
  reason: 'internal_error';
  /** An InternalErrorSuberror value. */
  suberror: number;
  /** internal.data[0..ndata). */
  data: bigint[];
}

/** KVM_EXIT_SYSTEM_EVENT: the guest requested shutdown, reset, crash... */
export interface SystemEventExit extends ExitBase {
  reason: 'system_event';
  /** A SystemEventType value. */
  type: number;
  /** system_event.data[0..ndata). */
  data: bigint[];
}

/**
 * KVM_EXIT_MEMORY_FAULT: KVM could not resolve a guest access to guest_memfd-backed memory
 * (e.g. the gpa is private but the memory is not, or the guest_memfd is gone). KVM_RUN fails
 * with EFAULT (or EHWPOISON for poisoned memory) and fills this; the library reports it as an
 * exit, not an error. A VMM typically converts the range (`vm.convertMemory()`) and runs again.
 */
export interface MemoryFaultExit extends ExitBase {
  reason: 'memory_fault';
  /** Guest-physical address of the fault's first byte. */
  gpa: bigint;
  /** Bytes of the fault (a page, 4096, for a 4 KiB fault on x86). */
  size: bigint;
  /** MemoryFaultFlag bits. */
  flags: bigint;
  /** Whether MemoryFaultFlag.PRIVATE is set: the guest accessed the range as private. */
  private: boolean;
  /** The errno KVM_RUN failed with: 'EFAULT', or 'EHWPOISON' for memory with a hardware error. */
  errno: 'EFAULT' | 'EHWPOISON';
}

/**
 * KVM_EXIT_HYPERCALL: a hypercall the guest made (VMCALL/VMMCALL) that KVM forwards to userspace
 * because `vm.enableCap(Cap.EXIT_HYPERCALL, [1 << nr])` asked for it (today only
 * Hypercall.MAP_GPA_RANGE). Answer by setting `ret[0]` before running again: KVM puts it in the
 * guest's RAX (0 for success, or a negated HypercallError value as the guest sees it).
 */
export interface HypercallExit extends ExitBase {
  reason: 'hypercall';
  /** The hypercall number (a {@link Hypercall} value), from the guest's RAX. */
  nr: bigint;
  /** The six argument slots (for MAP_GPA_RANGE: gpa, pages, attributes, then unused). */
  args: bigint[];
  /** HypercallExitFlag bits. */
  flags: bigint;
  /** Whether HypercallExitFlag.LONG_MODE is set (a 64-bit guest; otherwise arguments are 32-bit). */
  longMode: boolean;
  /**
   * A one-element view of kvm_run.hypercall.ret in the vCPU's kvm_run page, valid until the next
   * run: set `ret[0]` to the answer (KVM presets 0).
   */
  ret: BigUint64Array;
}

/** A MAP_GPA_RANGE hypercall decoded by {@link mapGpaRange}. */
export interface MapGpaRange {
  /** Guest-physical address of the range's first byte. */
  gpa: bigint;
  /**
   * The range's length in bytes (the guest passes pages of 4 KiB): the exact product, so it
   * exceeds 2^64 - 1 when the guest's page count does (such a range is not valid; KVM answers
   * KVM_EINVAL to one that wraps), and `gpa + size` may pass 2^64.
   */
  size: bigint;
  /** The raw MapGpaRangeAttr bits (args[2], passed through by KVM unchecked). */
  attributes: bigint;
  /** Whether the guest asks for private memory (MapGpaRangeAttr.ENCRYPTED). */
  private: boolean;
  /** The page size the attributes name: 4096, 2 MiB or 1 GiB (4096 for an unknown value). */
  pageSize: number;
}

/**
 * KVM_RUN returned EINTR (KVM_EXIT_INTR): the run was stopped by `vcpu.kick()`, or a signal
 * arrived for the thread. Run again to continue the guest where it was.
 */
export interface IntrExit extends ExitBase { reason: 'intr' }

/** Any other exit reason, undecoded. */
export interface OtherExit extends ExitBase {
  reason: 'other';
  /** 'KVM_EXIT_DEBUG'..., or undefined for a number this library does not know. */
  name: string | undefined;
}

/** Why KVM_RUN came back: a union on `reason`. */
export type VcpuExit =
  | IoExit | MmioExit | HltExit | ShutdownExit | FailEntryExit | InternalErrorExit
  | SystemEventExit | MemoryFaultExit | HypercallExit | IntrExit | OtherExit;

/** The values of `VcpuExit['reason']`. */
export type ExitReasonName = VcpuExit['reason'];

const EINTR = 4;
const EFAULT = 14;
// KVM_RUN reports a memory fault with EFAULT or EHWPOISON, and only then is exit_reason valid:
// https://docs.kernel.org/virt/kvm/api.html#kvm-exit-memory-fault
const EHWPOISON = 133;
const PAGE_SZ_MASK = MapGpaRangeAttr.PAGE_SZ_2M | MapGpaRangeAttr.PAGE_SZ_1G;

/**
 * The conversion a KVM_HC_MAP_GPA_RANGE hypercall asks for, or undefined for any other exit or
 * hypercall number. The guest gives the length in 4 KiB pages (args[1]); `size` is in bytes.
 */
export function mapGpaRange(exit: VcpuExit): MapGpaRange | undefined {
  if (exit.reason !== 'hypercall' || exit.nr !== BigInt(Hypercall.MAP_GPA_RANGE)) return undefined;
  const attributes = exit.args[2] ?? 0n;
  const sz = attributes & PAGE_SZ_MASK;
  const pageSize = sz === MapGpaRangeAttr.PAGE_SZ_2M ? 2 << 20 : sz === MapGpaRangeAttr.PAGE_SZ_1G ? 1 << 30 : PAGE_SIZE;
  return {
    gpa: exit.args[0] ?? 0n,
    // Exact, not cut to 64 bits: a made-up page count must not shrink to a small, valid-looking size.
    size: (exit.args[1] ?? 0n) * BigInt(PAGE_SIZE),
    attributes,
    private: (attributes & MapGpaRangeAttr.ENCRYPTED) !== 0n,
    pageSize,
  };
}

function words(v: DataView, at: number, n: number): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < Math.min(n, 16); i++) out.push(v.getBigUint64(at + i * 8, true));
  return out;
}

/** Views into one vCPU's kvm_run kept from exit to exit (a port-I/O loop makes the same one). */
export interface ExitViews {
  io?: Uint8Array;
  hypercallRet?: BigUint64Array;
}

/**
 * Decodes the exit after KVM_RUN returned `status` (0 or its errno). Returns undefined when the
 * status is an error that is not an exit (the caller throws it).
 * @internal
 */
export function decodeExit(v: DataView, buffer: ArrayBuffer, status: number, views: ExitViews = {}): VcpuExit | undefined {
  const exitReason = v.getUint32(RunLayout.exit_reason, true);
  if (status === EINTR) return { reason: 'intr', exitReason };
  if ((status === EFAULT || status === EHWPOISON) && exitReason === ExitReason.MEMORY_FAULT) {
    const flags = v.getBigUint64(RunLayout['memory_fault.flags'], true);
    return {
      reason: 'memory_fault', exitReason, flags, private: (flags & MemoryFaultFlag.PRIVATE) !== 0n,
      gpa: v.getBigUint64(RunLayout['memory_fault.gpa'], true),
      size: v.getBigUint64(RunLayout['memory_fault.size'], true),
      errno: status === EFAULT ? 'EFAULT' : 'EHWPOISON',
    };
  }
  if (status !== 0) return undefined;
  switch (exitReason) {
    case ExitReason.IO: {
      const size = v.getUint8(RunLayout['io.size']);
      const count = v.getUint32(RunLayout['io.count'], true);
      const offset = Number(v.getBigUint64(RunLayout['io.data_offset'], true));
      const length = size * count;
      // The kernel's offset is trusted but checked: a view outside the mapping cannot be made.
      let data = views.io;
      if (data === undefined || data.byteOffset !== offset || data.length !== length) {
        data = offset + length <= buffer.byteLength ? new Uint8Array(buffer, offset, length) : new Uint8Array(0);
        views.io = data;
      }
      return {
        reason: 'io', exitReason, direction: v.getUint8(RunLayout['io.direction']) === 1 ? 'out' : 'in',
        size, port: v.getUint16(RunLayout['io.port'], true), count, data,
      };
    }
    case ExitReason.MMIO: {
      const length = Math.min(v.getUint32(RunLayout['mmio.len'], true), 8);
      return {
        reason: 'mmio', exitReason, address: v.getBigUint64(RunLayout['mmio.phys_addr'], true), length,
        isWrite: v.getUint8(RunLayout['mmio.is_write']) !== 0,
        data: new Uint8Array(buffer, RunLayout['mmio.data'], length),
      };
    }
    case ExitReason.HLT:
      return { reason: 'hlt', exitReason };
    case ExitReason.SHUTDOWN:
      return { reason: 'shutdown', exitReason };
    case ExitReason.FAIL_ENTRY:
      return {
        reason: 'fail_entry', exitReason,
        hardwareEntryFailureReason: v.getBigUint64(RunLayout['fail_entry.hardware_entry_failure_reason'], true),
        cpu: v.getUint32(RunLayout['fail_entry.cpu'], true),
      };
    case ExitReason.INTERNAL_ERROR:
      return {
        reason: 'internal_error', exitReason, suberror: v.getUint32(RunLayout['internal.suberror'], true),
        data: words(v, RunLayout['internal.data'], v.getUint32(RunLayout['internal.ndata'], true)),
      };
    case ExitReason.SYSTEM_EVENT:
      return {
        reason: 'system_event', exitReason, type: v.getUint32(RunLayout['system_event.type'], true),
        data: words(v, RunLayout['system_event.data'], v.getUint32(RunLayout['system_event.ndata'], true)),
      };
    case ExitReason.HYPERCALL: {
      const flags = v.getBigUint64(RunLayout['hypercall.flags'], true);
      let ret = views.hypercallRet;
      if (ret === undefined || ret.buffer !== buffer) {
        ret = new BigUint64Array(buffer, RunLayout['hypercall.ret'], 1);
        views.hypercallRet = ret;
      }
      return {
        reason: 'hypercall', exitReason, nr: v.getBigUint64(RunLayout['hypercall.nr'], true),
        args: words(v, RunLayout['hypercall.args'], 6), flags,
        longMode: (flags & HypercallExitFlag.LONG_MODE) !== 0n, ret,
      };
    }
    case ExitReason.INTR:
      return { reason: 'intr', exitReason };
    default:
      return { reason: 'other', exitReason, name: exitReasonName(exitReason) };
  }
}
