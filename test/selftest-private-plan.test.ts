// The private-memory mirrors' plan on the hosts they meet (synthetic host facts, no kernel
// claims beyond what each host reports): the case list, the order, and the skip reasons that
// name the missing capability; and vm_compute_max_gfn() on synthetic CPUs.
import { describe, expect, it } from 'vitest';
import type { CpuidEntry } from '../lib/kvm/cpuid.js';
import type { HostFacts, VmTypeFacts } from '../lib/selftest/host.js';
import { planSelftests } from '../lib/selftest/plan.js';
import { computeMaxGfn, cpuFamily, cpuVendor, hostCpuIsAmdCompatible, kvmCpuAddressWidth, type CpuidFn } from '../lib/selftest/x86.js';
import { host as baseHost } from './selftest-fixtures.js';

const vt = (type: number, name: string, extra: Partial<VmTypeFacts> = {}): VmTypeFacts => ({
  type, name, gmemFlags: 0n, gmemMemslots: true, memoryAttributes: 0n, preFaultMemory: 0, exitHypercall: 0x1000n, ...extra,
});

/** kvm_pvm: shadow paging, one VM type. */
const pvm = (): HostFacts => ({ ...baseHost(), vmTypesCap: 1, vmTypes: [vt(0, 'DEFAULT', { gmemFlags: 3n })] });
/** Stock Linux 7.2 under nested kvm_amd npt=1: pre-faulting, no SW_PROTECTED. */
const stockTdp = (): HostFacts => ({
  ...baseHost(), release: '7.2.13+deb14-amd64', memoryAttributes: 0, vmTypesCap: 1,
  vmTypes: [vt(0, 'DEFAULT', { gmemFlags: 3n, preFaultMemory: 1 })],
  paging: { mode: 'tdp', source: '/sys/module/kvm_amd/parameters/npt = Y', module: 'kvm_amd' },
});
/** kvm built with CONFIG_KVM_SW_PROTECTED_VM, npt=1. */
const swProtected = (sw: Partial<VmTypeFacts> = {}): HostFacts => ({
  ...stockTdp(), memoryAttributes: 8, vmTypesCap: 3,
  vmTypes: [
    vt(0, 'DEFAULT', { gmemFlags: 3n, preFaultMemory: 1 }),
    vt(1, 'SW_PROTECTED', { gmemFlags: 1n, memoryAttributes: 8n, preFaultMemory: 1, ...sw }),
  ],
});
/** The same modules with npt=0: shadow paging, so no SW_PROTECTED and no pre-faulting. */
const swModulesNpt0 = (): HostFacts => ({
  ...stockTdp(), memoryAttributes: 8, vmTypes: [vt(0, 'DEFAULT', { gmemFlags: 3n })],
  paging: { mode: 'shadow', source: '/sys/module/kvm_amd/parameters/npt = N', module: 'kvm_amd' },
});

const PRIVATE_CASES = [
  'pre_fault_memory_test.test_pre_fault_memory [vm_type=DEFAULT private=0]',
  'pre_fault_memory_test.test_pre_fault_memory [vm_type=SW_PROTECTED private=0]',
  'pre_fault_memory_test.test_pre_fault_memory [vm_type=SW_PROTECTED private=1]',
  'private_mem_kvm_exits_test.test_private_access_memslot_deleted',
  'private_mem_kvm_exits_test.test_private_access_memslot_not_private',
  'private_mem_conversions_test.test_mem_conversions [src=anonymous vcpus=1 memslots=1]',
  'private_mem_conversions_test.test_mem_conversions [src=anonymous vcpus=1 memslots=2]',
  'private_mem_conversions_test.test_mem_conversions [src=anonymous vcpus=2 memslots=1]',
  'private_mem_conversions_test.test_mem_conversions [src=anonymous vcpus=2 memslots=2]',
];
const GROUPS = ['pre_fault_memory_test', 'private_mem_kvm_exits_test', 'private_mem_conversions_test'];

/** name -> skip reason ('' when the case runs) of the private-memory cases. */
function privatePlan(h: HostFacts): Map<string, string> {
  return new Map(planSelftests(h).filter((c) => GROUPS.includes(c.group)).map((c) => [c.name, c.skipReason ?? '']));
}

const NO_SW = 'KVM_CAP_VM_TYPES 0x1 lacks KVM_X86_SW_PROTECTED_VM (KVM offers it only when built with CONFIG_KVM_SW_PROTECTED_VM and using the TDP MMU)';

