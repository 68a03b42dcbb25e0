/**
 * The kernel's tools/testing/selftests/kvm/pre_fault_memory_test.c
 * (https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/pre_fault_memory_test.c),
 * mirrored: test_pre_fault_memory() with upstream's three argument sets, same expected results.
 *
 * Each case makes a VM of the type with one vCPU, puts slot 10 (513 pages of anonymous memory,
 * with a guest_memfd and PRIVATE attributes for the private set) near the top of the guest's
 * physical address space, where upstream's vm_compute_max_gfn() puts it (computed from
 * KVM_GET_SUPPORTED_CPUID and the host CPU's own CPUID, lib/selftest/x86.ts), and pre-faults
 * three ranges with KVM_PRE_FAULT_MEMORY: the first 2 MiB (all mapped), 8 KiB across the slot's
 * end (ENOENT, 4 KiB left) and 4 KiB past it (ENOENT, 4 KiB left). Around each, as upstream's
 * worker thread does, the slot is deleted while the first ioctl runs and recreated with fresh
 * memory after it returns; whatever that first call gave (success, EAGAIN, ENOENT, EFAULT), the
 * retry on the recreated slot decides. Then the guest reads one word from each of the 513 pages
 * and reports DONE.
 *
 * Upstream's main() requires KVM_CAP_PRE_FAULT_MEMORY for all three (x86: TDP only), and
 * test_pre_fault_memory() returns without checking for a VM type KVM_CAP_VM_TYPES lacks; that
 * is a SKIP here, naming the capability, never a pass.
 *
 * Deviations in structure, not in checks: each ioctl runs on the vCPU's own thread
 * (preFaultMemoryOnceAsync) and the main thread deletes the slot right after posting the first,
 * where upstream's vCPU ioctl runs on the main thread and a worker thread deletes; either way the
 * deletion races the first ioctl. The guest reaches the slot through an extra 2 MiB-page mapping
 * of gva to gpa (upstream: virt_map() of 513 4 KiB pages).
 *
 * Mirrored as of Linux 7.2.
 * @module
 */
import { MemoryAttribute, MemslotFlag, VmType } from '../core/constants.js';
import { KvmError } from '../core/errors.js';
import type { GuestMemfd } from '../kvm/guest-memfd.js';
import type { Vcpu } from '../kvm/vcpu.js';
import type { Vm } from '../kvm/vm.js';
import type { Mapping } from '../memory/mapping.js';
import { check, checkEq, type CaseContext, type SelftestCase } from './harness.js';
import type { HostFacts } from './host.js';
import { MiB, runToUcall, selftestGuest } from './guest.js';
import { anonymousRegion, preFaultSkip } from './kvm-util.js';
import { computeMaxGfn, hostCpuid, kvmCpuAddressWidth } from './x86.js';

const PAGE_SIZE = 4096n;
const SZ_2M = 2n * BigInt(MiB);
const TEST_SIZE = SZ_2M + PAGE_SIZE;
const TEST_NPAGES = TEST_SIZE / PAGE_SIZE;
const TEST_SLOT = 10;

/** The cases: upstream's main() calls, in its order. */
export function preFaultMemoryCases(host: HostFacts): SelftestCase[] {
  const sets = [
    { type: VmType.DEFAULT, name: 'DEFAULT', priv: false },
    { type: VmType.SW_PROTECTED, name: 'SW_PROTECTED', priv: false },
    { type: VmType.SW_PROTECTED, name: 'SW_PROTECTED', priv: true },
  ];
  return sets.map(({ type, name, priv }) => {
    const skip = host.available ? preFaultSkip(host, type, priv) : undefined;
    return {
      group: 'pre_fault_memory_test' as const, vmType: name,
      name: `pre_fault_memory_test.test_pre_fault_memory [vm_type=${name} private=${priv ? 1 : 0}]`,
      source: 'test_pre_fault_memory',
      summary: 'KVM_PRE_FAULT_MEMORY near the top of guest-physical memory, racing a memslot delete/recreate: 2 MiB all mapped; ' +
        'across and past the slot\'s end ENOENT with 4 KiB left; the guest then reads all 513 pages',
      run: (ctx: CaseContext) => testPreFaultMemory(ctx, type, priv),
      ...(skip !== undefined ? { skipReason: skip } : {}),
    };
  });
}

/** Slot 10 and the memory behind it, deleted and recreated as upstream's delete_slot_worker() does. */
class TestSlot {
  #map: Mapping | undefined;
  #gmem: GuestMemfd | undefined;

  constructor(private readonly ctx: CaseContext, private readonly vm: Vm, private readonly gpa: bigint, private readonly priv: boolean) {}

