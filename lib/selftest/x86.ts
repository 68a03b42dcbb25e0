/**
 * x86 facts the mirrored selftests derive as upstream's library does
 * (tools/testing/selftests/kvm/lib/x86/processor.c,
 * https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm/lib/x86/processor.c):
 * the guest's address widths from KVM_GET_SUPPORTED_CPUID, its largest usable guest frame
 * (vm_compute_max_gfn(), which also reads the host CPU's own CPUID), and whether the host CPU
 * takes VMMCALL rather than VMCALL for a hypercall. Pure functions of two CPUID sources, so a
 * test can feed them any CPU.
 * @module
 */
import { native } from '../core/native.js';
import type { CpuidEntry } from '../kvm/cpuid.js';

/** A CPUID instruction: [eax, ebx, ecx, edx] for `leaf` and `subleaf`. */
export type CpuidFn = (leaf: number, subleaf: number) => ArrayLike<number>;

/** The CPUID instruction on the host CPU itself (upstream's this_cpu_*() read it the same way). */
export const hostCpuid: CpuidFn = (leaf, subleaf) => native.hostCpuid(leaf, subleaf);

/** One field of a CPUID leaf (struct kvm_x86_cpu_property). */
interface Property {
  fn: number;
  index: number;
  /** 0 eax, 1 ebx, 2 ecx, 3 edx. */
  reg: 0 | 1 | 2 | 3;
  lo: number;
  hi: number;
}

const prop = (fn: number, reg: Property['reg'], lo: number, hi: number): Property => ({ fn, index: 0, reg, lo, hi });
const MAX_BASIC_LEAF = prop(0, 0, 0, 31);
const MAX_EXT_LEAF = prop(0x80000000, 0, 0, 31);
const MAX_PHY_ADDR = prop(0x80000008, 0, 0, 7);
const MAX_VIRT_ADDR = prop(0x80000008, 0, 8, 15);
const GUEST_MAX_PHY_ADDR = prop(0x80000008, 0, 16, 23);
const PHYS_ADDR_REDUCTION = prop(0x8000001f, 1, 6, 11);
const FEATURE_PAE = prop(1, 3, 6, 6);

function field(regs: ArrayLike<number>, p: Property): number {
  const width = p.hi - p.lo + 1;
  const v = (regs[p.reg] ?? 0) >>> 0;
  return width === 32 ? v : (v >>> p.lo) & ((2 ** width) - 1);
}

/** kvm_cpu_property(): the field from KVM's supported CPUID, 0 when the leaf is not listed. */
function kvmProperty(supported: readonly CpuidEntry[], p: Property): number {
  const e = supported.find((x) => x.function === p.fn && x.index === p.index);
  return e ? field([e.eax, e.ebx, e.ecx, e.edx], p) : 0;
}

/** The highest leaf of `p`'s range (basic or extended) a CPUID source lists. */
function maxLeafFor(p: Property, get: (q: Property) => number): number {
  return (p.fn & 0x80000000) !== 0 ? get(MAX_EXT_LEAF) : get(MAX_BASIC_LEAF);
}

/** kvm_cpu_has_p(): whether KVM's supported CPUID reaches `p`'s leaf. */
function kvmHasProperty(supported: readonly CpuidEntry[], p: Property): boolean {
  return maxLeafFor(p, (q) => kvmProperty(supported, q)) >>> 0 >= p.fn >>> 0;
}

/** this_cpu_property(): the field from the host CPU's own CPUID. */
function hostProperty(cpuid: CpuidFn, p: Property): number {
  return field(cpuid(p.fn, p.index), p);
}

/** this_cpu_has_p(): whether the host CPU's CPUID reaches `p`'s leaf. */
function hostHasProperty(cpuid: CpuidFn, p: Property): boolean {
  return maxLeafFor(p, (q) => hostProperty(cpuid, q)) >>> 0 >= p.fn >>> 0;
}

/** The vendor string CPUID leaf 0 gives (EBX, EDX, ECX). */
export function cpuVendor(cpuid: CpuidFn): string {
  const r = cpuid(0, 0);
  const b = Buffer.alloc(12);
  b.writeUInt32LE((r[1] ?? 0) >>> 0, 0);
  b.writeUInt32LE((r[3] ?? 0) >>> 0, 4);
  b.writeUInt32LE((r[2] ?? 0) >>> 0, 8);
  return b.toString('latin1');
}

