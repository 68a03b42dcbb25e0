// The exit decoder on kvm_run pages written by hand. These exits (memory_fault, internal_error,
// system_event, fail_entry, unknown numbers) cannot be provoked on this host's KVM, so this file
// checks only that each field is read from the offset native/uapi/kvm.h gives it; the exits KVM does
// produce here are decoded from real runs in guest.test.ts and run-async.test.ts. (The constants'
// values are checked against the system's kernel headers in uapi-constants.test.ts.)
import { describe, expect, it } from 'vitest';
import { ExitReason, MemoryFaultFlag, RunLayout } from '../lib/index.js';
import { decodeExit } from '../lib/kvm/exits.js';

function page(reason: number, fill: (v: DataView) => void): { v: DataView; b: ArrayBuffer } {
  const b = new ArrayBuffer(3 * 4096);
  const v = new DataView(b);
  v.setUint32(RunLayout.exit_reason, reason, true);
  fill(v);
  return { v, b };
}

describe('decodeExit (hand-written kvm_run pages)', () => {
  it('reads memory_fault from an EFAULT return, and treats EFAULT without it as an error', () => {
    const { v, b } = page(ExitReason.MEMORY_FAULT, (v) => {
      v.setBigUint64(RunLayout['memory_fault.flags'], MemoryFaultFlag.PRIVATE, true);
      v.setBigUint64(RunLayout['memory_fault.gpa'], 0x40_0000n, true);
      v.setBigUint64(RunLayout['memory_fault.size'], 0x1000n, true);
    });
    expect(decodeExit(v, b, 14)).toEqual({
      reason: 'memory_fault', exitReason: ExitReason.MEMORY_FAULT, flags: MemoryFaultFlag.PRIVATE, private: true, gpa: 0x400000n, size: 0x1000n,
      errno: 'EFAULT',
    });
    // EHWPOISON (133) is the other errno a memory fault comes with.
    expect(decodeExit(v, b, 133)).toMatchObject({ reason: 'memory_fault', errno: 'EHWPOISON', gpa: 0x400000n });
    expect(decodeExit(v, b, 22)).toBeUndefined();
    const other = page(ExitReason.MMIO, () => {});
    expect(decodeExit(other.v, other.b, 14)).toBeUndefined();
  });

  it('reads internal_error, system_event and fail_entry with their data, capped at 16 words', () => {
    const ie = page(ExitReason.INTERNAL_ERROR, (v) => {
      v.setUint32(RunLayout['internal.suberror'], 1, true);
      v.setUint32(RunLayout['internal.ndata'], 99, true);
      for (let i = 0; i < 16; i++) v.setBigUint64(RunLayout['internal.data'] + 8 * i, BigInt(i + 1), true);
    });
    const d = decodeExit(ie.v, ie.b, 0);
    expect(d).toMatchObject({ reason: 'internal_error', suberror: 1 });
    expect((d as { data: bigint[] }).data).toHaveLength(16);
    const se = page(ExitReason.SYSTEM_EVENT, (v) => {
      v.setUint32(RunLayout['system_event.type'], 2, true);
      v.setUint32(RunLayout['system_event.ndata'], 1, true);
      v.setBigUint64(RunLayout['system_event.data'], 7n, true);
    });
    expect(decodeExit(se.v, se.b, 0)).toEqual({ reason: 'system_event', exitReason: ExitReason.SYSTEM_EVENT, type: 2, data: [7n] });
    const fe = page(ExitReason.FAIL_ENTRY, (v) => {
      v.setBigUint64(RunLayout['fail_entry.hardware_entry_failure_reason'], 33n, true);
      v.setUint32(RunLayout['fail_entry.cpu'], 1, true);
    });
    expect(decodeExit(fe.v, fe.b, 0)).toEqual({ reason: 'fail_entry', exitReason: ExitReason.FAIL_ENTRY, hardwareEntryFailureReason: 33n, cpu: 1 });
  });

  it('names other known exits, keeps unknown numbers raw, and never makes a view outside the page', () => {
    const dbg = page(ExitReason.DEBUG, () => {});
    expect(decodeExit(dbg.v, dbg.b, 0)).toEqual({ reason: 'other', exitReason: ExitReason.DEBUG, name: 'KVM_EXIT_DEBUG' });
    const odd = page(1234, () => {});
    expect(decodeExit(odd.v, odd.b, 0)).toEqual({ reason: 'other', exitReason: 1234, name: undefined });
    const io = page(ExitReason.IO, (v) => {
      v.setUint8(RunLayout['io.size'], 4);
      v.setUint32(RunLayout['io.count'], 10, true);
      v.setBigUint64(RunLayout['io.data_offset'], 3n * 4096n - 8n, true); // would run past the end
    });
    expect(decodeExit(io.v, io.b, 0)).toMatchObject({ reason: 'io', direction: 'in', count: 10, data: new Uint8Array(0) });
  });
});
