/**
 * What the private-memory mirrors share, after upstream's selftest library
 * (tools/testing/selftests/kvm/lib/kvm_util.c,
 * https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/lib/kvm_util.c):
 * the anonymous host memory vm_userspace_mem_region_add() gives a memslot, vm_guest_mem_fallocate(),
 * and the skip reasons for hosts without a software-protected VM or without pre-faulting, each
 * naming the capability that is missing.
 * @module
 */
import { Hypercall, Madvise, MemoryAttribute, VmType } from '../core/constants.js';
import { Mapping } from '../memory/mapping.js';
import type { Vm } from '../kvm/vm.js';
import { SelftestFailure, type CaseContext } from './harness.js';
import type { HostFacts, VmTypeFacts } from './host.js';

/**
 * VM_MEM_SRC_ANONYMOUS backing for a memslot: private anonymous memory without transparent huge
 * pages (upstream madvises MADV_NOHUGEPAGE), closed with the case.
 */
export function anonymousRegion(ctx: CaseContext, size: number): Mapping {
  const m = ctx.use(Mapping.anonymous(size));
  m.advise(Madvise.NOHUGEPAGE);
  return m;
}

/**
 * vm_guest_mem_fallocate(): fallocate(KEEP_SIZE, plus PUNCH_HOLE when `punch`) on the guest_memfd
 * behind each piece of [gpa, gpa + size), walking the VM's memslots.
 * @throws SelftestFailure when a GPA is in no guest_memfd memslot (upstream asserts); KvmError
 * from fallocate
 */
export function guestMemFallocate(vm: Vm, gpa: bigint, size: bigint, punch: boolean): void {
  let pieces;
  try {
    pieces = vm.guestMemfdRanges(gpa, size);
  } catch (e) {
    throw new SelftestFailure(`Private memory region not found: ${(e as Error).message}`);
  }
  for (const p of pieces) {
    if (punch) p.guestMemfd.punchHole(p.offset, p.length);
    else p.guestMemfd.allocate(p.offset, p.length);
  }
}

function vmType(host: HostFacts, type: number): VmTypeFacts | undefined {
  return host.vmTypes.find((t) => t.type === type);
}

/** Why a VM of `vt` cannot be made, if it cannot. */
function createSkip(vt: VmTypeFacts): string | undefined {
  return vt.createError !== undefined ? `a VM of type ${vt.name} cannot be created here: ${vt.createError}` : undefined;
}

/** What a software-protected VM must offer a case. */
export interface SwProtectedNeeds {
  /** KVM_SET_MEMORY_ATTRIBUTES with PRIVATE. */
  attributes?: boolean;
  /** KVM_CAP_EXIT_HYPERCALL with KVM_HC_MAP_GPA_RANGE. */
  mapGpaRangeExit?: boolean;
  /** KVM_CAP_PRE_FAULT_MEMORY. */
  preFault?: boolean;
}

/**
 * Why a case on a KVM_X86_SW_PROTECTED_VM cannot run on this host, or undefined when it can:
 * upstream's TEST_REQUIRE(KVM_CAP_VM_TYPES & BIT(KVM_X86_SW_PROTECTED_VM)) first, then what the
 * case needs from such a VM (asked on one, as host.ts does).
 */
export function swProtectedSkip(host: HostFacts, needs: SwProtectedNeeds = {}): string | undefined {
  const sw = vmType(host, VmType.SW_PROTECTED);
  if (!(host.vmTypesCap & (1 << VmType.SW_PROTECTED)) || sw === undefined) {
    return `KVM_CAP_VM_TYPES 0x${host.vmTypesCap.toString(16)} lacks KVM_X86_SW_PROTECTED_VM ` +
      '(KVM offers it only when built with CONFIG_KVM_SW_PROTECTED_VM and using the TDP MMU)';
  }
  const cannot = createSkip(sw);
  if (cannot !== undefined) return cannot;
  if (needs.attributes && !(sw.memoryAttributes & MemoryAttribute.PRIVATE)) {
    return `KVM_CAP_MEMORY_ATTRIBUTES on a SW_PROTECTED VM lacks PRIVATE (0x${sw.memoryAttributes.toString(16)})`;
  }
  const mapGpa = 1n << BigInt(Hypercall.MAP_GPA_RANGE);
  if (needs.mapGpaRangeExit && !(sw.exitHypercall & mapGpa)) {
    return `KVM_CAP_EXIT_HYPERCALL on a SW_PROTECTED VM lacks KVM_HC_MAP_GPA_RANGE (0x${sw.exitHypercall.toString(16)}, needs 0x${mapGpa.toString(16)})`;
  }
  if (needs.preFault && sw.preFaultMemory === 0) return preFaultZero(host, sw);
  return undefined;
}

function preFaultZero(host: HostFacts, vt: VmTypeFacts): string {
  const paging = host.paging.mode === 'shadow' ? 'shadow paging; x86 offers it only with TDP'
    : host.paging.mode === 'tdp' ? 'TDP is on, yet KVM does not offer it' : 'x86 offers it only with TDP';
  return `KVM_CAP_PRE_FAULT_MEMORY is 0 (on a ${vt.name} VM: ${paging}; ${host.paging.source})`;
}

/**
 * Why a pre_fault_memory_test case on a VM of `type` cannot run, or undefined when it can:
 * upstream's TEST_REQUIRE(KVM_CAP_PRE_FAULT_MEMORY) (asked on a default VM, the same answer on
 * x86 as /dev/kvm's), then its "Skipping tests for vm_type" for a type KVM_CAP_VM_TYPES lacks.
 */
export function preFaultSkip(host: HostFacts, type: number, priv: boolean): string | undefined {
  const def = vmType(host, VmType.DEFAULT);
  if (def === undefined) return 'KVM_CAP_VM_TYPES does not list the default VM type';
  const cannot = createSkip(def);
  if (cannot !== undefined) return cannot;
  if (def.preFaultMemory === 0) return preFaultZero(host, def);
  if (type === VmType.DEFAULT) return undefined;
  return swProtectedSkip(host, { attributes: priv, preFault: true });
}
