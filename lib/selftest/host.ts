/**
 * What the host offers the selftests, probed once per run: whether /dev/kvm opens, the VM types,
 * which guest_memfd flags each VM type accepts, the paging mode, NUMA nodes, the THP size. The
 * case list is built from these answers, as upstream's main() builds its calls from
 * KVM_CAP_VM_TYPES and KVM_CAP_GUEST_MEMFD_FLAGS.
 * @module
 */
import { readFileSync } from 'node:fs';
import { arch, release } from 'node:os';
import { Cap, PAGE_SIZE, VmType } from '../core/constants.js';
import { hostPaging, numaNodes, type HostPaging } from '../host/info.js';
import { Kvm, KVM_DEVICE } from '../kvm/kvm.js';

/** What one VM type offers guest_memfd users (asked on a VM of that type). */
export interface VmTypeFacts {
  /** The VmType number. */
  type: number;
  /** Its name ('DEFAULT', 'SW_PROTECTED'...). */
  name: string;
  /** KVM_CAP_GUEST_MEMFD_FLAGS on such a VM (0 if the VM could not be created). */
  gmemFlags: bigint;
  /**
   * KVM_CAP_GUEST_MEMFD on such a VM: whether it accepts KVM_MEM_GUEST_MEMFD memslots (before
   * Linux 6.18 only VM types with private memory did; since, every type that supports
   * guest_memfd).
   */
  gmemMemslots: boolean;
  /**
   * KVM_CAP_MEMORY_ATTRIBUTES on such a VM: the attributes KVM_SET_MEMORY_ATTRIBUTES accepts
   * there (PRIVATE = 0x8 only on types with private memory). /dev/kvm reports every attribute
   * KVM knows whatever the type, so private-memory cases ask here.
   */
  memoryAttributes: bigint;
  /** KVM_CAP_PRE_FAULT_MEMORY on such a VM (x86: nonzero only with TDP). */
  preFaultMemory: number;
  /** KVM_CAP_EXIT_HYPERCALL on such a VM: the hypercalls it can forward (bit 12 = MAP_GPA_RANGE). */
  exitHypercall: bigint;
  /** Why no VM of this type could be created, if none could. */
  createError?: string;
}

/** The host, as the selftests see it. */
export interface HostFacts {
  /** The device path. */
  device: string;
  /** uname release and machine. */
  kernel: string;
  /** uname release alone (e.g. '7.2.13+deb14-amd64'): what `kernel` conditions compare. */
  release: string;
  /** Whether /dev/kvm opened and offers KVM_CAP_GUEST_MEMFD: nothing runs otherwise. */
  available: boolean;
  /** Why not, when `available` is false. */
  unavailableReason?: string;
  /** KVM_CAP_GUEST_MEMFD on /dev/kvm. */
  guestMemfd: number;
  /** KVM_CAP_USER_MEMORY2 on /dev/kvm. */
  userMemory2: number;
  /** KVM_CAP_GUEST_MEMFD_FLAGS on /dev/kvm. */
  systemGmemFlags: bigint;
  /** KVM_CAP_MEMORY_ATTRIBUTES on /dev/kvm. */
  memoryAttributes: number;
  /** KVM_CAP_VM_TYPES as reported (0 on kernels that only know the default type). */
  vmTypesCap: number;
  /** Each VM type to test, in bit order (the default type alone when KVM_CAP_VM_TYPES is 0). */
  vmTypes: VmTypeFacts[];
  /** The host's paging mode. */
  paging: HostPaging;
  /** The online NUMA nodes (/sys/devices/system/node/online). */
  numaNodes: number[];
  /** The transparent huge page (PMD) size, or undefined without THP. */
  pmdSize?: number;
  /** The page size. */
  pageSize: number;
}

/** The name of a VM type number. */
export function vmTypeName(type: number): string {
  for (const [name, v] of Object.entries(VmType)) if (v === type) return name;
  return `TYPE_${type}`;
}

