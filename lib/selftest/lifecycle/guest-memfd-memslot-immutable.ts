/**
 * `lifecycle.guest_memfd_memslot_immutable`: kvm_gmem_bind() stores a binding's slot and file
 * offset once and nothing updates them, so KVM refuses any change to a guest_memfd memslot
 * (EINVAL: it can only be deleted; https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com).
 * Deleting is harmless to the data (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com), so
 * delete and re-add is the way to move.
 * @module
 */
import { MemslotFlag } from '../../core/constants.js';
import { Memtest } from '../guest.js';
import { checkBytes, checkErrno, type CaseContext } from '../harness.js';
import { checkUnbacked, GPA_A, GPA_B, guestWithGmem, hex, THREAD, U, type LifecycleCase } from './common.js';

/** The case. */
export const guestMemfdMemslotImmutable: LifecycleCase = {
  name: 'lifecycle.guest_memfd_memslot_immutable',
  source: `${THREAD.gmemReleaseAndBind}, ${THREAD.gmemPinsVm}`,
  summary: 'a guest_memfd memslot cannot be moved or have its flags changed (EINVAL); delete and re-add at the new address works and keeps the data',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const { guest, vm, gmem } = guestWithGmem(ctx, size);
  const m = ctx.use(gmem.map());
  const region = { slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem };
  vm.setUserMemoryRegion2(region);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: 0x6b });
  await mt.run();

  checkErrno(() => vm.setUserMemoryRegion2({ ...region, guestPhysAddr: GPA_B }), 'EINVAL', `moving slot 1 from ${hex(GPA_A)} to ${hex(GPA_B)}`);
  checkErrno(
    () => vm.setUserMemoryRegion2({ ...region, flags: MemslotFlag.GUEST_MEMFD | MemslotFlag.LOG_DIRTY_PAGES }),
    'EINVAL', 'adding LOG_DIRTY_PAGES to slot 1',
  );
  checkErrno(() => vm.setUserMemoryRegion2({ ...region, flags: 0 }), 'EINVAL', 'dropping GUEST_MEMFD from slot 1');
  checkErrno(() => vm.setUserMemoryRegion2(region), 'EINVAL', 'setting slot 1 again with the same values');
  ctx.log('refused with EINVAL: move, +LOG_DIRTY_PAGES, -GUEST_MEMFD, the same values again');

  // The refusals changed nothing: the slot still serves the old address, the new one is empty.
  await mt.run({ start: GPA_A, length: size, expect: 0x6b, fill: 0x6c });
  await checkUnbacked(ctx, mt, GPA_B, 'the address of the refused move');

  vm.deleteMemoryRegion(1);
  vm.setUserMemoryRegion2({ ...region, guestPhysAddr: GPA_B });
  await mt.run({ start: GPA_B, length: size, expect: 0x6c, fill: 0x6d });
  checkBytes(m.bytes, 0x6d, 'host view after the guest wrote at the new address');
  await checkUnbacked(ctx, mt, GPA_A, 'the old address after delete and re-add');
  await mt.finish();
}
