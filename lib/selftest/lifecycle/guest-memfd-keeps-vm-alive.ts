/**
 * `lifecycle.guest_memfd_keeps_vm_alive`: a guest_memfd pins its VM, as anything created in a
 * VM's scope does (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com; the kvm_put_kvm() in
 * kvm_gmem_release(), https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com),
 * and its memory lives with the inode. So with every other reference to the VM gone the file
 * stays usable, with its data, and still belongs to that VM: no other VM can bind it (remedy (a)
 * of the three Sean Christopherson lists).
 * @module
 */
import { Memtest } from '../guest.js';
import { checkBytes, checkEq, checkErrno, type CaseContext } from '../harness.js';
import { bindRange, GPA_A, guestWithGmem, THREAD, U, type LifecycleCase } from './common.js';

/** The case. */
export const guestMemfdKeepsVmAlive: LifecycleCase = {
  name: 'lifecycle.guest_memfd_keeps_vm_alive',
  source: `${THREAD.gmemPinsVm}, ${THREAD.gmemReleaseAndBind}`,
  summary: 'with the VM fd, its vCPU and every mapping closed, the guest_memfd still allocates, punches, maps and keeps its data, and no new VM can bind it',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const size = 4 * U;
  const { guest, vm, gmem } = guestWithGmem(ctx, size);
  // The guest writes the first two units, the host the third; the fourth is left untouched.
  const slotMap = bindRange(ctx, vm, 1, GPA_A, gmem, 0, 2 * U);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: 2 * U, expect: 0, fill: 0xc3 });
  await mt.run();
  await mt.finish();
  const hostMap = ctx.use(gmem.map());
  checkBytes(hostMap.bytes.subarray(0, 2 * U), 0xc3, 'host view of the guest-written range');
  hostMap.bytes.fill(0x3c, 2 * U, 3 * U);

  // Drop every reference to the VM except the guest_memfd: the vCPU, the mappings, the VM fd.
  // The memslot is left bound: it goes with the VM, whenever the VM goes.
  mt.vcpu.close();
  slotMap.close();
  hostMap.close();
  vm.close();
  ctx.log('closed the vCPU, both mappings and the VM fd; the memslot was left bound; only the guest_memfd fd refers to the VM now');

  gmem.allocate(3 * U, U); // the untouched unit: a fresh allocation
  gmem.allocate(0, size); // all of it: already-backed pages stay as they are
  gmem.punchHole(U, ctx.pageSize); // a guest-written page
  gmem.punchHole(2 * U + 64 * 1024, ctx.pageSize); // a host-written page
  const st = gmem.stat();
  checkEq(st.size, BigInt(size), 'st_size after the VM fd was closed');
  ctx.log(`after allocate and punch: st_size ${st.size}, st_blocks ${st.blocks}`);

  const m = ctx.use(gmem.map());
  const b = m.bytes;
  checkBytes(b.subarray(0, U), 0xc3, 'guest-written data before the punched page');
  checkBytes(b.subarray(U, U + ctx.pageSize), 0, 'the punched guest-written page', U);
  checkBytes(b.subarray(U + ctx.pageSize, 2 * U), 0xc3, 'guest-written data after the punched page', U + ctx.pageSize);
  checkBytes(b.subarray(2 * U, 2 * U + 64 * 1024), 0x3c, 'host-written data before the punched page', 2 * U);
  checkBytes(b.subarray(2 * U + 64 * 1024, 2 * U + 64 * 1024 + ctx.pageSize), 0, 'the punched host-written page', 2 * U + 64 * 1024);
  checkBytes(b.subarray(2 * U + 64 * 1024 + ctx.pageSize, 3 * U), 0x3c, 'host-written data after the punched page', 2 * U + 64 * 1024 + ctx.pageSize);
  checkBytes(b.subarray(3 * U), 0, 'the range allocated after the VM fd was closed', 3 * U);
  // The memory is writable and reads back: it is live memory, not a shell of the VM's.
  b.fill(0x77, 3 * U);
  checkBytes(b.subarray(3 * U), 0x77, 'host write after the VM fd was closed', 3 * U);
  ctx.log(`mapped again after the close: ${m.residentPages()} of ${size / ctx.pageSize} pages resident`);

  // The file still belongs to the VM it pins: a new VM cannot bind it.
  const other = ctx.use(ctx.kvm.createVm());
  checkErrno(
    () => other.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem }),
    'EINVAL', 'binding the guest_memfd of a closed VM into a new VM',
  );
}
