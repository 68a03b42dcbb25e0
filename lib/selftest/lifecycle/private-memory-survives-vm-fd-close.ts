/**
 * `lifecycle.private_memory_survives_vm_fd_close`: a guest_memfd pins its VM ("anything created
 * in the scope of a VM _should_ pin the VM", https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com;
 * the kvm_put_kvm() in kvm_gmem_release(),
 * https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com), and so does a
 * vCPU. So closing the VM fd of a SW_PROTECTED VM while its vCPU and guest_memfd stay open ends
 * nothing: the vCPU runs again and the guest finds the private data it wrote, punch and allocate
 * on the guest_memfd still work and the guest sees their effect (zeroed pages), and with the vCPU
 * gone too the guest_memfd still punches and allocates all of itself (the tail of upstream's
 * private_mem_conversions_test: "guest_memfd is gifted a reference to its owning VM").
 * The private range is bound guest_memfd-only (flags 0, no userspace memory), as upstream's
 * private tests bind it; the host never sees the data, only the guest does.
 * @module
 */
import { existsSync } from 'node:fs';
import { MemoryAttribute, VmType } from '../../core/constants.js';
import { Memtest, selftestGuest } from '../guest.js';
import { check, checkEq, type CaseContext } from '../harness.js';
import { GPA_A, hex, range, THREAD, U, vmDebugfsDir, type LifecycleCase } from './common.js';

/** The case. */
export const privateMemorySurvivesVmFdClose: LifecycleCase = {
  name: 'lifecycle.private_memory_survives_vm_fd_close',
  source: `${THREAD.gmemPinsVm}, ${THREAD.gmemReleaseAndBind}`,
  summary: 'SW_PROTECTED: with the VM fd closed (vCPU and guest_memfd open) the guest still reads its private data, punch and allocate still work and show as zeros, and after the vCPU goes the guest_memfd punches and allocates all of itself',
  vmType: 'SW_PROTECTED',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const size = 4 * U;
  const page = ctx.pageSize;
  const first = 0xa7;
  const second = 0x7a;
  const guest = selftestGuest(ctx, { vmType: VmType.SW_PROTECTED });
  const vm = guest.vm;
  const gmem = ctx.use(vm.createGuestMemfd({ size }));
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: 0, guestMemfd: gmem });
  vm.setMemoryAttributes(GPA_A, size, MemoryAttribute.PRIVATE);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: first });
  await mt.run();
  // The VM's debugfs directory, when debugfs shows it: gone only once the VM is destroyed.
  const dir = vmDebugfsDir(vm);

  vm.close();
  ctx.log(`the guest wrote ${hex(first)} over its private range; closed the VM fd (the vCPU and the guest_memfd stay open)`);
  if (dir !== undefined) {
    check(existsSync(dir), `the VM's debugfs directory ${dir} went with the VM fd: the vCPU and the guest_memfd should keep the VM`);
    ctx.log(`${dir} is still there: the VM lives on`);
  }

  // The same vCPU runs again: the guest checks every byte it wrote and writes a new pattern.
  await mt.run({ start: GPA_A, length: size, expect: first, fill: second });
  ctx.log(`the guest read back ${hex(first)} over all ${size / page} private pages after the VM fd was closed`);

  // Punch and allocate still work; the guest sees zeroed private pages where they were.
  const punched = U; // punched then allocated again
  const hole = 3 * U + 5 * page; // punched only: the guest's access allocates it
  gmem.punchHole(punched, U);
  gmem.allocate(punched, U);
  gmem.punchHole(hole, page);
  checkEq(gmem.stat().size, BigInt(size), 'st_size after punch and allocate with the VM fd closed');
  await mt.run({ start: GPA_A + punched, length: U, expect: 0, fill: 0x5e });
  await mt.run({ start: GPA_A + hole, length: page, expect: 0, fill: 0x5f });
  await mt.run({ start: GPA_A, length: punched, expect: second, fill: second });
  await mt.run({ start: GPA_A + punched + U, length: hole - punched - U, expect: second, fill: second });
  await mt.run({ start: GPA_A + hole + page, length: size - hole - page, expect: second, fill: second });
  await mt.run({ start: GPA_A + punched, length: U, expect: 0x5e, fill: 0x5e });
  await mt.finish();
  ctx.log(`punched ${range(punched, U)} (then allocated) and ${range(hole, page)}: the guest read zeros there and its own data everywhere else`);

  // With the vCPU gone too, only the guest_memfd holds the VM: it still punches and allocates.
  mt.vcpu.close();
  gmem.punchHole(0, size);
  gmem.allocate(0, size);
  checkEq(gmem.stat().size, BigInt(size), 'st_size after the whole-file punch and allocate');
  if (dir !== undefined) check(existsSync(dir), `the VM's debugfs directory ${dir} went while the guest_memfd is open`);
  ctx.log('with the VM fd and the vCPU closed, the guest_memfd punched and allocated all of itself');
}
