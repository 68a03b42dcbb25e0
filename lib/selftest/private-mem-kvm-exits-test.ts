/**
 * The kernel's tools/testing/selftests/kvm/x86/private_mem_kvm_exits_test.c
 * (https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/x86/private_mem_kvm_exits_test.c),
 * mirrored: one case per upstream function, same arguments, same expected results.
 *
 * Both functions make a KVM_X86_SW_PROTECTED_VM whose guest reads the page at 0xc0000000 over
 * and over, mark that page PRIVATE, and take away what a private access needs: the memslot
 * (deleted while the vCPU runs) or its guest_memfd (the memslot never had one). Either way
 * KVM_RUN must fail with EFAULT and a KVM_EXIT_MEMORY_FAULT naming exactly that page, flags
 * PRIVATE.
 *
 * Upstream's main() requires KVM_CAP_VM_TYPES to list SW_PROTECTED; here each case also names
 * the capability missing on a SW_PROTECTED VM when KVM_CAP_MEMORY_ATTRIBUTES there lacks PRIVATE
 * (upstream's vm_mem_set_private() would fail instead).
 *
 * Deviations in structure, not in checks: the guest is the `readpages` image in its endless
 * mode (a `movq` from the address in a loop, like guest_repeatedly_read()); the page is
 * reached through the boot helper's identity map (2 MiB pages over the first 4 GiB) rather than
 * one virt_map()ped 4 KiB page; and the one KVM_RUN is issued on the vCPU's own thread in both
 * cases (runAsync), so that the case's timeout can end a guest that never faults.
 *
 * Mirrored as of Linux 7.2.
 * @module
 */
import { MemoryAttribute, MemoryFaultFlag, MemslotFlag, VmType } from '../core/constants.js';
import type { VcpuExit } from '../kvm/exits.js';
import { check, checkEq, type CaseContext, type SelftestCase } from './harness.js';
import type { HostFacts } from './host.js';
import { GiB, selftestGuest, type SelftestGuest } from './guest.js';
import { anonymousRegion, swProtectedSkip } from './kvm-util.js';

const EXITS_TEST_GVA = 0xc0000000;
const EXITS_TEST_GPA = EXITS_TEST_GVA;
const EXITS_TEST_SIZE = 4096; // EXITS_TEST_NPAGES (1) pages
const EXITS_TEST_SLOT = 10;

/** The cases, in upstream's order. */
export function privateMemKvmExitsCases(host: HostFacts): SelftestCase[] {
  const skip = host.available ? swProtectedSkip(host, { attributes: true }) : undefined;
  const base = {
    group: 'private_mem_kvm_exits_test' as const, vmType: 'SW_PROTECTED',
    ...(skip !== undefined ? { skipReason: skip } : {}),
  };
  return [
    {
      ...base, name: 'private_mem_kvm_exits_test.test_private_access_memslot_deleted',
      source: 'test_private_access_memslot_deleted',
      summary: 'a guest reading a PRIVATE page whose guest_memfd memslot is deleted under it exits KVM_RUN with EFAULT, memory_fault gpa 0xc0000000 size 4096 flags PRIVATE',
      run: testPrivateAccessMemslotDeleted,
    },
    {
      ...base, name: 'private_mem_kvm_exits_test.test_private_access_memslot_not_private',
      source: 'test_private_access_memslot_not_private',
      summary: 'a guest reading a PRIVATE page whose memslot has no guest_memfd exits KVM_RUN with EFAULT, memory_fault gpa 0xc0000000 size 4096 flags PRIVATE',
      run: testPrivateAccessMemslotNotPrivate,
    },
  ];
}

/** vm_create_shape_with_one_vcpu(protected_vm_shape, &vcpu, guest_repeatedly_read). */
function protectedGuest(ctx: CaseContext): SelftestGuest {
  return selftestGuest(ctx, { vmType: VmType.SW_PROTECTED, identityMapSize: 4 * GiB });
}

/** run_vcpu_get_exit_reason()'s checks, then the test's four on the exit. */
function checkMemoryFault(exit: VcpuExit): void {
  check(exit.reason === 'memory_fault', `KVM_RUN should fail with EFAULT and exit KVM_EXIT_MEMORY_FAULT, got exit '${exit.reason}'`);
  checkEq(exit.errno, 'EFAULT', 'KVM_RUN errno');
  checkEq(exit.flags, MemoryFaultFlag.PRIVATE, 'memory_fault.flags');
  checkEq(exit.gpa, BigInt(EXITS_TEST_GPA), 'memory_fault.gpa');
  checkEq(exit.size, BigInt(EXITS_TEST_SIZE), 'memory_fault.size');
}

async function testPrivateAccessMemslotDeleted(ctx: CaseContext): Promise<void> {
  const guest = protectedGuest(ctx);
  const vcpu = guest.boot(0, 'readpages', [EXITS_TEST_GVA, 0]);
  const { vm } = guest;
  // vm_userspace_mem_region_add(ANONYMOUS, ..., KVM_MEM_GUEST_MEMFD): anonymous memory for the
  // shared side and a guest_memfd of the slot's size for the private side.
  const gmem = ctx.use(vm.createGuestMemfd({ size: EXITS_TEST_SIZE, flags: 0 }));
  vm.setUserMemoryRegion2({
    slot: EXITS_TEST_SLOT, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: EXITS_TEST_GPA, memorySize: EXITS_TEST_SIZE,
    userspaceAddr: anonymousRegion(ctx, EXITS_TEST_SIZE), guestMemfd: gmem,
  });
  vm.setMemoryAttributes(EXITS_TEST_GPA, EXITS_TEST_SIZE, MemoryAttribute.PRIVATE);

  // Upstream's thread runs the vCPU while the main thread deletes the slot at once.
  const run = vcpu.runAsync({ signal: ctx.signal });
  try {
    vm.deleteMemoryRegion(EXITS_TEST_SLOT);
  } catch (e) {
    // The guest never faults now: stop it before reporting the failed delete.
    vcpu.kick();
    await run.catch(() => undefined);
    throw e;
  }
  checkMemoryFault(await run);
}

async function testPrivateAccessMemslotNotPrivate(ctx: CaseContext): Promise<void> {
  const guest = protectedGuest(ctx);
  const vcpu = guest.boot(0, 'readpages', [EXITS_TEST_GVA, 0]);
  // A non-private memslot: flags 0, anonymous memory only.
  guest.vm.setUserMemoryRegion2({
    slot: EXITS_TEST_SLOT, flags: 0, guestPhysAddr: EXITS_TEST_GPA, memorySize: EXITS_TEST_SIZE,
    userspaceAddr: anonymousRegion(ctx, EXITS_TEST_SIZE),
  });
  guest.vm.setMemoryAttributes(EXITS_TEST_GPA, EXITS_TEST_SIZE, MemoryAttribute.PRIVATE);
  checkMemoryFault(await vcpu.runAsync({ signal: ctx.signal }));
}
