/**
 * `lifecycle.punch_allocate_while_mapped_and_bound`: fallocate(PUNCH_HOLE) is how userspace tells
 * KVM to drop guest_memfd memory (https://lore.kernel.org/r/diqzr0pb2zws.fsf@ackerleytng-ctop.c.googlers.com);
 * the data lives in the inode and every view of it is invalidated when it changes
 * (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com), and ordinary VMs may map guest_memfd
 * in the host (https://lore.kernel.org/r/ZnTBGCeSN1u6wzLb@google.com): so host view, guest view
 * and fstat must agree after a punch (KEEP_SIZE) and after an allocate (zeroed, shared pages).
 * @module
 */
import { Memtest } from '../guest.js';
import { checkBytes, checkEq, type CaseContext } from '../harness.js';
import { bindRange, GPA_A, guestWithGmem, THREAD, U, type LifecycleCase } from './common.js';

/** The case. */
export const punchAllocateWhileMappedAndBound: LifecycleCase = {
  name: 'lifecycle.punch_allocate_while_mapped_and_bound',
  source: `${THREAD.gmemOutlivesVm}, ${THREAD.hostMappings}, ${THREAD.gmemPinsVm}`,
  summary: 'punch and allocate under a host mapping and a bound guest: host view, guest view and fstat agree',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const size = 4 * U;
  const page = ctx.pageSize;
  const hole = U;
  const holeLen = U;
  const half = holeLen / 2;
  const { guest, vm, gmem } = guestWithGmem(ctx, size);
  const m = bindRange(ctx, vm, 1, GPA_A, gmem, 0, size);
  const b = m.bytes;
  const pagesOf = (off: number, len: number): number => {
    const res = m.residency();
    let n = 0;
    for (let p = off / page; p < (off + len) / page; p++) n += res[p]!;
    return n;
  };
  const stat = (when: string): void => {
    const st = gmem.stat();
    checkEq(st.size, BigInt(size), `st_size ${when}`);
    ctx.log(`${when}: st_size ${st.size}, st_blocks ${st.blocks}, resident pages ${m.residentPages()} of ${size / page} (hole: ${pagesOf(hole, holeLen)} of ${holeLen / page})`);
  };

  // Every page in use by both sides: the host writes, the guest checks and overwrites.
  b.fill(0x11);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0x11, fill: 0x22 });
  await mt.run();
  checkBytes(b, 0x22, 'host view of the guest\'s fill');
  stat('before the punch');

  // Punch; then the host and the guest each look first at one half of the hole.
  gmem.punchHole(hole, holeLen);
  stat('after the punch');
  checkEq(pagesOf(hole, holeLen), 0, 'resident pages in the hole right after the punch (mincore)');
  await mt.run({ start: GPA_A + hole, length: half, expect: 0, fill: 0x33 }); // guest first: zeros
  checkBytes(b.subarray(hole, hole + half), 0x33, 'host view of the guest\'s write in the first half of the hole', hole);
  checkBytes(b.subarray(hole + half, hole + holeLen), 0, 'host view of the second half of the hole (host first)', hole + half);
  await mt.run({ start: GPA_A + hole + half, length: half, expect: 0, fill: 0x44 });
  checkBytes(b.subarray(hole + half, hole + holeLen), 0x44, 'host view of the guest\'s write in the second half of the hole', hole + half);
  // The neighbours kept their bytes, in both views.
  checkBytes(b.subarray(0, hole), 0x22, 'host view before the hole');
  checkBytes(b.subarray(hole + holeLen), 0x22, 'host view after the hole', hole + holeLen);
  await mt.run({ start: GPA_A + hole - page, length: page, expect: 0x22, fill: 0x22 });
  await mt.run({ start: GPA_A + hole + holeLen, length: page, expect: 0x22, fill: 0x22 });

  // Punch again and allocate: the range is backed again, reads as zeros, and the host and the
  // guest see each other's writes there.
  gmem.punchHole(hole, holeLen);
  gmem.allocate(hole, holeLen);
  stat('after punch + allocate');
  await mt.run({ start: GPA_A + hole, length: holeLen, expect: 0, fill: 0x55 });
  checkBytes(b.subarray(hole, hole + holeLen), 0x55, 'host view of the guest\'s write into the allocated range', hole);
  b.fill(0x66, hole, hole + holeLen);
  await mt.run({ start: GPA_A + hole, length: holeLen, expect: 0x66, fill: 0x77 });
  checkBytes(b.subarray(hole, hole + holeLen), 0x77, 'host view of the guest\'s second write', hole);
  await mt.run({ start: GPA_A, length: hole, expect: 0x22, fill: 0x22 });
  await mt.run({ start: GPA_A + hole + holeLen, length: size - hole - holeLen, expect: 0x22, fill: 0x22 });
  await mt.finish();
  stat('at the end');
}
