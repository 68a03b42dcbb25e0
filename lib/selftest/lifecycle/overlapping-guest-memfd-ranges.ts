/**
 * `lifecycle.overlapping_guest_memfd_ranges`: kvm_gmem_bind() records each binding in the file's
 * xarray over its page range and refuses a new one if any index in its range is taken
 * (https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com): one page of a
 * guest_memfd backs at most one gfn. Only the file range matters, so each refused slot gets a
 * guest-physical address of its own.
 * @module
 */
import { Memtest } from '../guest.js';
import { checkBytes, checkErrno, type CaseContext } from '../harness.js';
import {
  bindRange, GPA_A, GPA_B, GPA_C, guestWithGmem, hex, range, THREAD, U, type LifecycleCase,
} from './common.js';

/** The case. */
export const overlappingGuestMemfdRanges: LifecycleCase = {
  name: 'lifecycle.overlapping_guest_memfd_ranges',
  source: THREAD.gmemReleaseAndBind,
  summary: 'no two memslots bind overlapping ranges of one guest_memfd (EINVAL before Linux 7.2, EEXIST since, for every overlap shape); disjoint ranges bind and stay distinct',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const { guest, vm, gmem } = guestWithGmem(ctx, 8 * U);
  const all = ctx.use(gmem.map());
  // [2U, 4U) is bound at GPA_A.
  bindRange(ctx, vm, 1, GPA_A, gmem, 2 * U, 2 * U);
  const shapes: [string, number, number][] = [
    ['the same range', 2 * U, 2 * U],
    ['front overlap', 1 * U, 2 * U],
    ['back overlap', 3 * U, 2 * U],
    ['contained', 2 * U + U / 2, U],
    ['containing', 1 * U, 4 * U],
    ['one page at the start', 2 * U, ctx.pageSize],
    ['one page at the end', 4 * U - ctx.pageSize, ctx.pageSize],
  ];
  // EEXIST, Linux 7.2's answer (before it EINVAL: an expectation entry for those kernels).
  const fileCode = 'EEXIST';
  // All at GPA_B, each with a new slot id: a refused call that left a slot behind would turn the
  // next attempt into EEXIST.
  shapes.forEach(([what, off, len], i) => {
    const view = ctx.use(gmem.map(off, len));
    checkErrno(
      () => vm.setUserMemoryRegion2({
        slot: 2 + i, guestPhysAddr: GPA_B, memorySize: len, userspaceAddr: view, guestMemfd: gmem, guestMemfdOffset: off,
      }),
      fileCode, `${what}: ${range(off, len)} while ${range(2 * U, 2 * U)} is bound`,
    );
  });
  ctx.log(`refused with ${fileCode}: ${shapes.map(([w, o, l]) => `${w} ${range(o, l)}`).join(', ')}`);

  // Disjoint ranges bind, including the ones that touch the bound range at either end.
  bindRange(ctx, vm, 2, GPA_B, gmem, 0, 2 * U);
  bindRange(ctx, vm, 3, GPA_C, gmem, 4 * U, 2 * U);
  ctx.log(`bound: ${range(2 * U, 2 * U)} at ${hex(GPA_A)}, ${range(0, 2 * U)} at ${hex(GPA_B)}, ${range(4 * U, 2 * U)} at ${hex(GPA_C)}`);

  // And each slot reaches its own part of the file.
  const b = all.bytes;
  b.fill(0x01, 0, 2 * U);
  b.fill(0x02, 2 * U, 4 * U);
  b.fill(0x03, 4 * U, 6 * U);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: 2 * U, expect: 0x02, fill: 0x12 });
  await mt.run();
  await mt.run({ start: GPA_B, length: 2 * U, expect: 0x01, fill: 0x11 });
  await mt.run({ start: GPA_C, length: 2 * U, expect: 0x03, fill: 0x13 });
  await mt.finish();
  checkBytes(b.subarray(0, 2 * U), 0x11, `file range ${range(0, 2 * U)} after the guest wrote at ${hex(GPA_B)}`);
  checkBytes(b.subarray(2 * U, 4 * U), 0x12, `file range ${range(2 * U, 2 * U)} after the guest wrote at ${hex(GPA_A)}`, 2 * U);
  checkBytes(b.subarray(4 * U, 6 * U), 0x13, `file range ${range(4 * U, 2 * U)} after the guest wrote at ${hex(GPA_C)}`, 4 * U);
  checkBytes(b.subarray(6 * U), 0, `file range ${range(6 * U, 2 * U)}, bound nowhere`, 6 * U);
}
