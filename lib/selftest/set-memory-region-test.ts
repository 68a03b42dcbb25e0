/**
 * The kernel's tools/testing/selftests/kvm/set_memory_region_test.c
 * (https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/set_memory_region_test.c),
 * the guest_memfd checks, mirrored: one case per upstream function, same arguments, same expected results.
 *
 * Upstream runs test_add_private_memory_region() and the overlap test on a
 * KVM_X86_SW_PROTECTED_VM, and counts KVM_MEM_GUEST_MEMFD as a supported flag only when
 * KVM_CAP_MEMORY_ATTRIBUTES has PRIVATE: before Linux 6.18 only VMs with private memory took
 * guest_memfd memslots. Since 6.18 every VM type that supports guest_memfd takes them, which
 * KVM_CAP_GUEST_MEMFD asked on the VM reports (KVM's own check_memory_region_flags() uses the
 * same predicate). The cases use SW_PROTECTED when the host offers it, as upstream does, and
 * otherwise the default VM when that VM reports KVM_CAP_GUEST_MEMFD; each says which in a
 * diagnostic line.
 *
 * Mirrored as of Linux 7.2 (which added the file-range overlap checks). Upstream's other
 * functions (test_zero_memory_regions, test_mmio_during_vectoring, test_add_max_memory_regions,
 * test_move_memory_region, test_delete_memory_region) make no guest_memfd checks and are not
 * mirrored.
 * @module
 */
import { ftruncateSync } from 'node:fs';
import { Cap, MemslotFlag, VmType } from '../core/constants.js';
import { native } from '../core/native.js';
import type { Vm } from '../kvm/vm.js';
import { checkErrno, type CaseContext, type SelftestCase } from './harness.js';
import type { HostFacts, VmTypeFacts } from './host.js';

const MEM_REGION_SIZE = 0x200000;
const MEM_REGION_GPA = 0xc0000000;
const MEM_REGION_SLOT = 10;
/** KVM_MEMORY_ATTRIBUTE_PRIVATE. */
const ATTRIBUTE_PRIVATE = 1 << 3;

/** The VM type the guest_memfd memslot cases run on, or why there is none. */
function gmemVmType(host: HostFacts): { vt?: VmTypeFacts; why: string } {
  const sw = host.vmTypes.find((t) => t.type === VmType.SW_PROTECTED && t.createError === undefined);
  if (sw) return { vt: sw, why: 'KVM_X86_SW_PROTECTED_VM, as upstream (vm_create_barebones_protected_vm)' };
  const def = host.vmTypes.find((t) => t.type === VmType.DEFAULT && t.gmemMemslots);
  if (def) {
    return {
      vt: def,
      why: 'the default VM: the host offers no KVM_X86_SW_PROTECTED_VM, and its default VM takes guest_memfd memslots (KVM_CAP_GUEST_MEMFD = 1 on the VM, Linux 6.18+)',
    };
  }
  return { why: 'no VM type here takes guest_memfd memslots (no KVM_X86_SW_PROTECTED_VM, and KVM_CAP_GUEST_MEMFD is 0 on a default VM)' };
}

/** The cases, in upstream's order. */
export function setMemoryRegionCases(host: HostFacts): SelftestCase[] {
  const { vt, why } = gmemVmType(host);
  const gmemSkip = host.available && !vt ? { skipReason: why } : {};
  const onVm = (ctx: CaseContext) => {
    ctx.log(`VM type: ${why}`);
    return ctx.use(ctx.kvm.createVm(vt!.type));
  };
  return [
    {
      group: 'set_memory_region_test', name: 'set_memory_region_test.test_invalid_memory_region_flags',
      source: 'test_invalid_memory_region_flags',
      summary: 'v2-only and unsupported memslot flags refused (EINVAL); GUEST_MEMFD with LOG_DIRTY_PAGES or READONLY refused',
      run: (ctx) => testInvalidMemoryRegionFlags(ctx, host),
    },
    {
      group: 'set_memory_region_test', name: 'set_memory_region_test.test_add_private_memory_region',
      source: 'test_add_private_memory_region',
      summary: '/dev/kvm fd, VM fd, memfd, another VM\'s guest_memfd and offsets 1..page_size-1 refused as guest_memfd (EINVAL); own guest_memfd binds',
      run: (ctx) => testAddPrivateMemoryRegion(ctx, onVm(ctx), vt!.type),
      ...gmemSkip,
    },
    {
      group: 'set_memory_region_test', name: 'set_memory_region_test.test_add_overlapping_private_memory_regions',
      source: 'test_add_overlapping_private_memory_regions',
      summary: 'a guest_memfd memslot overlapping another slot\'s guest_memfd range (EEXIST since Linux 7.2, EINVAL before) or guest range (EEXIST), front or back, is refused',
      run: (ctx) => testAddOverlappingPrivateMemoryRegions(ctx, onVm(ctx)),
      ...gmemSkip,
    },
  ];
}