describe('private-memory mirrors: plan', () => {
  it('appends the three groups after the existing ones, one case per upstream call, in upstream order', () => {
    for (const h of [pvm(), stockTdp(), swProtected(), baseHost(false)]) {
      const cases = planSelftests(h);
      const groups = [...new Set(cases.map((c) => c.group))];
      expect(groups.slice(-3)).toEqual(GROUPS);
      expect(cases.filter((c) => GROUPS.includes(c.group)).map((c) => c.name)).toEqual(PRIVATE_CASES);
    }
  });

  it('names the source function and the VM type of each case', () => {
    const cases = planSelftests(swProtected()).filter((c) => GROUPS.includes(c.group));
    expect(cases.map((c) => c.source)).toEqual([
      ...Array<string>(3).fill('test_pre_fault_memory'), 'test_private_access_memslot_deleted', 'test_private_access_memslot_not_private',
      ...Array<string>(4).fill('test_mem_conversions'),
    ]);
    expect(cases.map((c) => c.vmType)).toEqual(['DEFAULT', ...Array<string>(8).fill('SW_PROTECTED')]);
    for (const c of cases) expect(c.summary.length).toBeGreaterThan(20);
  });

  it('SW_PROTECTED host (npt=1, rebuilt modules): every case runs', () => {
    for (const [name, skip] of privatePlan(swProtected())) expect(skip, name).toBe('');
  });

  it('kvm_pvm (shadow paging, one VM type): pre-faulting is 0, SW_PROTECTED missing', () => {
    const plan = privatePlan(pvm());
    const preFault = 'KVM_CAP_PRE_FAULT_MEMORY is 0 (on a DEFAULT VM: shadow paging; x86 offers it only with TDP; test)';
    for (const name of PRIVATE_CASES.slice(0, 3)) expect(plan.get(name)).toBe(preFault);
    for (const name of PRIVATE_CASES.slice(3)) expect(plan.get(name)).toBe(NO_SW);
  });

  it('stock kernel with npt=1: only the default-VM pre-fault runs; the rest lack SW_PROTECTED', () => {
    const plan = privatePlan(stockTdp());
    expect(plan.get(PRIVATE_CASES[0]!)).toBe('');
    for (const name of PRIVATE_CASES.slice(1)) expect(plan.get(name)).toBe(NO_SW);
  });

  it('SW_PROTECTED modules with npt=0: no pre-faulting and no SW_PROTECTED (it needs the TDP MMU)', () => {
    const plan = privatePlan(swModulesNpt0());
    for (const name of PRIVATE_CASES.slice(0, 3)) {
      expect(plan.get(name)).toBe('KVM_CAP_PRE_FAULT_MEMORY is 0 (on a DEFAULT VM: shadow paging; x86 offers it only with TDP; /sys/module/kvm_amd/parameters/npt = N)');
    }
    for (const name of PRIVATE_CASES.slice(3)) expect(plan.get(name)).toBe(NO_SW);
  });

  it('a SW_PROTECTED VM without PRIVATE, without the MAP_GPA_RANGE exit, or without pre-faulting: the cases that need it say which', () => {
    const noAttr = privatePlan(swProtected({ memoryAttributes: 0n }));
    const attr = 'KVM_CAP_MEMORY_ATTRIBUTES on a SW_PROTECTED VM lacks PRIVATE (0x0)';
    expect([...noAttr.values()]).toEqual(['', '', attr, attr, attr, attr, attr, attr, attr]);

    const noExit = privatePlan(swProtected({ exitHypercall: 0n }));
    const exit = 'KVM_CAP_EXIT_HYPERCALL on a SW_PROTECTED VM lacks KVM_HC_MAP_GPA_RANGE (0x0, needs 0x1000)';
    expect([...noExit.values()]).toEqual(['', '', '', '', '', exit, exit, exit, exit]);

    const noPreFault = privatePlan(swProtected({ preFaultMemory: 0 }));
    const pf = 'KVM_CAP_PRE_FAULT_MEMORY is 0 (on a SW_PROTECTED VM: TDP is on, yet KVM does not offer it; /sys/module/kvm_amd/parameters/npt = Y)';
    expect([...noPreFault.values()]).toEqual(['', pf, pf, '', '', '', '', '', '']);

    const cannot = privatePlan(swProtected({ createError: 'Invalid argument' }));
    expect([...cannot.values()].slice(1).every((r) => r === 'a VM of type SW_PROTECTED cannot be created here: Invalid argument')).toBe(true);
  });

  it('without KVM: no reason decided in the plan (the runner skips each case with why /dev/kvm is unusable)', () => {
    for (const [name, skip] of privatePlan(baseHost(false))) expect(skip, name).toBe('');
  });
});

// ---- vm_compute_max_gfn() --------------------------------------------------------------------

/** A CPU from leaf -> [eax, ebx, ecx, edx]; unlisted leaves read 0. */
function cpu(leaves: Record<number, [number, number, number, number]>): CpuidFn {
  return (leaf) => leaves[leaf] ?? [0, 0, 0, 0];
}

function vendorLeaf(vendor: string, maxBasic = 0xd): [number, number, number, number] {
  const b = Buffer.from(vendor, 'latin1');
  return [maxBasic, b.readUInt32LE(0), b.readUInt32LE(8), b.readUInt32LE(4)];
}

/** Leaf 1 EAX for a family (extended family when above 0xf). */
const fms = (family: number) => (family < 0xf ? family << 8 : (0xf << 8) | ((family - 0xf) << 20));

