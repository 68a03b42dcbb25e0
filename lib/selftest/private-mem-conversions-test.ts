/**
 * The kernel's tools/testing/selftests/kvm/x86/private_mem_conversions_test.c
 * (https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/x86/private_mem_conversions_test.c),
 * mirrored: test_mem_conversions() for several of the parameter sets its command line takes
 * (backing `-s`, vCPUs `-n`, memslots `-m`), same expected results.
 *
 * A KVM_X86_SW_PROTECTED_VM with n vCPUs and KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE;
 * one guest_memfd of n * 4 MiB, flags 0, bound by m memslots (10, 11, ...) at 4 GiB, each with
 * anonymous memory for its shared side, so that with m > 1 a vCPU's range can span two slots.
 * Each vCPU (the `private_mem_conversions` guest image, upstream's guest_code) converts pieces
 * of its 2 MiB + 4 KiB range between private and shared with MAP_GPA_RANGE hypercalls carrying
 * the test's own flag bits, and asks the host at sync points to check (and, when shared, rewrite)
 * what the host sees. The host does exactly what upstream's handle_exit_hypercall() does:
 * fallocate (allocate for private, punch for shared) when the guest asks, set the attributes
 * when the guest asks, answer 0; it never drops the shared pages, because the private sync
 * points check that the shared side still holds the pattern from before the conversion. After
 * the VM is closed, punching and allocating the whole still-open guest_memfd must succeed (the
 * guest_memfd holds a reference to its VM).
 *
 * Upstream's main() requires KVM_CAP_VM_TYPES to list SW_PROTECTED; here each case also names
 * the capability missing on a SW_PROTECTED VM when KVM_CAP_MEMORY_ATTRIBUTES lacks PRIVATE or
 * KVM_CAP_EXIT_HYPERCALL lacks MAP_GPA_RANGE (upstream would fail in vm_enable_cap() or
 * vm_set_memory_attributes()).
 *
 * Deviations in structure, not in checks: each vCPU's loop runs on the main thread's event loop
 * with KVM_RUN on the vCPU's own thread (runAsync), where upstream has one pthread per vCPU. The
 * guest's range is reached through the boot helper's identity map with 2 MiB pages (upstream
 * virt_map()s exactly PER_CPU_DATA_SIZE with 4 KiB pages), so an out-of-range guest access would
 * not fault the same way; the guest makes none. The hypercall instruction is VMMCALL on AMD and
 * Hygon hosts and VMCALL elsewhere, as upstream's kvm_hypercall() picks it.
 *
 * Mirrored as of Linux 7.2.
 * @module
 */
import { Cap, Hypercall, MemoryAttribute, MemslotFlag, VmType } from '../core/constants.js';
import type { VcpuExit } from '../kvm/exits.js';
import type { Vcpu } from '../kvm/vcpu.js';
import type { Vm } from '../kvm/vm.js';
import { guestMemory } from '../guest/memory.js';
import { checkBytes, checkEq, SelftestFailure, type CaseContext, type SelftestCase } from './harness.js';
import type { HostFacts } from './host.js';
import { GiB, MiB, runToUcall, selftestGuest } from './guest.js';
import { anonymousRegion, guestMemFallocate, swProtectedSkip } from './kvm-util.js';
import { hostCpuid, hostCpuIsAmdCompatible } from './x86.js';

const BASE_DATA_SLOT = 10;
const BASE_DATA_GPA = 4 * GiB;
const PAGE_SIZE = 4096;
const PER_CPU_DATA_SIZE = 2 * MiB + PAGE_SIZE;

/** The test's own MAP_GPA_RANGE flag bits ("Arbitrary values, KVM doesn't care"). */
const MAP_GPA_SET_ATTRIBUTES = 1n << 0n;
const MAP_GPA_SHARED = 1n << 1n;
const MAP_GPA_DO_FALLOCATE = 1n << 2n;