/** x86_family() of CPUID leaf 1: the base family, plus the extended family when the base is 0xf. */
export function cpuFamily(cpuid: CpuidFn): number {
  const eax = (cpuid(1, 0)[0] ?? 0) >>> 0;
  const base = (eax >>> 8) & 0xf;
  return base === 0xf ? base + ((eax >>> 20) & 0xff) : base;
}

/**
 * host_cpu_is_amd_compatible: an AMD or Hygon CPU. Upstream's guests then use VMMCALL for a
 * hypercall (VMCALL on Intel), and vm_compute_max_gfn() leaves out the HyperTransport hole.
 */
export function hostCpuIsAmdCompatible(cpuid: CpuidFn): boolean {
  const v = cpuVendor(cpuid);
  return v === 'AuthenticAMD' || v === 'HygonGenuine';
}

/** The guest's address widths, as kvm_get_cpu_address_width() reads them. */
export interface AddressWidth {
  /** vm->pa_bits: physical-address bits. */
  paBits: number;
  /** vm->va_bits: virtual-address bits (48, or 57 with LA57). */
  vaBits: number;
}

/**
 * kvm_get_cpu_address_width(): MAXPHYADDR and the virtual-address width from KVM's leaf
 * 0x80000008, or 36 (with PAE) / 32 physical and 32 virtual bits when KVM does not list it.
 */
export function kvmCpuAddressWidth(supported: readonly CpuidEntry[]): AddressWidth {
  if (!kvmHasProperty(supported, MAX_PHY_ADDR)) {
    return { paBits: kvmProperty(supported, FEATURE_PAE) ? 36 : 32, vaBits: 32 };
  }
  return { paBits: kvmProperty(supported, MAX_PHY_ADDR), vaBits: kvmProperty(supported, MAX_VIRT_ADDR) };
}

/**
 * vm_compute_max_gfn() for x86 with 4 KiB pages: the largest guest frame a default-mode VM may
 * use. KVM's "guest MAXPHYADDR" (leaf 0x80000008 EAX[23:16], else the physical-address width)
 * bounds it; on an AMD-compatible host with 40 or more physical bits the 12 GiB HyperTransport
 * hole is left out, found from the host CPU's family, MAXPHYADDR and the SME/SEV address
 * reduction (leaf 0x8000001F EBX[11:6]).
 * @param supported KVM_GET_SUPPORTED_CPUID
 * @param cpuid the host CPU's own CPUID (upstream's this_cpu_*())
 * @throws RangeError when KVM's guest MAXPHYADDR exceeds its MAXPHYADDR (upstream asserts)
 */
export function computeMaxGfn(supported: readonly CpuidEntry[], cpuid: CpuidFn): bigint {
  const pageShift = 12n;
  const { paBits } = kvmCpuAddressWidth(supported);
  const guestMaxPhyAddr = kvmProperty(supported, GUEST_MAX_PHY_ADDR) || paBits;
  if (guestMaxPhyAddr > paBits) {
    throw new RangeError(`KVM's guest MAXPHYADDR (${guestMaxPhyAddr}) exceeds its MAXPHYADDR (${paBits})`);
  }
  const maxGfn = (1n << (BigInt(guestMaxPhyAddr) - pageShift)) - 1n;
  if (!hostCpuIsAmdCompatible(cpuid) || paBits < 40) return maxGfn;
  const numHtPages = 12n << (30n - pageShift); // 12 GiB
  let htGfn = (1n << 28n) - numHtPages; // before family 17h: just below 1 TiB
  if (cpuFamily(cpuid) >= 0x17 && hostHasProperty(cpuid, MAX_PHY_ADDR)) {
    let maxPfn = (1n << (BigInt(hostProperty(cpuid, MAX_PHY_ADDR)) - pageShift)) - 1n;
    if (hostHasProperty(cpuid, PHYS_ADDR_REDUCTION)) maxPfn >>= BigInt(hostProperty(cpuid, PHYS_ADDR_REDUCTION));
    htGfn = maxPfn - numHtPages;
  }
  return maxGfn < htGfn - 1n ? maxGfn : htGfn - 1n;
}
