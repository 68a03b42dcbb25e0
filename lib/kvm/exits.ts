/**
 * Decoding kvm_run: why KVM_RUN returned, as a discriminated union on `reason`.
 *
 * The views an exit carries (`io.data`, `mmio.data`) point into the vCPU's shared kvm_run
 * mapping, without copying: they are valid until the vCPU runs again. Fill them to answer an
 * IN or an MMIO read; KVM completes the instruction with those bytes on the next run.
 * @module
 */
import { ExitReason, MemoryFaultFlag, exitReasonName } from '../core/constants.js';

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
 * with EFAULT and fills this; the library reports it as an exit, not an error.
 */
export interface MemoryFaultExit extends ExitBase {
  reason: 'memory_fault';
  gpa: bigint;
  size: bigint;
  /** MemoryFaultFlag bits. */
  flags: bigint;
  /** Whether MemoryFaultFlag.PRIVATE is set. */
  private: boolean;
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
  | SystemEventExit | MemoryFaultExit | IntrExit | OtherExit;

/** The values of `VcpuExit['reason']`. */
export type ExitReasonName = VcpuExit['reason'];

const EINTR = 4;
const EFAULT = 14;

function words(v: DataView, at: number, n: number): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < Math.min(n, 16); i++) out.push(v.getBigUint64(at + i * 8, true));
  return out;
}

/** Views into one vCPU's kvm_run kept from exit to exit (a port-I/O loop makes the same one). */
export interface ExitViews {
  io?: Uint8Array;
}

/**
 * Decodes the exit after KVM_RUN returned `status` (0 or its errno). Returns undefined when the
 * status is an error that is not an exit (the caller throws it).
 * @internal
 */
export function decodeExit(v: DataView, buffer: ArrayBuffer, status: number, views: ExitViews = {}): VcpuExit | undefined {
  const exitReason = v.getUint32(RunLayout.exit_reason, true);
  if (status === EINTR) return { reason: 'intr', exitReason };
  if (status === EFAULT && exitReason === ExitReason.MEMORY_FAULT) {
    const flags = v.getBigUint64(RunLayout['memory_fault.flags'], true);
    return {
      reason: 'memory_fault', exitReason, flags, private: (flags & MemoryFaultFlag.PRIVATE) !== 0n,
      gpa: v.getBigUint64(RunLayout['memory_fault.gpa'], true),
      size: v.getBigUint64(RunLayout['memory_fault.size'], true),
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
    case ExitReason.INTR:
      return { reason: 'intr', exitReason };
    default:
      return { reason: 'other', exitReason, name: exitReasonName(exitReason) };
  }
}
