/**
 * `lifecycle.private_memory_not_host_mappable`: private guest_memfd memory is the guest's alone.
 * guest_memfd is "guest-first": what the guest may map, the host need not
 * (https://lore.kernel.org/r/ZnTBGCeSN1u6wzLb@google.com, where mmap() for VMs with private
 * memory is "the hard problem"); and a file whose memory another party could read would let
 * userspace "extract data from a VM" (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com).
 * On a SW_PROTECTED VM:
 * - a guest_memfd created with flags 0 cannot be mapped at all: mmap() fails with ENODEV;
 * - one created with GUEST_MEMFD_FLAG_MMAP but not INIT_SHARED maps, but every host access to it
 *   faults (SIGBUS, surfaced by the guarded accessors as GuestMemoryFaultError), before and after
 *   the guest wrote, through the memslot's own userspace mapping and through a fresh one, for
 *   reads and writes;
 * - meanwhile a guest, with the range's attributes PRIVATE, writes and reads back its own data
 *   there, and the host's refused write left that data alone.
 * It proves the host cannot see or change the bytes through a mapping of the file; it does not
 * cover other ways in (/proc/<pid>/mem on such a mapping, or reading a physical page by other
 * means), which are the kernel's concern, not a guest_memfd contract.
 * @module
 */
import { KvmStateError } from '../../core/errors.js';
import { GuestMemfdFlag, MemoryAttribute, VmType } from '../../core/constants.js';
import type { Mapping } from '../../memory/mapping.js';
import { Memtest, selftestGuest } from '../guest.js';
import { check, checkEq, checkErrno, messageOf, SelftestFailure, type CaseContext } from '../harness.js';
import { GPA_A, hex, THREAD, U, type LifecycleCase } from './common.js';

/** The case. */
export const privateMemoryNotHostMappable: LifecycleCase = {
  name: 'lifecycle.private_memory_not_host_mappable',
  source: `${THREAD.hostMappings}, ${THREAD.gmemPinsVm}`,
  summary: 'SW_PROTECTED: a flags-0 guest_memfd refuses mmap (ENODEV); an MMAP one maps but every host read or write faults (SIGBUS) while the guest reads and writes its private data there',
  vmType: 'SW_PROTECTED',
  run,
};

/**
 * Expects a guarded host access to fault (GuestMemoryFaultError) at file offset `fileOffset`,
 * before any byte moved; returns the SIGBUS si_code name.
 */
function checkFaults(f: () => unknown, fileOffset: bigint, what: string): string {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new SelftestFailure(`${what}: the host access succeeded; private guest_memfd memory must fault (SIGBUS)`);
  if (!(err instanceof Error) || err.name !== 'GuestMemoryFaultError') {
    throw new SelftestFailure(`${what}: expected GuestMemoryFaultError (SIGBUS), got ${err instanceof Error ? err.name : typeof err}: ${messageOf(err)}`);
  }
  const e = err as Error & { side: string; fileOffset: bigint; bytesDone: number; sigCodeName: string };
  checkEq(e.side, 'mapping', `${what}: where the fault was`);
  checkEq(e.fileOffset, fileOffset, `${what}: file offset of the faulting byte`);
  checkEq(e.bytesDone, 0, `${what}: bytes transferred before the fault`);
  return e.sigCodeName;
}

async function run(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const page = ctx.pageSize;
  const guest = selftestGuest(ctx, { vmType: VmType.SW_PROTECTED });
  const vm = guest.vm;

  // Flags 0: nothing to map.
  const unmappable = ctx.use(vm.createGuestMemfd({ size }));
  checkErrno(() => ctx.use(unmappable.map()), 'ENODEV', 'mmap of a guest_memfd created with flags 0 on a SW_PROTECTED VM');
  checkErrno(() => ctx.use(unmappable.map(0, page)), 'ENODEV', 'mmap of one page of it');

  // MMAP without INIT_SHARED: a mapping, but no host access.
  const gmem = ctx.use(vm.createGuestMemfd({ size, flags: GuestMemfdFlag.MMAP }));
  const m: Mapping = ctx.use(gmem.map());
  try {
    void m.bytes;
    throw new SelftestFailure('Mapping.bytes handed out a view of private guest_memfd memory');
  } catch (e) {
    if (!(e instanceof KvmStateError && e.code === 'ERR_KVM_PRIVATE_MEMORY')) throw e;
  }
  const code = checkFaults(() => m.read(0, 8), 0n, 'host read of a never-used page, before any binding');
  ctx.log(`MMAP guest_memfd (no INIT_SHARED): mapped; a host read of it faults before any binding (SIGBUS, ${code})`);

  // Bound with its own mapping as userspace_addr, made private, and used by the guest.
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem });
  vm.setMemoryAttributes(GPA_A, size, MemoryAttribute.PRIVATE);
  const pattern = 0x9c;
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: pattern });
  await mt.run();
  ctx.log(`the guest read zeros from its private range [${hex(GPA_A)}, +${hex(size)}) and wrote ${hex(pattern)} over it`);

  // Every host access to what the guest wrote faults: reads and writes, this mapping and a new one.
  const mid = U + 3 * page;
  checkFaults(() => m.read(mid, 16), BigInt(mid), 'host read of a guest-written page through the memslot\'s userspace mapping');
  checkFaults(() => m.readInto(0, new Uint8Array(page)), 0n, 'host readInto of the first guest-written page');
  checkFaults(() => m.write(mid, new Uint8Array([1, 2, 3, 4])), BigInt(mid), 'host write into a guest-written page');
  checkFaults(() => m.fill(0x11, size - page, page), BigInt(size - page), 'host fill of the last guest-written page');
  const fresh = ctx.use(gmem.map(U, U));
  checkFaults(() => fresh.read(3 * page, 8), BigInt(mid), 'host read through a second, fresh mapping of the same range');
  ctx.log('every host read, readInto, write and fill of the private range faulted (SIGBUS) at the byte asked for, with nothing transferred');

  // The guest's data is intact: the host's writes never landed.
  await mt.run({ start: GPA_A, length: size, expect: pattern, fill: pattern ^ 0xff });
  await mt.run({ start: GPA_A, length: size, expect: pattern ^ 0xff, fill: pattern ^ 0xff });
  await mt.finish();
  checkFaults(() => m.read(0, 1), 0n, 'host read after the guest rewrote the range');
  check(gmem.stat().size === BigInt(size), 'the guest_memfd kept its size');
  ctx.log(`the guest read back its own ${hex(pattern)} everywhere after the host's refused writes, then wrote and re-read ${hex(pattern ^ 0xff)}`);
}
