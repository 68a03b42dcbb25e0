/**
 * `lifecycle.memory_fault_names_gpa_size_private`: a guest access KVM cannot back exits to the
 * VMM as KVM_EXIT_MEMORY_FAULT (KVM_RUN fails with EFAULT) naming the page, its size and whether
 * the access was private (https://docs.kernel.org/virt/kvm/api.html#kvm-run: "[gpa, gpa+size)",
 * KVM_MEMORY_EXIT_FLAG_PRIVATE), so that the VMM can convert that range and run again. On a
 * SW_PROTECTED VM the kind of access follows the gfn's attributes, never the memslot. The
 * variants, each read by the guest 0x808 bytes into the page (the exit must name the page):
 * - private, no guest_memfd: a PRIVATE page of an ordinary (anonymous) memslot exits with flags
 *   exactly PRIVATE, the page's gpa and size 4096; the VMM clears the attribute and the same
 *   vCPU resumes and reads the host's bytes there (the neighbouring shared pages never exit);
 * - shared and private, guest_memfd gone: on a guest_memfd-only memslot (GUEST_MEMFD_FLAG_MMAP,
 *   no userspace memory, so shared accesses are served from the guest_memfd too) whose
 *   guest_memfd's last reference went (kvm_gmem_release() clears the memslots' file,
 *   https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com), a shared page
 *   exits with flags 0 and a PRIVATE page with flags PRIVATE, each with its own gpa and size 4096;
 * - shared, guest_memfd that cannot be mapped: on a guest_memfd-only memslot whose guest_memfd
 *   has flags 0, a shared access has no backing (the shared side of such a slot is its
 *   userspace_addr, none here). Linux 7.2 fails KVM_RUN with EFAULT without a memory-fault exit;
 *   a memory-fault exit is accepted too if it names the page and is not PRIVATE. Never a
 *   successful read. A PRIVATE page of the same slot is read without an exit.
 * @module
 */
import { KvmError } from '../../core/errors.js';
import { GuestMemfdFlag, MemoryAttribute, MemoryFaultFlag, VmType } from '../../core/constants.js';
import type { MemoryFaultExit, VcpuExit } from '../../kvm/exits.js';
import type { Vcpu } from '../../kvm/vcpu.js';
import { getUcall } from '../../guest/ucall.js';
import { Mapping } from '../../memory/mapping.js';
import { Memtest, selftestGuest, type SelftestGuest } from '../guest.js';
import { check, checkEq, SelftestFailure, type CaseContext } from '../harness.js';
import { describeExit, GPA_A, GPA_B, GPA_C, hex, THREAD, U, type LifecycleCase } from './common.js';

/** The case. */
export const memoryFaultNamesGpaSizePrivate: LifecycleCase = {
  name: 'lifecycle.memory_fault_names_gpa_size_private',
  source: `${THREAD.gmemReleaseAndBind}, ${THREAD.gmemPinsVm}`,
  summary: 'SW_PROTECTED: KVM_EXIT_MEMORY_FAULT names the faulting page (gpa, size 4096) and sets PRIVATE exactly for private accesses: a private page without guest_memfd, shared and private pages of a closed guest_memfd; a VMM can convert and resume',
  vmType: 'SW_PROTECTED',
  run,
};

/** How far into a page the guest reads: the exit must name the page, not the byte. */
const INTO = 0x808;

/** Checks a memory-fault exit against the page and kind expected. */
function checkFault(e: MemoryFaultExit, page: number, isPrivate: boolean, what: string): void {
  checkEq(e.gpa, BigInt(page), `${what}: memory_fault.gpa`);
  checkEq(e.size, 4096n, `${what}: memory_fault.size`);
  checkEq(e.flags, isPrivate ? MemoryFaultFlag.PRIVATE : 0n, `${what}: memory_fault.flags`);
  checkEq(e.private, isPrivate, `${what}: the exit's private`);
  checkEq(e.errno, 'EFAULT', `${what}: KVM_RUN's errno`);
}

/** What one read by a fresh vCPU gave: its first exit, or the KvmError KVM_RUN failed with. */
interface ReadResult {
  vcpu: Vcpu;
  outcome: VcpuExit | KvmError;
}

/** Boots readpages on vCPU `id` to read one u64 at `gpa` and finish; runs it once. */
async function readOnce(ctx: CaseContext, guest: SelftestGuest, id: number, gpa: number): Promise<ReadResult> {
  const vcpu = guest.boot(id, 'readpages', [gpa, 1]);
  try {
    return { vcpu, outcome: await vcpu.runAsync({ signal: ctx.signal }) };
  } catch (e) {
    if (e instanceof KvmError) return { vcpu, outcome: e };
    throw e;
  }
}

/** Fails unless the read ended in a memory-fault exit; returns it. */
function memoryFault(r: ReadResult, what: string): MemoryFaultExit {
  const o = r.outcome;
  if (o instanceof KvmError) throw new SelftestFailure(`${what}: KVM_RUN failed (${o.code}) without KVM_EXIT_MEMORY_FAULT: ${o.message}`);
  if (o.reason === 'memory_fault') return o;
  const uc = getUcall(r.vcpu, o);
  throw new SelftestFailure(`${what}: expected KVM_EXIT_MEMORY_FAULT, got ${uc?.cmd === 'done' ? 'none: the guest read the page and finished' : describeExit(o)}`);
}