/** KVM_GET_SUPPORTED_CPUID with leaf 0x80000008 EAX = `eax` (and the extended maximum). */
const kvmTable = (eax?: number, pae = true): CpuidEntry[] => {
  const e = (fn: number, regs: Partial<CpuidEntry>): CpuidEntry => ({ function: fn, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...regs });
  const t = [e(0, { eax: 0xd }), e(1, { edx: pae ? 1 << 6 : 0 })];
  if (eax === undefined) return [...t, e(0x80000000, { eax: 0x80000001 })];
  return [...t, e(0x80000000, { eax: 0x80000021 }), e(0x80000008, { eax })];
};

describe('private-memory mirrors: vm_compute_max_gfn()', () => {
  it('reads vendor and family as upstream does', () => {
    const amd = cpu({ 0: vendorLeaf('AuthenticAMD'), 1: [fms(0x19), 0, 0, 0] });
    expect(cpuVendor(amd)).toBe('AuthenticAMD');
    expect(cpuFamily(amd)).toBe(0x19);
    expect(hostCpuIsAmdCompatible(amd)).toBe(true);
    expect(hostCpuIsAmdCompatible(cpu({ 0: vendorLeaf('HygonGenuine') }))).toBe(true);
    expect(hostCpuIsAmdCompatible(cpu({ 0: vendorLeaf('GenuineIntel') }))).toBe(false);
  });

  it('address widths: KVM\'s leaf 0x80000008, else 36 (PAE) or 32 bits', () => {
    expect(kvmCpuAddressWidth(kvmTable(0x3028))).toEqual({ paBits: 40, vaBits: 48 });
    expect(kvmCpuAddressWidth(kvmTable(0x3934))).toEqual({ paBits: 52, vaBits: 57 });
    expect(kvmCpuAddressWidth(kvmTable(undefined))).toEqual({ paBits: 36, vaBits: 32 });
    expect(kvmCpuAddressWidth(kvmTable(undefined, false))).toEqual({ paBits: 32, vaBits: 32 });
  });

  it('Intel: the whole guest MAXPHYADDR (or MAXPHYADDR when KVM gives none)', () => {
    const intel = cpu({ 0: vendorLeaf('GenuineIntel'), 1: [fms(6), 0, 0, 0] });
    expect(computeMaxGfn(kvmTable(0x3027), intel)).toBe((1n << 27n) - 1n);
    expect(computeMaxGfn(kvmTable(0x303034), intel)).toBe((1n << 36n) - 1n); // guest MAXPHYADDR 48 < 52
  });

  it('AMD before family 17h with 40 bits (QEMU TCG\'s -cpu max): the HyperTransport hole below 1 TiB', () => {
    const tcg = cpu({ 0: vendorLeaf('AuthenticAMD'), 1: [fms(6), 0, 0, 0], 0x80000000: [0x8000000a, 0, 0, 0], 0x80000008: [0x3028, 0, 0, 0] });
    const maxGfn = computeMaxGfn(kvmTable(0x3028), tcg);
    expect(maxGfn).toBe(0xfcfffffn);
    // pre_fault_memory_test's slot then starts at 0xfcffc00000 (~1012 GiB).
    expect(((maxGfn - 513n) * 4096n) & ~0x1fffffn).toBe(0xfcffc00000n);
  });

  it('AMD family 17h+: below the top of the host\'s address space, less the SME/SEV reduction', () => {
    const leaves = { 0: vendorLeaf('AuthenticAMD'), 1: [fms(0x19), 0, 0, 0] as [number, number, number, number] };
    const withReduction = cpu({ ...leaves, 0x80000000: [0x80000021, 0, 0, 0], 0x80000008: [0x3030, 0, 0, 0], 0x8000001f: [0, 5 << 6, 0, 0] });
    const htGfn = (((1n << 36n) - 1n) >> 5n) - (12n << 18n);
    expect(computeMaxGfn(kvmTable(0x3030), withReduction)).toBe(htGfn - 1n);
    // No leaf 0x8000001F: no reduction.
    const noSme = cpu({ ...leaves, 0x80000000: [0x80000008, 0, 0, 0], 0x80000008: [0x3030, 0, 0, 0], 0x8000001f: [0, 5 << 6, 0, 0] });
    expect(computeMaxGfn(kvmTable(0x3030), noSme)).toBe((1n << 36n) - 1n - (12n << 18n) - 1n);
    // No leaf 0x80000008 on the host: the old value below 1 TiB.
    const old = cpu({ ...leaves, 0x80000000: [0x80000001, 0, 0, 0] });
    expect(computeMaxGfn(kvmTable(0x3030), old)).toBe((1n << 28n) - (12n << 18n) - 1n);
  });

  it('AMD with fewer than 40 bits: the hole is out of reach, nothing left out', () => {
    const amd = cpu({ 0: vendorLeaf('AuthenticAMD'), 1: [fms(6), 0, 0, 0] });
    expect(computeMaxGfn(kvmTable(0x3027), amd)).toBe((1n << 27n) - 1n);
  });

  it('a guest MAXPHYADDR above MAXPHYADDR is refused, as upstream asserts', () => {
    expect(() => computeMaxGfn(kvmTable(0x343028), cpu({}))).toThrow(RangeError);
  });
});