/** enum ucall_syncs. */
const SYNC_SHARED = 0n;
const SYNC_PRIVATE = 1n;

/** One run of the test: `-s src -n vcpus -m memslots`. */
interface ParamSet {
  /** The backing source (vm_mem_backing_src_type); only anonymous (upstream's default) here. */
  src: 'anonymous';
  vcpus: number;
  memslots: number;
  /**
   * The most it may take: measured under nested CPU-emulated (TCG) KVM, the slowest host it
   * runs on, with a margin of more than ten times for a loaded machine.
   */
  timeoutMs: number;
}

/**
 * The parameter sets: upstream's default run (1 vCPU, 1 memslot), a vCPU range spanning two
 * memslots, two vCPUs on one memslot, and two vCPUs over two memslots.
 */
const PARAM_SETS: readonly ParamSet[] = [
  { src: 'anonymous', vcpus: 1, memslots: 1, timeoutMs: 60_000 },
  { src: 'anonymous', vcpus: 1, memslots: 2, timeoutMs: 60_000 },
  { src: 'anonymous', vcpus: 2, memslots: 1, timeoutMs: 60_000 },
  { src: 'anonymous', vcpus: 2, memslots: 2, timeoutMs: 60_000 },
];

/** The cases, one per parameter set. */
export function privateMemConversionsCases(host: HostFacts): SelftestCase[] {
  const skip = host.available ? swProtectedSkip(host, { attributes: true, mapGpaRangeExit: true }) : undefined;
  return PARAM_SETS.map((p) => ({
    group: 'private_mem_conversions_test' as const, vmType: 'SW_PROTECTED',
    name: `private_mem_conversions_test.test_mem_conversions [src=${p.src} vcpus=${p.vcpus} memslots=${p.memslots}]`,
    source: 'test_mem_conversions',
    summary: 'guests convert their ranges private<->shared with MAP_GPA_RANGE hypercalls (with and without fallocate), the host ' +
      'checks the shared view at each sync point; punched private memory reads zeros; the guest_memfd outlives its VM',
    run: (ctx: CaseContext) => testMemConversions(ctx, p),
    timeoutMs: p.timeoutMs,
    ...(skip !== undefined ? { skipReason: skip } : {}),
  }));
}

/** handle_exit_hypercall(): fallocate and set attributes as the guest's flags say, answer 0. */
function handleExitHypercall(vm: Vm, exit: VcpuExit): boolean {
  if (exit.reason !== 'hypercall') return false; // upstream asserts KVM_EXIT_IO otherwise
  checkEq(exit.nr, BigInt(Hypercall.MAP_GPA_RANGE), 'hypercall nr (MAP_GPA_RANGE wanted)');
  const gpa = exit.args[0]!;
  const size = exit.args[1]! * BigInt(PAGE_SIZE);
  const flags = exit.args[2]!;
  const shared = (flags & MAP_GPA_SHARED) !== 0n;
  if (flags & MAP_GPA_DO_FALLOCATE) guestMemFallocate(vm, gpa, size, shared);
  if (flags & MAP_GPA_SET_ATTRIBUTES) vm.setMemoryAttributes(gpa, size, shared ? 0n : MemoryAttribute.PRIVATE);
  exit.ret[0] = 0n;
  return true;
}