async function run(ctx: CaseContext): Promise<void> {
  const page = ctx.pageSize;
  const size = 2 * U;
  const guest = selftestGuest(ctx, { vmType: VmType.SW_PROTECTED });
  const vm = guest.vm;

  // 1. Private, no guest_memfd: an anonymous memslot, one PRIVATE page in it.
  const anon = ctx.use(Mapping.anonymous(size));
  anon.bytes.fill(0x3b);
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_B, memorySize: size, userspaceAddr: anon });
  const priv = GPA_B + U;
  vm.setMemoryAttributes(priv, page, MemoryAttribute.PRIVATE);
  const faults: MemoryFaultExit[] = [];
  const convertOnFault = {
    onExit(e: VcpuExit): boolean {
      if (e.reason !== 'memory_fault') return false;
      faults.push(e);
      // What a VMM does: make the range what the guest asked for (here: shared, the only backing).
      vm.setMemoryAttributes(e.gpa, e.size, 0);
      return true;
    },
  };
  const mt = new Memtest(guest, 0, { start: GPA_B, length: U, expect: 0x3b, fill: 0x3b });
  await mt.run(undefined, convertOnFault);
  await mt.run({ start: priv + page, length: size - U - page, expect: 0x3b, fill: 0x3b }, convertOnFault);
  checkEq(faults.length, 0, 'memory faults while the guest read the shared pages around the private one');
  await mt.run({ start: priv + INTO, length: 8, expect: 0x3b, fill: 0x3c }, convertOnFault);
  checkEq(faults.length, 1, 'memory faults for one read of a private page with no guest_memfd behind it');
  checkFault(faults[0]!, priv, true, 'private access, no guest_memfd');
  ctx.log(`private page ${hex(priv)} of an anonymous memslot: ${describeExit(faults[0]!)}; attribute cleared, the vCPU resumed and read the host's 0x3b`);
  checkEq(anon.bytes[U + INTO], 0x3c, 'host view of the guest\'s write after the conversion');
  await mt.finish();

  // 2. Shared and private pages of a guest_memfd-only memslot whose guest_memfd is gone.
  const gmem = ctx.use(vm.createGuestMemfd({ size, flags: GuestMemfdFlag.MMAP }));
  vm.setUserMemoryRegion2({ slot: 2, guestPhysAddr: GPA_C, memorySize: size, userspaceAddr: 0, guestMemfd: gmem });
  const shared = GPA_C;
  const privC = GPA_C + U;
  vm.setMemoryAttributes(privC, page, MemoryAttribute.PRIVATE);
  const mt1 = new Memtest(guest, 1, { start: GPA_C, length: size, expect: 0, fill: 0x4c });
  await mt1.run();
  await mt1.run({ start: privC, length: page, expect: 0x4c, fill: 0x4d });
  await mt1.finish();
  ctx.log('MMAP guest_memfd bound alone: the guest wrote its shared pages and its private page (both served from the guest_memfd)');
  mt1.vcpu.close();
  gmem.close(); // its last reference: no mapping, no other fd
  const sharedExit = memoryFault(await readOnce(ctx, guest, 2, shared + INTO), 'shared read, guest_memfd closed');
  checkFault(sharedExit, shared, false, 'shared read, guest_memfd closed');
  const privExit = memoryFault(await readOnce(ctx, guest, 3, privC + INTO), 'private read, guest_memfd closed');
  checkFault(privExit, privC, true, 'private read, guest_memfd closed');
  ctx.log(`guest_memfd closed: shared page ${describeExit(sharedExit)}; private page ${describeExit(privExit)}`);

  // 3. A shared page of a guest_memfd-only memslot whose guest_memfd cannot be mapped (flags 0).
  const gmem0 = ctx.use(vm.createGuestMemfd({ size }));
  vm.setUserMemoryRegion2({ slot: 3, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: 0, guestMemfd: gmem0 });
  vm.setMemoryAttributes(GPA_A + U, U, MemoryAttribute.PRIVATE);
  const privRead = await readOnce(ctx, guest, 4, GPA_A + U + INTO);
  const po = privRead.outcome;
  check(
    !(po instanceof KvmError) && getUcall(privRead.vcpu, po)?.cmd === 'done',
    `private read of a flags-0 guest_memfd-only memslot: expected the guest to read it and finish, got ${po instanceof KvmError ? po.message : describeExit(po)}`,
  );
  const r = await readOnce(ctx, guest, 5, GPA_A + INTO);
  if (r.outcome instanceof KvmError) {
    checkEq(r.outcome.code, 'EFAULT', 'shared read of a flags-0 guest_memfd-only memslot: KVM_RUN\'s error');
    ctx.log(`shared page ${hex(GPA_A)} of a flags-0 guest_memfd-only memslot: KVM_RUN failed with EFAULT and no KVM_EXIT_MEMORY_FAULT (nothing backs the shared side); its private page read without an exit`);
  } else {
    const e = memoryFault(r, 'shared read, flags-0 guest_memfd');
    checkFault(e, GPA_A, false, 'shared read, flags-0 guest_memfd');
    ctx.log(`shared page ${hex(GPA_A)} of a flags-0 guest_memfd-only memslot: ${describeExit(e)}; its private page read without an exit`);
  }
}