function testInvalidMemoryRegionFlags(ctx: CaseContext, host: HostFacts): void {
  const v2Only = MemslotFlag.GUEST_MEMFD;
  // x86 supports dirty logging and read-only memslots.
  let supported = MemslotFlag.LOG_DIRTY_PAGES | MemslotFlag.READONLY;
  // Upstream picks SW_PROTECTED when KVM_CAP_VM_TYPES lists it (and fails if it cannot be
  // created); here when a VM of that type could be created, else the default VM.
  const sw = host.vmTypes.some((t) => t.type === VmType.SW_PROTECTED && t.createError === undefined);
  const vm = ctx.use(ctx.kvm.createVm(sw ? VmType.SW_PROTECTED : VmType.DEFAULT));
  // Deviation: upstream counts GUEST_MEMFD as supported only when KVM_CAP_MEMORY_ATTRIBUTES has
  // PRIVATE (still so in 7.2). Since 6.18 check_memory_region_flags() accepts GUEST_MEMFD on
  // every VM when guest_memfd is built in, which KVM_CAP_GUEST_MEMFD on the VM reports (both
  // are CONFIG_KVM_GUEST_MEMFD; before 6.18 both were the VM's private-memory predicate). On a
  // host like this one (attributes 0, default VM takes guest_memfd) upstream instead expects
  // EINVAL from KVM_SET_USER_MEMORY_REGION2 with GUEST_MEMFD and guest_memfd 0, which the kernel
  // gives only because fd 0 is not a guest_memfd, and skips the two checks with a real
  // guest_memfd below. Counting the flag as the kernel does runs those two checks instead.
  const upstreamGate = (host.memoryAttributes & ATTRIBUTE_PRIVATE) !== 0;
  const vmGate = vm.checkExtension(Cap.GUEST_MEMFD) !== 0;
  if (upstreamGate || vmGate) supported |= MemslotFlag.GUEST_MEMFD;
  ctx.log(`VM type ${sw ? 'SW_PROTECTED' : 'DEFAULT'}; GUEST_MEMFD counted as supported: ${upstreamGate || vmGate} ` +
    `(KVM_CAP_MEMORY_ATTRIBUTES & PRIVATE = ${upstreamGate ? 1 : 0}, KVM_CAP_GUEST_MEMFD on the VM = ${vmGate ? 1 : 0})`);

  for (let i = 0; i < 32; i++) {
    const bit = (1 << i) >>> 0;
    if (supported & bit && !(v2Only & bit)) continue;
    checkErrno(() => vm.setUserMemoryRegion({ slot: 0, flags: bit, guestPhysAddr: 0, memorySize: MEM_REGION_SIZE, userspaceAddr: 0 }),
      'EINVAL', `KVM_SET_USER_MEMORY_REGION with v2-only or unsupported flag 0x${bit.toString(16)}`);
    if (supported & bit) continue;
    checkErrno(() => vm.setUserMemoryRegion2({ slot: 0, flags: bit, guestPhysAddr: 0, memorySize: MEM_REGION_SIZE, userspaceAddr: 0, guestMemfd: 0 }),
      'EINVAL', `KVM_SET_USER_MEMORY_REGION2 with unsupported flag 0x${bit.toString(16)}`);
  }
  if (supported & MemslotFlag.GUEST_MEMFD) {
    const gmem = ctx.use(vm.createGuestMemfd({ size: MEM_REGION_SIZE, flags: 0 }));
    checkErrno(() => vm.setUserMemoryRegion2({
      slot: 0, flags: MemslotFlag.LOG_DIRTY_PAGES | MemslotFlag.GUEST_MEMFD, guestPhysAddr: 0,
      memorySize: MEM_REGION_SIZE, userspaceAddr: 0, guestMemfd: gmem,
    }), 'EINVAL', 'KVM_SET_USER_MEMORY_REGION2 with LOG_DIRTY_PAGES|GUEST_MEMFD (dirty logging private memory)');
    checkErrno(() => vm.setUserMemoryRegion2({
      slot: 0, flags: MemslotFlag.READONLY | MemslotFlag.GUEST_MEMFD, guestPhysAddr: 0,
      memorySize: MEM_REGION_SIZE, userspaceAddr: 0, guestMemfd: gmem,
    }), 'EINVAL', 'KVM_SET_USER_MEMORY_REGION2 with READONLY|GUEST_MEMFD (read-only guest_memfd memslot)');
  }
}

/** test_invalid_guest_memfd(): binding `fd` at `offset` must fail with EINVAL. */
function invalidGuestMemfd(vm: Vm, fd: number, offset: number, what: string): void {
  checkErrno(() => vm.setUserMemoryRegion2({
    slot: MEM_REGION_SLOT, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: MEM_REGION_GPA,
    memorySize: MEM_REGION_SIZE, userspaceAddr: 0, guestMemfd: fd, guestMemfdOffset: offset,
  }), 'EINVAL', what);
}