/** Probes the host. Never throws: a missing device gives `available: false` and the reason. */
export function probeHost(device: string = KVM_DEVICE): HostFacts {
  const facts: HostFacts = {
    device, kernel: `${release()} (${arch()})`, release: release(), available: false, guestMemfd: 0, userMemory2: 0,
    systemGmemFlags: 0n, memoryAttributes: 0, vmTypesCap: 0, vmTypes: [], paging: hostPaging(),
    numaNodes: numaNodes(), pageSize: PAGE_SIZE,
  };
  const pmd = readNumber('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size');
  if (pmd !== undefined) facts.pmdSize = pmd;
  let kvm: Kvm;
  try {
    kvm = Kvm.open(device);
  } catch (e) {
    const err = e as Error & { code?: string; hint?: string };
    facts.unavailableReason = `${device} cannot be opened (${err.code ?? err.message}): ${err.hint ?? 'no usable KVM on this host'}`;
    facts.vmTypes = [noVmFacts(VmType.DEFAULT)];
    return facts;
  }
  using k = kvm;
  facts.guestMemfd = k.checkExtension(Cap.GUEST_MEMFD);
  facts.userMemory2 = k.checkExtension(Cap.USER_MEMORY2);
  facts.systemGmemFlags = BigInt(k.checkExtension(Cap.GUEST_MEMFD_FLAGS));
  facts.memoryAttributes = k.checkExtension(Cap.MEMORY_ATTRIBUTES);
  facts.vmTypesCap = k.checkExtension(Cap.VM_TYPES);
  // Upstream: "Not all architectures support KVM_CAP_VM_TYPES. However, those that support
  // guest_memfd have that support for the default VM type."
  const types = facts.vmTypesCap === 0 ? 1 << VmType.DEFAULT : facts.vmTypesCap;
  for (let t = 0; t < 32; t++) {
    if (!(types & (1 << t))) continue;
    const vt = noVmFacts(t);
    try {
      using vm = k.createVm(t);
      vt.gmemFlags = BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
      vt.gmemMemslots = vm.checkExtension(Cap.GUEST_MEMFD) !== 0;
      vt.memoryAttributes = BigInt(vm.checkExtension(Cap.MEMORY_ATTRIBUTES));
      vt.preFaultMemory = vm.checkExtension(Cap.PRE_FAULT_MEMORY);
      vt.exitHypercall = BigInt(vm.checkExtension(Cap.EXIT_HYPERCALL));
    } catch (e) {
      vt.createError = (e as Error).message;
    }
    facts.vmTypes.push(vt);
  }
  if (facts.guestMemfd === 0) {
    facts.unavailableReason = `${device} does not offer KVM_CAP_GUEST_MEMFD (kernel ${facts.kernel}; guest_memfd needs Linux 6.8 or newer)`;
  } else if (facts.userMemory2 === 0) {
    facts.unavailableReason = `${device} does not offer KVM_CAP_USER_MEMORY2`;
  } else {
    facts.available = true;
  }
  return facts;
}

/** A VM type's facts before (or without) a VM of it: nothing offered. */
function noVmFacts(type: number): VmTypeFacts {
  return { type, name: vmTypeName(type), gmemFlags: 0n, gmemMemslots: false, memoryAttributes: 0n, preFaultMemory: 0, exitHypercall: 0n };
}

function readNumber(path: string): number | undefined {
  try {
    const v = Number(readFileSync(path, 'utf8').trim());
    return Number.isSafeInteger(v) && v > 0 ? v : undefined;
  } catch {
    return undefined;
  }
}

/** A one-line description of the host for the KTAP header. */
export function describeHost(h: HostFacts): string {
  if (!h.available) return `kernel ${h.kernel}; ${h.unavailableReason ?? 'KVM is not usable'}`;
  const types = h.vmTypes.map((t) => `${t.name} (gmem flags 0x${t.gmemFlags.toString(16)})`).join(', ');
  const module = h.paging.module ? ` (${h.paging.module})` : '';
  return `kernel ${h.kernel}; vm types ${types}; paging ${h.paging.mode}${module}; ${describeNuma(h.numaNodes)}`;
}

/** The online NUMA nodes, counted then listed by id: `NUMA 1 node (id 0)`, `NUMA 2 nodes (ids 0,1)`. */
export function describeNuma(nodes: readonly number[]): string {
  if (nodes.length === 0) return 'NUMA 0 nodes';
  return nodes.length === 1 ? `NUMA 1 node (id ${nodes[0]!})` : `NUMA ${nodes.length} nodes (ids ${nodes.join(',')})`;
}
