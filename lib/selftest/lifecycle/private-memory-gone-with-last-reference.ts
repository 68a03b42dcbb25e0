/**
 * `lifecycle.private_memory_gone_with_last_reference`: private memory does not outlive its last
 * reference. Allowing guest_memfd memory to outlive its VM is "very undesirable" for TDX and SNP
 * (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com); what holds it is the file, not the
 * VM fd: kvm_gmem_release() drops the VM, and the memory lives with the inode
 * (https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com); when the VM
 * dies "all memory can be freed" (https://lore.kernel.org/r/diqzr0pb2zws.fsf@ackerleytng-ctop.c.googlers.com).
 *
 * What it checks, on a SW_PROTECTED VM whose guest wrote a pattern into private memory and whose
 * guest_memfd (GUEST_MEMFD_FLAG_MMAP, so that a host mapping can hold it too) has 64 MiB
 * allocated, the references being dropped one by one (vCPU, VM fd, guest_memfd fd, and last the
 * host mapping of one page):
 * - the VM's debugfs directory (/sys/kernel/debug/kvm/<pid>-<vm fd>), which KVM removes when it
 *   destroys the VM, is there after each close but the last and gone right after the last;
 * - /proc/meminfo's Unevictable (guest_memfd's page cache is unevictable) rises by at least half
 *   of what is allocated across the fallocate() call, does not fall by that much across any close
 *   but the last, and falls by at least that much across the last (each reading paired with one
 *   taken just before, around that one call);
 * - a new SW_PROTECTED VM's fresh private memory of the same size reads as zeros, never the
 *   old pattern.
 * What it proves: the VM and the guest_memfd's pages are destroyed when, and only when, the
 * last reference to the file goes (a mapping counts), and the fresh private memory a new VM gets
 * then reads as zeros, not the old pattern. What it cannot prove: that the freed pages were cleared before reuse by anyone
 * else (the kernel clears guest_memfd pages when it hands them out, which the last check sees only
 * for the pages this VM happens to get), or anything about copies outside the page cache.
 * Unevictable is system-wide: an unrelated process pinning or releasing tens of MiB within the
 * same call could upset a reading (hence the paired readings and the half-size margins); and the
 * check counts on the kernel freeing the pages within the close (Linux 7.2 does). Without debugfs at
 * /sys/kernel/debug the case is a SKIP.
 * @module
 */
import { existsSync } from 'node:fs';
import { GuestMemfdFlag, MemoryAttribute, VmType } from '../../core/constants.js';
import { MiB, Memtest, selftestGuest } from '../guest.js';
import { check, type CaseContext } from '../harness.js';
import { GPA_A, hex, KVM_DEBUGFS, meminfo, THREAD, U, vmDebugfsDir, type LifecycleCase } from './common.js';

/** The case. */
export const privateMemoryGoneWithLastReference: LifecycleCase = {
  name: 'lifecycle.private_memory_gone_with_last_reference',
  source: `${THREAD.gmemPinsVm}, ${THREAD.gmemReleaseAndBind}, ${THREAD.gmemOutlivesVm}`,
  summary: 'SW_PROTECTED: the VM (its debugfs directory) and the guest_memfd\'s pages (meminfo Unevictable) go exactly when the last reference to the guest_memfd goes, and fresh private memory reads zeros',
  vmType: 'SW_PROTECTED',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  if (!existsSync(KVM_DEBUGFS)) {
    ctx.skip(`debugfs shows no ${KVM_DEBUGFS} (not mounted, or not readable): this case watches the VM's directory there`);
  }
  const bulk = 64 * MiB;
  const used = 2 * U;
  const pattern = 0xe1;
  const unevictable = (): number => {
    const v = meminfo('Unevictable');
    if (v === undefined) ctx.skip('/proc/meminfo has no Unevictable field: this case counts guest_memfd pages there');
    return v;
  };
  const mb = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;

  const guest = selftestGuest(ctx, { vmType: VmType.SW_PROTECTED });
  const vm = guest.vm;
  const dir = vmDebugfsDir(vm);
  check(dir !== undefined, `KVM made no debugfs directory ${KVM_DEBUGFS}/${process.pid}-${vm.fd} for the new VM`);
  const gmem = ctx.use(vm.createGuestMemfd({ size: bulk, flags: GuestMemfdFlag.MMAP }));
  const hold = ctx.use(gmem.map(bulk - ctx.pageSize, ctx.pageSize)); // a reference the host never touches
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: used, userspaceAddr: 0, guestMemfd: gmem });
  vm.setMemoryAttributes(GPA_A, used, MemoryAttribute.PRIVATE);

  // Unevictable is system-wide: each reading pairs with one taken right before, around a single
  // call, so that only that call (and whatever else ran in those microseconds) is measured.
  const before = unevictable();
  gmem.allocate(0, bulk);
  const allocated = unevictable();
  ctx.log(`Unevictable ${mb(before)} before, ${mb(allocated)} right after allocating ${mb(bulk)} of guest_memfd`);
  check(allocated - before >= bulk / 2, `Unevictable rose by ${mb(allocated - before)} for ${mb(bulk)} of guest_memfd allocated: expected at least half of it`);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: used, expect: 0, fill: pattern });
  await mt.run();
  await mt.finish();
  ctx.log(`the guest wrote ${hex(pattern)} over ${used / 1024} KiB of it (private)`);

  // Drop the references one by one: the VM and the memory stay until the last goes.
  const steps: [string, () => void][] = [
    ['the vCPU', () => mt.vcpu.close()],
    ['the VM fd', () => vm.close()],
    ['the guest_memfd fd (a host mapping of one page still holds the file)', () => gmem.close()],
  ];
  for (const [what, close] of steps) {
    const prior = unevictable();
    close();
    const now = unevictable();
    check(existsSync(dir), `the VM's debugfs directory ${dir} went when ${what} was closed, before the guest_memfd's last reference`);
    check(prior - now < bulk / 2, `Unevictable fell by ${mb(prior - now)} (to ${mb(now)}) when ${what} was closed, before the guest_memfd's last reference`);
    ctx.log(`closed ${what}: ${dir} still there, Unevictable ${mb(prior)} -> ${mb(now)}`);
  }
  const prior = unevictable();
  hold.close();
  const after = unevictable();
  check(!existsSync(dir), `the VM's debugfs directory ${dir} is still there after the guest_memfd's last reference (its last mapping) went`);
  check(prior - after >= bulk / 2, `Unevictable fell by ${mb(prior - after)} (to ${mb(after)}) when the guest_memfd's last reference went: expected at least ${mb(bulk / 2)}`);
  ctx.log(`closed the last mapping, the guest_memfd's last reference: ${dir} is gone, Unevictable ${mb(prior)} -> ${mb(after)}`);

  // Fresh private memory of a new VM reads as zeros: none of the old pattern.
  const guest2 = selftestGuest(ctx, { vmType: VmType.SW_PROTECTED });
  const gmem2 = ctx.use(guest2.vm.createGuestMemfd({ size: used }));
  guest2.vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: used, userspaceAddr: 0, guestMemfd: gmem2 });
  guest2.vm.setMemoryAttributes(GPA_A, used, MemoryAttribute.PRIVATE);
  const mt2 = new Memtest(guest2, 0, { start: GPA_A, length: used, expect: 0, fill: 0 });
  await mt2.run();
  await mt2.finish();
  ctx.log(`a new SW_PROTECTED VM's fresh private memory (${used / 1024} KiB) reads as zeros`);
}