function testAddPrivateMemoryRegion(ctx: CaseContext, vm: Vm, type: number): void {
  invalidGuestMemfd(vm, ctx.kvm.fd, 0, '/dev/kvm\'s fd as guest_memfd');
  invalidGuestMemfd(vm, vm.fd, 0, 'the VM\'s own fd as guest_memfd');
  // kvm_memfd_alloc(MEM_REGION_SIZE, false): a memfd of the region's size.
  const memfd = native.memfdCreate('kvm-gmem-selftest');
  try {
    ftruncateSync(memfd, MEM_REGION_SIZE);
    invalidGuestMemfd(vm, memfd, 0, 'a regular memfd as guest_memfd');
  } finally {
    native.close(memfd);
  }

  const vm2 = ctx.use(ctx.kvm.createVm(type));
  const other = ctx.use(vm2.createGuestMemfd({ size: MEM_REGION_SIZE, flags: 0 }));
  invalidGuestMemfd(vm, other.fd, 0, 'another VM\'s guest_memfd');
  // ...which binds to its own VM.
  vm2.setUserMemoryRegion2({
    slot: MEM_REGION_SLOT, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: MEM_REGION_GPA,
    memorySize: MEM_REGION_SIZE, userspaceAddr: 0, guestMemfd: other,
  });
  other.close();
  vm2.close();

  const gmem = ctx.use(vm.createGuestMemfd({ size: MEM_REGION_SIZE, flags: 0 }));
  for (let i = 1; i < ctx.pageSize; i++) invalidGuestMemfd(vm, gmem.fd, i, `unaligned guest_memfd offset 0x${i.toString(16)}`);
  vm.setUserMemoryRegion2({
    slot: MEM_REGION_SLOT, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: MEM_REGION_GPA,
    memorySize: MEM_REGION_SIZE, userspaceAddr: 0, guestMemfd: gmem,
  });
}

function testAddOverlappingPrivateMemoryRegions(ctx: CaseContext, vm: Vm): void {
  // Five regions, as upstream since Linux 7.2: the back-half file-overlap check binds file range
  // [3, 5) * MEM_REGION_SIZE, which must lie inside the file to reach the overlap check at all.
  const gmem = ctx.use(vm.createGuestMemfd({ size: MEM_REGION_SIZE * 5, flags: 0 }));
  const bind = (slot: number, gpa: number, size: number, offset: number) =>
    vm.setUserMemoryRegion2({
      slot, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: gpa, memorySize: size, userspaceAddr: 0,
      guestMemfd: gmem, guestMemfdOffset: offset,
    });
  bind(MEM_REGION_SLOT, MEM_REGION_GPA, MEM_REGION_SIZE * 2, 0);
  bind(MEM_REGION_SLOT + 1, MEM_REGION_GPA * 2, MEM_REGION_SIZE * 2, MEM_REGION_SIZE * 2);
  // Delete the first slot, then try to recreate it overlapping the second slot's binding.
  // (Upstream deletes with flags GUEST_MEMFD and fd -1; the kernel ignores both for a delete.)
  vm.deleteMemoryRegion(MEM_REGION_SLOT);

  // Overlap in the guest_memfd file only, the guest ranges disjoint: EEXIST, as upstream asserts
  // since Linux 7.2 made kvm_gmem_bind() say so (older kernels say EINVAL: an expectation entry).
  checkErrno(() => bind(MEM_REGION_SLOT, MEM_REGION_GPA, MEM_REGION_SIZE * 2, MEM_REGION_SIZE), 'EEXIST',
    'a binding overlapping the front half of the other slot\'s guest_memfd range (guest ranges disjoint)');
  checkErrno(() => bind(MEM_REGION_SLOT, MEM_REGION_GPA, MEM_REGION_SIZE * 2, MEM_REGION_SIZE * 3), 'EEXIST',
    'a binding overlapping the back half of the other slot\'s guest_memfd range (guest ranges disjoint)');

  // Overlap in the guest-physical space (file ranges disjoint): EEXIST on every kernel.
  checkErrno(() => bind(MEM_REGION_SLOT, MEM_REGION_GPA * 2 - MEM_REGION_SIZE, MEM_REGION_SIZE * 2, 0),
    'EEXIST', 'a binding overlapping the front half of the other slot\'s guest range');
  checkErrno(() => bind(MEM_REGION_SLOT, MEM_REGION_GPA * 2 + MEM_REGION_SIZE, MEM_REGION_SIZE * 2, 0),
    'EEXIST', 'a binding overlapping the back half of the other slot\'s guest range');
}
