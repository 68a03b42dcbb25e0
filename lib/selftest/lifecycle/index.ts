/**
 * The lifecycle group: what happens to guest_memfd memory, its memslots and its VM as each of
 * them is closed, deleted, re-bound, punched or handed to another process, and, on a VM type with
 * private memory (SW_PROTECTED), what the host can see of private memory, how long it lives and
 * how its faults are reported. These cases mirror no
 * upstream selftest; each pins down a behaviour argued in the guest_memfd design threads (the
 * messages are in its `source`), as this library's users rely on it. One file per case.
 * @module
 */
import { VmType } from '../../core/constants.js';
import type { SelftestCase } from '../harness.js';
import type { HostFacts } from '../host.js';
import { closeGuestMemfdWhileBound } from './close-guest-memfd-while-bound.js';
import { privateMemoryMissing, SHARED, type LifecycleCase } from './common.js';
import { deleteMemslotKeepsData } from './delete-memslot-keeps-data.js';
import { guestMemfdBoundToOneVm } from './guest-memfd-bound-to-one-vm.js';
import { guestMemfdKeepsVmAlive } from './guest-memfd-keeps-vm-alive.js';
import { guestMemfdMemslotImmutable } from './guest-memfd-memslot-immutable.js';
import { memoryFaultNamesGpaSizePrivate } from './memory-fault-names-gpa-size-private.js';
import { overlappingGuestMemfdRanges } from './overlapping-guest-memfd-ranges.js';
import { privateMemoryGoneWithLastReference } from './private-memory-gone-with-last-reference.js';
import { privateMemoryNotHostMappable } from './private-memory-not-host-mappable.js';
import { privateMemorySurvivesVmFdClose } from './private-memory-survives-vm-fd-close.js';
import { punchAllocateWhileMappedAndBound } from './punch-allocate-while-mapped-and-bound.js';

/** The cases on shared guest_memfd memory of a default VM, in the order they run. */
const CASES: readonly LifecycleCase[] = [
  guestMemfdKeepsVmAlive,
  closeGuestMemfdWhileBound,
  guestMemfdBoundToOneVm,
  deleteMemslotKeepsData,
  overlappingGuestMemfdRanges,
  guestMemfdMemslotImmutable,
  punchAllocateWhileMappedAndBound,
];

/**
 * The private-memory cases (SW_PROTECTED VMs), in the order they run after those, each with
 * whether it needs GUEST_MEMFD_FLAG_MMAP on that VM type.
 */
const PRIVATE_CASES: readonly (readonly [LifecycleCase, boolean])[] = [
  [privateMemoryNotHostMappable, true],
  [privateMemorySurvivesVmFdClose, false],
  [privateMemoryGoneWithLastReference, true],
  [memoryFaultNamesGpaSizePrivate, true],
];

/** The lifecycle cases, given what the host offers. */
export function lifecycleCases(host: HostFacts): SelftestCase[] {
  const withSkip = (c: LifecycleCase, skipReason: string | undefined): SelftestCase =>
    ({ ...c, group: 'lifecycle', ...(skipReason !== undefined ? { skipReason } : {}) });
  const shared = sharedGmemMissing(host);
  return [
    ...CASES.map((c) => withSkip(c, shared)),
    ...PRIVATE_CASES.map(([c, needMmap]) => withSkip(c, privateMemoryMissing(host, needMmap))),
  ];
}

/**
 * Why these cases cannot run here: each maps guest_memfd memory into the host and runs a
 * default-type guest on it. undefined when they can (or when the host has no usable KVM at all,
 * which the harness reports itself).
 */
function sharedGmemMissing(host: HostFacts): string | undefined {
  if (!host.available) return undefined;
  const t = host.vmTypes.find((v) => v.type === VmType.DEFAULT);
  if (t === undefined) return 'the host reports no default VM type (KVM_CAP_VM_TYPES)';
  if (t.createError !== undefined) return `no default VM can be created: ${t.createError}`;
  if (!t.gmemMemslots) {
    return 'the default VM type does not accept KVM_MEM_GUEST_MEMFD memslots (KVM_CAP_GUEST_MEMFD = 0 on the VM; before Linux 6.18 only VM types with private memory did)';
  }
  if ((t.gmemFlags & SHARED) !== SHARED) {
    return `the default VM type does not offer GUEST_MEMFD_FLAG_MMAP|INIT_SHARED (KVM_CAP_GUEST_MEMFD_FLAGS = 0x${t.gmemFlags.toString(16)}): these cases map guest_memfd memory and run guests on it`;
  }
  return undefined;
}