/** __test_mem_conversions(): one vCPU's run loop, until its guest is done. */
async function vcpuLoop(vm: Vm, vcpu: Vcpu, signal: AbortSignal): Promise<number> {
  let syncs = 0;
  for (;;) {
    const uc = await runToUcall(vcpu, signal, { onExit: (exit) => handleExitHypercall(vm, exit) });
    if (uc.cmd === 'done') return syncs;
    if (uc.cmd !== 'sync') throw new SelftestFailure(`Unknown ucall ${uc.cmd} (0x${uc.command.toString(16)})`);
    const [cmd, gpa, size, pattern, next] = uc.args;
    if (cmd !== SYNC_SHARED && cmd !== SYNC_PRIVATE) throw new SelftestFailure(`Unknown sync command '${String(cmd)}'`);
    syncs++;
    for (let i = 0n; i < size!; i += BigInt(PAGE_SIZE)) {
      const n = Number(size! - i < BigInt(PAGE_SIZE) ? size! - i : BigInt(PAGE_SIZE));
      const hva = guestMemory(vm, gpa! + i, n);
      // In all cases, the host should observe the shared data.
      checkBytes(hva, Number(pattern!), `host view of gpa 0x${(gpa! + i).toString(16)} (${cmd === SYNC_SHARED ? 'shared' : 'private'} sync)`);
      if (cmd === SYNC_SHARED) hva.fill(Number(next!));
    }
  }
}

async function testMemConversions(ctx: CaseContext, p: ParamSet): Promise<void> {
  // Each vCPU's chunk is aligned to max(2 MiB, the backing page size): 4 KiB for anonymous.
  const alignment = 2 * MiB;
  const perCpuSize = Math.ceil(PER_CPU_DATA_SIZE / alignment) * alignment;
  const memfdSize = perCpuSize * p.vcpus;
  const slotSize = Math.floor(memfdSize / p.memslots);
  if (slotSize * p.memslots !== memfdSize) {
    throw new SelftestFailure(`The memfd size (0x${memfdSize.toString(16)}) needs to be cleanly divisible by the number of memslots (${p.memslots})`);
  }
  const useVmmcall = hostCpuIsAmdCompatible(hostCpuid);
  ctx.log(`${p.vcpus} vCPU(s) x 0x${perCpuSize.toString(16)} bytes over ${p.memslots} memslot(s) of 0x${slotSize.toString(16)}; hypercalls with ${useVmmcall ? 'vmmcall' : 'vmcall'}`);

  const guest = selftestGuest(ctx, { vmType: VmType.SW_PROTECTED, identityMapSize: BASE_DATA_GPA + memfdSize });
  const { vm } = guest;
  const vcpus: Vcpu[] = [];
  for (let i = 0; i < p.vcpus; i++) {
    vcpus.push(guest.boot(i, 'private_mem_conversions', [BASE_DATA_GPA + i * perCpuSize, useVmmcall ? 1 : 0]));
  }
  vm.enableCap(Cap.EXIT_HYPERCALL, [1n << BigInt(Hypercall.MAP_GPA_RANGE)]);
  const memfd = ctx.use(vm.createGuestMemfd({ size: memfdSize, flags: 0 }));
  const shared = [];
  for (let i = 0; i < p.memslots; i++) {
    const map = anonymousRegion(ctx, slotSize);
    shared.push(map);
    vm.setUserMemoryRegion2({
      slot: BASE_DATA_SLOT + i, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: BASE_DATA_GPA + slotSize * i, memorySize: slotSize,
      userspaceAddr: map, guestMemfd: memfd, guestMemfdOffset: slotSize * i,
    });
  }

  // All vCPUs start together; the first failure stops the others.
  const stop = new AbortController();
  const signal = AbortSignal.any([ctx.signal, stop.signal]);
  const started = performance.now();
  let failure: { error: unknown } | undefined;
  const syncs = await Promise.all(vcpus.map((v) => vcpuLoop(vm, v, signal).catch((e: unknown) => {
    failure ??= { error: e };
    stop.abort(e);
    return -1;
  })));
  if (failure) throw failure.error;
  ctx.log(`guests done in ${Math.round(performance.now() - started)} ms (sync points per vCPU: ${syncs.join(', ')})`);

  // kvm_vm_free(): the vCPUs, the VM, the memslots' host memory; the guest_memfd stays open.
  for (const v of vcpus) v.close();
  vm.close();
  for (const m of shared) m.close();
  // The guest_memfd holds a reference to its VM: allocating and freeing still work.
  memfd.punchHole(0, memfdSize);
  memfd.allocate(0, memfdSize);
  memfd.close();
}
