/**
 * `lifecycle.close_guest_memfd_while_bound`: when a bound guest_memfd's last reference goes,
 * kvm_gmem_release() clears the file pointer of its memslots and zaps the mappings derived from
 * them, but neither deletes the memslots nor frees the memory
 * (https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com); like munmap()
 * under a memslot (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com). Memslots holding the
 * file instead (https://lore.kernel.org/r/diqzr0pb2zws.fsf@ackerleytng-ctop.c.googlers.com) was
 * not taken.
 *
 * "Closing" is the fd and the Mapping used as userspace_addr: the mapping holds the file too
 * (checked first), and Mapping.close() leaves private anonymous memory at that address. With TDP
 * the guest's access then faults (EFAULT with KVM_EXIT_MEMORY_FAULT, or an MMIO exit); with
 * shadow paging (e.g. kvm_pvm) it goes through userspace_addr and reads the placeholder's zeros.
 * Each is accepted and logged; the old data, or anything but zeros, fails.
 * @module
 */
import { KvmError } from '../../core/errors.js';
import type { VcpuExit } from '../../kvm/exits.js';
import { Mapping } from '../../memory/mapping.js';
import { getUcall } from '../../guest/ucall.js';
import { Memtest } from '../guest.js';
import { check, checkBytes, checkEq, checkErrno, SelftestFailure, type CaseContext } from '../harness.js';
import {
  bindRange, describeExit, GPA_A, GPA_B, guestWithGmem, hex, sharedGmem, THREAD, U, type LifecycleCase,
} from './common.js';

/** The case. */
export const closeGuestMemfdWhileBound: LifecycleCase = {
  name: 'lifecycle.close_guest_memfd_while_bound',
  source: `${THREAD.gmemReleaseAndBind}, ${THREAD.gmemPinsVm}, ${THREAD.gmemOutlivesVm}`,
  summary: 'closing a bound guest_memfd (fd and mapping) cuts the guest off from it; the memslot stays, other slots work, and the address can be re-bound to a fresh guest_memfd',
  run,
};

async function run(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const old = 0xaa;
  const { guest, vm, gmem: gmemA } = guestWithGmem(ctx, size);
  const mapA = bindRange(ctx, vm, 1, GPA_A, gmemA, 0, size);
  const gmemB = sharedGmem(ctx, vm, size);
  const mapB = bindRange(ctx, vm, 2, GPA_B, gmemB, 0, size);
  mapB.bytes.fill(0x0b);

  // The guest writes every page of slot A (so the host MMU maps all of them) and reads B.
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: old });
  await mt.run();
  await mt.run({ start: GPA_B, length: size, expect: 0x0b, fill: 0x1b });
  checkBytes(mapA.bytes, old, 'host view of slot A before the close');

  // close(fd) alone: the Mapping still holds the file, so nothing is released yet.
  gmemA.close();
  await mt.run({ start: GPA_A, length: size, expect: old, fill: old });
  ctx.log('after close(fd) alone the mapping used as userspace_addr still holds the file: the guest still reads the data');

  // Now the mapping: the file's last reference goes and KVM invalidates the binding.
  mapA.close();
  ctx.log('closed the guest_memfd: its fd, then the Mapping used as userspace_addr (Mapping.close() leaves private anonymous memory at that address)');

  // The guest's view of slot A, from a fresh vCPU (one that may be left stuck on a fault).
  const probe = guest.boot(1, 'memtest', [GPA_A, size, 0, 0]);
  let exit: VcpuExit | undefined;
  try {
    exit = await probe.runAsync({ signal: ctx.signal });
  } catch (e) {
    if (!(e instanceof KvmError && e.code === 'EFAULT')) throw e;
    ctx.log(`guest read of the closed range: KVM_RUN failed with EFAULT (${e.message})`);
  }
  if (exit !== undefined) {
    const uc = getUcall(probe, exit);
    if (exit.reason === 'mmio') {
      checkEq(exit.address, BigInt(GPA_A), 'address of the MMIO exit for the closed range');
      checkEq(exit.isWrite, false, 'the MMIO exit for the closed range is the guest read');
      ctx.log(`guest read of the closed range: ${describeExit(exit)}`);
    } else if (exit.reason === 'memory_fault') {
      check(
        exit.gpa <= BigInt(GPA_A) && BigInt(GPA_A) < exit.gpa + exit.size,
        `KVM_EXIT_MEMORY_FAULT [${hex(exit.gpa)}, +${hex(exit.size)}) does not cover the address read, ${hex(GPA_A)}`,
      );
      ctx.log(`guest read of the closed range: ${describeExit(exit)}`);
    } else if (uc?.cmd === 'abort') {
      const [addr, value] = uc.args;
      if (value === BigInt(old)) {
        throw new SelftestFailure(`the guest still reads the closed guest_memfd's data: ${hex(old)} at ${hex(addr ?? 0n)}`);
      }
      throw new SelftestFailure(`the guest read ${hex(value ?? 0n)} at ${hex(addr ?? 0n)} in the closed range: neither a fault nor the zeros of the placeholder`);
    } else if (uc?.cmd === 'sync') {
      // The whole range read as zeros, without an exit.
      check(
        ctx.host.paging.mode === 'shadow',
        `the guest read zeros over the whole closed range without an exit, on a host with ${ctx.host.paging.mode} paging (${ctx.host.paging.source}): expected a fault (MMIO, KVM_EXIT_MEMORY_FAULT or EFAULT)`,
      );
      ctx.log(`guest read of the closed range: no exit; it reads zeros over all ${size / ctx.pageSize} pages (shadow paging: accesses go through userspace_addr, now the anonymous placeholder; no stale mapping of the old pages)`);
    } else {
      throw new SelftestFailure(`unexpected exit for a guest read of the closed range: ${describeExit(exit)}`);
    }
  }

  // The memslot stays: its guest-physical range is still taken.
  const anon = ctx.use(Mapping.anonymous(size));
  checkErrno(
    () => vm.setUserMemoryRegion2({ slot: 3, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: anon }),
    'EEXIST', 'a new memslot over the range of the closed guest_memfd\'s memslot',
  );

  // Other memory keeps working: slot B, read and written by the guest.
  await mt.run({ start: GPA_B, length: size, expect: 0x1b, fill: 0x2b });
  checkBytes(mapB.bytes, 0x2b, 'host view of slot B after slot A\'s guest_memfd was closed');

  // Delete the slot (it exists: EINVAL otherwise) and bind a fresh guest_memfd at the address.
  vm.deleteMemoryRegion(1);
  const gmemC = sharedGmem(ctx, vm, size);
  const mapC = ctx.use(gmemC.map());
  mapC.bytes.fill(0x5c);
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: mapC, guestMemfd: gmemC });
  await mt.run({ start: GPA_A, length: size, expect: 0x5c, fill: 0xc5 });
  checkBytes(mapC.bytes, 0xc5, 'host view of the fresh guest_memfd bound where the closed one was');
  await mt.finish();
}
