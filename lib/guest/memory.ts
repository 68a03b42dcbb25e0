/**
 * The host's view of guest-physical memory: what a VMM reads and writes to talk to its guest
 * (images, page tables, ucall structs), found through the memslots the Vm has set.
 * @module
 */
import { argRangeError } from '../core/errors.js';
import { u32, u64 } from '../core/numbers.js';
import type { Vm } from '../kvm/vm.js';

/**
 * The host's view of guest memory [gpa, gpa + length): a Uint8Array over the Mapping that backs
 * the memslot covering that range (no copy). Writes are seen by the guest at once, and the
 * guest's writes are seen here.
 * @throws RangeError if no memslot set with a Mapping as userspaceAddr covers the whole range;
 * KvmStateError (ERR_KVM_CLOSED / ERR_KVM_PRIVATE_MEMORY) from the Mapping
 */
export function guestMemory(vm: Vm, gpa: number | bigint, length: number): Uint8Array {
  const start = u64(gpa, 'gpa');
  const len = u32(length, 'length');
  for (const m of vm.memslots.values()) {
    if (!m.mapping || start < m.guestPhysAddr || start + BigInt(len) > m.guestPhysAddr + m.memorySize) continue;
    const at = Number(start - m.guestPhysAddr);
    return m.mapping.bytes.subarray(at, at + len);
  }
  throw argRangeError(
    `No memslot with a host Mapping covers guest memory [0x${start.toString(16)}, 0x${(start + BigInt(len)).toString(16)})`,
  );
}
