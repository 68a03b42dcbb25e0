/**
 * `lifecycle.delete_memslot_keeps_data`: memslots are "weird page tables" whose deletion does not
 * touch the data, which is why zeroing or freeing guest_memfd memory on unbind (option (b)) was
 * rejected (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com). So the guest's bytes survive
 * the delete and show up wherever the same file range is bound next.
 * @module
 */
import { Memtest } from '../guest.js';
import { checkBytes, checkEq, type CaseContext } from '../harness.js';
import {
  bindRange, checkUnbacked, GPA_A, GPA_B, guestWithGmem, hex, range, THREAD, U, type LifecycleCase,
} from './common.js';

/** The case. */
export const deleteMemslotKeepsData: LifecycleCase = {
  name: 'lifecycle.delete_memslot_keeps_data',
  source: THREAD.gmemPinsVm,
  summary: 'deleting a guest_memfd memslot leaves the data: the same file range bound at another address shows the guest what it wrote',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const fileSize = 4 * U;
  const offset = 2 * U; // a range that does not start at 0, so the offset must be honoured too
  const len = 2 * U;
  const { guest, vm, gmem } = guestWithGmem(ctx, fileSize);
  const m = bindRange(ctx, vm, 1, GPA_A, gmem, offset, len);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: len, expect: 0, fill: 0xa5 });
  await mt.run();
  checkBytes(m.bytes, 0xa5, 'host view of the guest\'s pattern', offset);

  vm.deleteMemoryRegion(1);
  checkBytes(m.bytes, 0xa5, 'the guest\'s pattern after the memslot was deleted', offset);
  checkEq(gmem.stat().size, BigInt(fileSize), 'st_size after the memslot was deleted');
  await checkUnbacked(ctx, mt, GPA_A, 'the old address after the delete');

  vm.setUserMemoryRegion2({
    slot: 1, guestPhysAddr: GPA_B, memorySize: len, userspaceAddr: m, guestMemfd: gmem, guestMemfdOffset: offset,
  });
  await mt.run({ start: GPA_B, length: len, expect: 0xa5, fill: 0x5a });
  checkBytes(m.bytes, 0x5a, 'host view of the guest\'s write at the new address', offset);
  await mt.finish();
  ctx.log(`file range ${range(offset, len)}: written at ${hex(GPA_A)}, slot deleted, read back intact at ${hex(GPA_B)}`);
}
