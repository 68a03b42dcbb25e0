/**
 * `lifecycle.guest_memfd_bound_to_one_vm`: a guest_memfd that forgot its VM could be re-bound
 * into a VM its holder controls to read the memory, so no other VM may ever bind it (remedy (a),
 * https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com): kvm_gmem_bind() refuses another VM's
 * file with EINVAL, bound or not (https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com).
 * Handed to a new VMM process (the live-upgrade case,
 * https://lore.kernel.org/r/diqzr0pb2zws.fsf@ackerleytng-ctop.c.googlers.com) it still works as
 * memory but cannot be bound; and KVM ties a VM to the mm that created it
 * (https://lore.kernel.org/r/CAG48ez2vLKGTBOmc-5AJQE=j4Uy=HprSJVmJnOR-4Exb5rbMdA@mail.gmail.com),
 * so VM ioctls from another process fail with EIO. The other process is ../child.ts.
 * @module
 */
import type { ChildReport, ChildRequest } from '../child.js';
import { Memtest } from '../guest.js';
import { check, checkBytes, checkEq, checkErrno, SelftestFailure, type CaseContext } from '../harness.js';
import {
  bindRange, GPA_A, guestWithGmem, hex, runChild, sharedGmem, THREAD, U, type LifecycleCase,
} from './common.js';

/** The case. */
export const guestMemfdBoundToOneVm: LifecycleCase = {
  name: 'lifecycle.guest_memfd_bound_to_one_vm',
  source: `${THREAD.gmemPinsVm}, ${THREAD.gmemReleaseAndBind}, ${THREAD.gmemOutlivesVm}, ${THREAD.vmOfOneMm}`,
  summary: 'a guest_memfd binds to no VM but its own (EINVAL), even unbound and in another process, which can still map it; the VM fd is EIO there',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const pattern = 0x7e;
  const { guest, vm, gmem } = guestWithGmem(ctx, size);
  const m = bindRange(ctx, vm, 1, GPA_A, gmem, 0, size);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: pattern });
  await mt.run();
  await mt.finish();
  checkBytes(m.bytes, pattern, 'host view of the guest-written guest_memfd');

  // In this process: another VM may not bind it, while it is bound to its own VM or after.
  const other = ctx.use(ctx.kvm.createVm());
  const region = { slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem };
  checkErrno(() => other.setUserMemoryRegion2(region), 'EINVAL', 'binding it into a second VM while its own VM has it bound');
  vm.deleteMemoryRegion(1);
  checkErrno(() => other.setUserMemoryRegion2(region), 'EINVAL', 'binding it into a second VM after its own VM deleted every memslot of it');
  // Controls: the second VM binds a guest_memfd of its own with the same arguments, and the
  // first VM binds its file again.
  const own = sharedGmem(ctx, other, size);
  bindRange(ctx, other, 1, GPA_A, own, 0, size);
  vm.setUserMemoryRegion2(region);
  ctx.log('same process: a second VM is refused (EINVAL) both while the file is bound to its VM and after unbinding; controls bind');

  // In another process that received the guest_memfd and the VM fd.
  const req: ChildRequest = {
    size, pattern, dataLength: size,
    writeAt: U, writeLength: ctx.pageSize, childByte: 0xc1,
    punchAt: size - ctx.pageSize, punchLength: ctx.pageSize, gpa: GPA_A,
  };
  const run = await runChild(ctx, gmem.fd, vm.fd, req, 30_000);
  if (run.stderr.trim() !== '') ctx.log(`child stderr: ${run.stderr.trim()}`);
  check(run.signal === null, `the child was killed by ${String(run.signal)} (timed out?)`);
  checkEq(run.code, 0, 'the child\'s exit status');
  let r: ChildReport;
  try {
    r = JSON.parse(run.stdout) as ChildReport;
  } catch {
    throw new SelftestFailure(`the child printed no report: ${JSON.stringify(run.stdout.slice(0, 500))}`);
  }
  ctx.log(`child: ${JSON.stringify(r)}`);
  checkEq(r.fd3, 'guest_memfd', `what the child's fd 3 is (link '${r.link3}')`);
  checkEq(r.fd4, 'vm', `what the child's fd 4 is (link '${r.link4}')`);
  checkEq(r.map, 'ok', 'the child maps the guest_memfd');
  check(
    r.firstMismatch === -1,
    `the child reads the guest's data: expected ${hex(pattern)} everywhere, got ${hex(r.mismatchValue)} at offset ${hex(r.firstMismatch)}`,
  );
  checkEq(r.write, 'ok', 'the child writes through its mapping');
  checkEq(r.punch, 'ok', 'the child punches a hole (fallocate)');
  checkEq(r.ownVm, 'ok', 'the child creates a VM of its own');
  checkEq(r.bindInheritedToOwnVm, 'EINVAL', 'the child binds the received guest_memfd into its own VM');
  checkEq(r.bindOwnToOwnVm, 'ok', 'control: the child binds a guest_memfd of its own VM');
  checkEq(r.vmCheckExtension, 'EIO', 'KVM_CHECK_EXTENSION on the received VM fd');
  checkEq(r.vmCreateGuestMemfd, 'EIO', 'KVM_CREATE_GUEST_MEMFD on the received VM fd');
  checkEq(r.vmSetUserMemoryRegion2, 'EIO', 'KVM_SET_USER_MEMORY_REGION2 on the received VM fd');

  // The child's write and punch are in the parent's view of the same file.
  checkBytes(m.bytes.subarray(U, U + ctx.pageSize), 0xc1, 'the child\'s write, seen by the parent', U);
  checkBytes(m.bytes.subarray(size - ctx.pageSize), 0, 'the child\'s hole, seen by the parent', size - ctx.pageSize);
  checkBytes(m.bytes.subarray(0, U), pattern, 'the data before the child\'s write, after the child ran');
  checkBytes(m.bytes.subarray(U + ctx.pageSize, size - ctx.pageSize), pattern, 'the data between the child\'s write and its hole', U + ctx.pageSize);
  // And the parent's own VM still works with the file: the guest sees the child's bytes.
  const after = new Memtest(guest, 1, { start: GPA_A + U, length: ctx.pageSize, expect: 0xc1, fill: 0xc2 });
  await after.run();
  await after.run({ start: GPA_A + size - ctx.pageSize, length: ctx.pageSize, expect: 0, fill: 0 });
  await after.finish();
}