  /** vm_userspace_mem_region_add(ANONYMOUS, gpa, TEST_SLOT, TEST_NPAGES, private ? GUEST_MEMFD : 0): fresh memory each time. */
  add(): void {
    const size = Number(TEST_SIZE);
    this.#map = anonymousRegion(this.ctx, size);
    this.#gmem = this.priv ? this.ctx.use(this.vm.createGuestMemfd({ size, flags: 0 })) : undefined;
    this.vm.setUserMemoryRegion2({
      slot: TEST_SLOT, flags: this.priv ? MemslotFlag.GUEST_MEMFD : 0, guestPhysAddr: this.gpa, memorySize: size,
      userspaceAddr: this.#map, ...(this.#gmem ? { guestMemfd: this.#gmem } : {}),
    });
  }

  /** vm_mem_region_delete(): the memslot, then its memory (munmap, close the guest_memfd). */
  delete(): void {
    this.vm.deleteMemoryRegion(TEST_SLOT);
    this.#map?.close();
    this.#gmem?.close();
  }
}

async function testPreFaultMemory(ctx: CaseContext, type: number, priv: boolean): Promise<void> {
  const supported = ctx.kvm.getSupportedCpuid();
  const maxGfn = computeMaxGfn(supported, hostCpuid);
  const { vaBits } = kvmCpuAddressWidth(supported);
  const gpa = ((maxGfn - TEST_NPAGES) * PAGE_SIZE) & ~(SZ_2M - 1n);
  const gva = gpa & ((1n << BigInt(vaBits - 1)) - 1n);
  ctx.log(`max_gfn 0x${maxGfn.toString(16)}, va_bits ${vaBits}: slot ${TEST_SLOT} at gpa 0x${gpa.toString(16)}, gva 0x${gva.toString(16)}`);

  const guest = selftestGuest(ctx, { vmType: type, extraMappings: [{ gva, gpa, size: 2n * SZ_2M }] });
  const vcpu = guest.boot(0, 'readpages', [gva, TEST_NPAGES]);
  const slot = new TestSlot(ctx, guest.vm, gpa, priv);
  slot.add();
  if (priv) guest.vm.setMemoryAttributes(gpa, TEST_SIZE, MemoryAttribute.PRIVATE);

  await preFaultMemory(ctx, vcpu, slot, gpa, 0n, SZ_2M, 0n);
  await preFaultMemory(ctx, vcpu, slot, gpa, SZ_2M, PAGE_SIZE * 2n, PAGE_SIZE);
  await preFaultMemory(ctx, vcpu, slot, gpa, TEST_SIZE, PAGE_SIZE, PAGE_SIZE);

  const uc = await runToUcall(vcpu, ctx.signal);
  checkEq(uc.cmd, 'done', 'the guest\'s ucall after reading every page');
}

/** pre_fault_memory(): one KVM_PRE_FAULT_MEMORY at a time, racing a delete and recreate of the slot. */
async function preFaultMemory(
  ctx: CaseContext, vcpu: Vcpu, slot: TestSlot, base: bigint, offset: bigint, size: bigint, expectedLeft: bigint,
): Promise<void> {
  let range = { gpa: base + offset, size };
  let deleted = false;
  let recreated = false;
  let failed: KvmError | undefined;
  const outcomes: string[] = [];
  for (;;) {
    const prev = range.size;
    const pending = vcpu.preFaultMemoryOnceAsync(range.gpa, range.size);
    if (!deleted) {
      deleted = true;
      try {
        slot.delete();
      } catch (e) {
        await pending.catch(() => undefined);
        throw e;
      }
    }
    try {
      range = await pending;
      failed = undefined;
    } catch (e) {
      const remaining = (e as { remaining?: { gpa: bigint; size: bigint } }).remaining;
      if (!(e instanceof KvmError) || remaining === undefined) throw e;
      range = remaining;
      failed = e;
    }
    outcomes.push(`${failed ? failed.code : 'ok'} (0x${range.size.toString(16)} left)`);
    check((range.size < prev) !== (failed !== undefined),
      `${failed ? 'not ' : ''}expecting range.size to change on ${failed ? 'failure' : 'success'} (0x${prev.toString(16)} before, 0x${range.size.toString(16)} after)`);
    // Retry at once when KVM was interrupted by an unrelated signal.
    if (failed?.code === 'EINTR') continue;
    // Recreate the slot, then retry unless everything was already mapped (size 0 is EINVAL).
    if (!recreated) {
      slot.add();
      recreated = true;
      if (range.size) continue;
    }
    if (!range.size || failed) break;
  }
  ctx.log(`pre-fault [+0x${offset.toString(16)}, 0x${size.toString(16)} bytes): ${outcomes.join(', then ')}`);
  checkEq(range.size, expectedLeft, 'bytes left to pre-fault');
  if (expectedLeft === 0n) check(failed === undefined, `KVM_PRE_FAULT_MEMORY should succeed: ${failed?.message ?? ''}`);
  else check(failed?.code === 'ENOENT', `KVM_PRE_FAULT_MEMORY should fail with ENOENT, got ${failed ? `${failed.code} (${failed.message})` : 'success'}`);
}
