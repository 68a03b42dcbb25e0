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
export { Vm, VM_LINK } from './vm.js';
export type { GuestMemfdOptions, MemoryRegion, MemoryRegion2, Memslot, UserspaceAddr } from './vm.js';
export { GuestMemfd, GUEST_MEMFD_LINK } from './guest-memfd.js';
export type { GuestMemfdStat } from './guest-memfd.js';
export { Mapping, MAX_MAPPING_LENGTH } from './mapping.js';
export { KvmError, KvmStateError } from './errors.js';
export type { KvmErrorInfo, KvmStateCode } from './errors.js';
export { Cap, GuestMemfdFlag, MemslotFlag, VmType, FallocMode, PAGE_SIZE, decodeBits } from './constants.js';
export type { CapName } from './constants.js';
export { hostInfo, formatHostInfo } from './info.js';
export type { HostInfo, CapabilityInfo } from './info.js';
