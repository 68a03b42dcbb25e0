// The guests and boot support for the private-memory selftests: page tables with extra 2 MiB
// mappings beyond the identity map (walked as bytes: no KVM needed), and, on real KVM, the
// readpages guest through such a mapping above 512 GiB and the private_mem_conversions guest
// meeting KVM's own answer to a MAP_GPA_RANGE hypercall the VM never enabled.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GuestAssertionError, pageTablesSize, runUntilUcall, type ExtraMapping } from '../lib/guest/index.js';
import { pageTableBytes } from '../lib/guest/boot.js';
import { guestMemory } from '../lib/guest/memory.js';
import { Mapping, type Kvm, type MmioExit } from '../lib/index.js';
import type { CaseContext } from '../lib/selftest/harness.js';
import { selftestGuest, GiB, MiB } from '../lib/selftest/guest.js';
import { host } from './selftest-fixtures.js';
import { openKvm, skipOrFail, thrown } from './kvm-host.js';

const PAGE = 4096;
const TB = 1n << 40n;

/**
 * Translates `va` the way the MMU does with these tables (4-level paging, 2 MiB pages at the PD
 * level), reading the table pages out of `tables`, which sits at guest-physical `base`; undefined
 * where an entry is not present. Fails on anything but present+writable entries and large PDEs.
 */
function translate(tables: Uint8Array, base: bigint, va: bigint): bigint | undefined {
  const v = new DataView(tables.buffer, tables.byteOffset, tables.byteLength);
  const entry = (table: bigint, index: bigint): bigint => {
    const at = Number(table - base + index * 8n);
    expect(at >= 0 && at + 8 <= tables.length, `table 0x${table.toString(16)} inside the tables`).toBe(true);
    return v.getBigUint64(at, true);
  };
  const mask = 0x000f_ffff_ffff_f000n;
  const pml4e = entry(base, (va >> 39n) & 511n);
  if (pml4e === 0n) return undefined;
  expect(pml4e & 0xfffn).toBe(0x3n);
  const pdpte = entry(pml4e & mask, (va >> 30n) & 511n);
  if (pdpte === 0n) return undefined;
  expect(pdpte & 0xfffn).toBe(0x3n);
  const pde = entry(pdpte & mask, (va >> 21n) & 511n);
  if (pde === 0n) return undefined;
  expect(pde & 0xfffn).toBe(0x83n); // present, writable, 2 MiB page
  return (pde & 0x000f_ffff_ffe0_0000n) + (va & 0x1f_ffffn);
}

/** The number of non-zero u64 entries in table page `n` of `tables`. */
function entries(tables: Uint8Array, n: number): number {
  const v = new DataView(tables.buffer, tables.byteOffset + n * PAGE, PAGE);
  let count = 0;
  for (let i = 0; i < 512; i++) if (v.getBigUint64(i * 8, true) !== 0n) count++;
  return count;
}

describe('page tables with extra mappings (bytes walked here, no KVM)', () => {
  const base = 0x1000n;

  it('without extra mappings: the identity map as before (PML4, PDPT, one PD per GiB), nothing else', () => {
    const t = pageTableBytes(base, 2n * BigInt(GiB) + 4n * BigInt(MiB), []);
    expect(BigInt(t.length)).toBe(pageTablesSize(2 * GiB + 4 * MiB));
    expect(t.length).toBe(5 * PAGE);
    expect([0, 1, 2, 3, 4].map((n) => entries(t, n))).toEqual([1, 3, 512, 512, 2]);
    for (const va of [0n, 0x1234n, BigInt(GiB) + 0x20_1234n, 2n * BigInt(GiB) + 4n * BigInt(MiB) - 1n]) expect(translate(t, base, va)).toBe(va);
    expect(translate(t, base, 2n * BigInt(GiB) + 4n * BigInt(MiB))).toBeUndefined();
    expect(translate(t, base, 1n << 39n)).toBeUndefined();
    expect(pageTablesSize()).toBe(3n * 4096n);
  });

  it("pre_fault_memory_test's slot near the top of a 40-bit space: its own PDPT (PML4[1]) and PD after the identity tables", () => {
    const gpa = 0xfc_ffc0_0000n; // about 1012 GiB, 2 MiB-aligned
    const extra: ExtraMapping[] = [{ gva: gpa, gpa, size: 4 * MiB }];
    const id = 4n * BigInt(GiB) + 8n * BigInt(MiB); // conversions' 4 GiB + 2 vCPUs * 4 MiB, too
    const t = pageTableBytes(base, id, extra);
    // PML4, PDPT, 5 identity PDs, then the extra PDPT and PD: 9 pages.
    expect(t.length).toBe(9 * PAGE);
    expect(pageTablesSize(id, extra)).toBe(9n * 4096n);
    const v = new DataView(t.buffer);
    expect(v.getBigUint64(8, true)).toBe((base + 7n * 4096n) | 3n); // PML4[1] -> page 7
    expect(v.getBigUint64(7 * PAGE + Number((gpa >> 30n) & 511n) * 8, true)).toBe((base + 8n * 4096n) | 3n); // -> PD, page 8
    expect([entries(t, 0), entries(t, 7), entries(t, 8)]).toEqual([2, 1, 2]);
    for (const off of [0n, 0x1000n, 0x20_1000n, 4n * BigInt(MiB) - 8n]) expect(translate(t, base, gpa + off)).toBe(gpa + off);
    expect(translate(t, base, gpa - 1n)).toBeUndefined();
    expect(translate(t, base, gpa + 4n * BigInt(MiB))).toBeUndefined();
    // The identity map is untouched.
    expect(translate(t, base, id - 1n)).toBe(id - 1n);
    expect(translate(t, base, id)).toBeUndefined();
  });

  it('several mappings: PDPTs by PML4 index, then PDs by address; a PD or PDPT the identity map has is shared; gva and gpa may differ', () => {
    const id = 3n * BigInt(GiB) / 2n; // 1.5 GiB: its second PD is half used
    const extra: ExtraMapping[] = [
      { gva: 3n * TB, gpa: 0x4000_0000n, size: 2 * MiB }, // PML4[6]
      { gva: 0xffff_8000_0000_0000n, gpa: 0x20_0000n, size: 4 * MiB }, // upper half: PML4[256]
      { gva: 5n * BigInt(GiB), gpa: 0x10_0000_0000n, size: 2 * MiB }, // PML4[0], PDPT[5]: a new PD only
      { gva: id + 2n * BigInt(MiB), gpa: 0x2_0000_0000n, size: 2 * MiB }, // in the identity map's second PD
      { gva: TB - 2n * BigInt(MiB), gpa: 0x3_0000_0000n, size: 4 * MiB }, // crosses from PML4[1] into PML4[2]
    ];
    const t = pageTableBytes(base, id, extra);
    // 2 + 2 identity PDs; PDPTs for PML4 1, 2, 6, 256; PDs for GiB 5, 1023, 1024, 3072, upper.
    expect(t.length).toBe((4 + 4 + 5) * PAGE);
    expect(pageTablesSize(id, extra)).toBe(BigInt(t.length));
    const v = new DataView(t.buffer);
    const pml4 = (i: number) => v.getBigUint64(i * 8, true);
    expect([1, 2, 6, 256].map(pml4)).toEqual([4n, 5n, 6n, 7n].map((n) => (base + n * 4096n) | 3n));
    expect(pml4(0)).toBe((base + 4096n) | 3n);
    expect(entries(t, 0)).toBe(5);
    // PDs in address order: GiB 5 (page 8), 1023 (9), 1024 (10), 3072 (11), the upper half (12).
    expect(v.getBigUint64(PAGE + 5 * 8, true)).toBe((base + 8n * 4096n) | 3n);
    expect(v.getBigUint64(4 * PAGE + 511 * 8, true)).toBe((base + 9n * 4096n) | 3n);
    expect(v.getBigUint64(5 * PAGE, true)).toBe((base + 10n * 4096n) | 3n);
    expect(v.getBigUint64(6 * PAGE, true)).toBe((base + 11n * 4096n) | 3n);
    expect(v.getBigUint64(7 * PAGE, true)).toBe((base + 12n * 4096n) | 3n);
    expect(entries(t, 3)).toBe(256 + 1); // the identity PD of GiB 1: 256 identity entries and one extra

    const cases: [bigint, bigint][] = [
      [3n * TB + 0x123n, 0x4000_0123n],
      [0xffff_8000_0000_0000n + 0x20_0008n, 0x40_0008n],
      [5n * BigInt(GiB) + 0x1f_ffffn, 0x10_001f_ffffn],
      [id + 2n * BigInt(MiB) + 0x10n, 0x2_0000_0010n],
      [TB - 2n * BigInt(MiB), 0x3_0000_0000n],
      [TB + 0x1f_fff8n, 0x3_003f_fff8n],
      [id - 1n, id - 1n],
    ];
    for (const [va, pa] of cases) expect(translate(t, base, va), `0x${va.toString(16)}`).toBe(pa);
    for (const va of [id, id + 4n * BigInt(MiB), 3n * TB + 2n * BigInt(MiB), TB + 2n * BigInt(MiB), 0xffff_8000_0040_0000n]) {
      expect(translate(t, base, va), `0x${va.toString(16)}`).toBeUndefined();
    }
  });

  it('refuses misaligned, empty, non-canonical, beyond-2^52 and overlapping mappings with a RangeError, a non-array with a TypeError', () => {
    const id = BigInt(GiB);
    const bad: [ExtraMapping[], RegExp][] = [
      [[{ gva: 2n * id + 4096n, gpa: 2n * id, size: 2 * MiB }], /extraMappings\[0\]\.gva" must be 2 MiB-aligned/],
      [[{ gva: 2n * id, gpa: 2n * id + 4096n, size: 2 * MiB }], /extraMappings\[0\]\.gpa" must be 2 MiB-aligned/],
      [[{ gva: 2n * id, gpa: 2n * id, size: 2 * MiB + 4096 }], /extraMappings\[0\]\.size" must be a non-zero multiple of 2 MiB/],
      [[{ gva: 2n * id, gpa: 2n * id, size: 0 }], /non-zero multiple of 2 MiB/],
      [[{ gva: (1n << 47n) - 2n * BigInt(MiB), gpa: 0n, size: 4 * MiB }], /is not canonical/],
      [[{ gva: 1n << 47n, gpa: 0n, size: 2 * MiB }], /is not canonical/],
      [[{ gva: 0xffff_7fff_ffe0_0000n, gpa: 0n, size: 2 * MiB }], /is not canonical/],
      [[{ gva: 2n * id, gpa: (1n << 52n) - 2n * BigInt(MiB), size: 4 * MiB }], /must lie below 2\^52/],
      [[{ gva: id - 2n * BigInt(MiB), gpa: 8n * id, size: 4 * MiB }], /overlaps the identity map \[0, 0x40000000\)/],
      [[{ gva: 0n, gpa: 8n * id, size: 2 * MiB }], /overlaps the identity map/],
      [[{ gva: 2n * id, gpa: 0n, size: 4 * MiB }, { gva: 2n * id + 2n * BigInt(MiB), gpa: 0n, size: 2 * MiB }], /extraMappings\[1\]" range .* overlaps extraMappings\[0\]/],
    ];
    for (const [m, re] of bad) {
      const e = thrown(() => pageTableBytes(base, id, m));
      expect(e, e.message).toBeInstanceOf(RangeError);
      expect(e.message).toMatch(re);
      expect(() => pageTablesSize(id, m)).toThrow(RangeError);
    }
    // Two mappings may alias one guest-physical range; adjacent guest-virtual ranges are fine.
    expect(pageTableBytes(base, id, [{ gva: 2n * id, gpa: 0n, size: 2 * MiB }, { gva: 2n * id + 2n * BigInt(MiB), gpa: 0n, size: 2 * MiB }]).length).toBe(4 * PAGE);
    expect(() => pageTableBytes(base, id, 'x' as unknown as ExtraMapping[])).toThrow(TypeError);
    expect(() => pageTableBytes(base, id, [null as unknown as ExtraMapping])).toThrow(TypeError);
    expect(() => pageTableBytes(base, id, [{ gva: -1, gpa: 0, size: 2 * MiB }])).toThrow(RangeError);
  });

  it('selftestGuest refuses, before creating anything, page tables that would not fit below the first image', () => {
    const ctx = { get kvm(): never { throw new Error('selftestGuest created a VM') } } as unknown as CaseContext;
    // 2 + 13 PDs = 15 pages fit; 14 GiB needs 16.
    const e = thrown(() => selftestGuest(ctx, { identityMapSize: 14 * GiB }));
    expect(e).toBeInstanceOf(RangeError);
    expect(e.message).toMatch(/page tables take 16 pages; there is room for 15/);
    expect(() => selftestGuest(ctx, { extraMappings: [{ gva: 0, gpa: 0, size: 2 * MiB }] })).toThrow(/overlaps the identity map/);
    expect(() => selftestGuest(ctx, { identityMapSize: 13 * GiB })).toThrow('selftestGuest created a VM');
  });
});

/** A selftest case context over an open /dev/kvm, for selftestGuest; dispose closes what it used. */
function caseContext(kvm: Kvm): CaseContext & Disposable {
  const used: Disposable[] = [];
  const deferred: (() => void | Promise<void>)[] = [];
  return {
    kvm,
    host: host(),
    pageSize: PAGE,
    signal: new AbortController().signal,
    log: () => {},
    skip: (reason: string): never => {
      throw new Error(`skip: ${reason}`);
    },
    use: <T extends Disposable>(r: T): T => {
      used.push(r);
      return r;
    },
    defer: (fn) => void deferred.push(fn),
    [Symbol.dispose]() {
      for (const fn of deferred.reverse()) void fn();
      for (const r of used.reverse()) r[Symbol.dispose]();
      kvm.close();
    },
  };
}

/** The host CPU vendor is AMD or Hygon (upstream's host_cpu_is_amd_compatible: use vmmcall). */
function hostUsesVmmcall(): boolean {
  const vendor = /^vendor_id\s*:\s*(\S+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
  return vendor === 'AuthenticAMD' || vendor === 'HygonGenuine';
}

describe('private-memory guests on real KVM', () => {
  it('readpages reads every page of a slot mapped only through an extra mapping above 512 GiB, then DONE; off the mapping it faults', async (ctx) => {
    using c = caseContext(openKvm(ctx));
    // The guest-physical width KVM offers the guest (CPUID 0x80000008: EAX[23:16] if set, else EAX[7:0]).
    using probe = c.kvm.createVm();
    const leaf = probe.supportedCpuid().find((e) => e.function === 0x8000_0008);
    const eax = leaf?.eax ?? 0;
    const bits = ((eax >>> 16) & 0xff) || (eax & 0xff);
    skipOrFail(ctx, bits < 40 ? `the guest's MAXPHYADDR is ${bits} bits (CPUID 0x80000008); a slot above 512 GiB needs 40` : undefined);
    // Three quarters up the space: above 512 GiB from 40 bits on, and below AMD's HyperTransport hole.
    const gpa = 3n << BigInt(bits - 2);
    const size = 4 * MiB;
    const g = selftestGuest(c, { extraMappings: [{ gva: gpa, gpa, size }] });
    const data = c.use(Mapping.anonymous(size));
    g.vm.setUserMemoryRegion2({ slot: 10, guestPhysAddr: gpa, memorySize: size, userspaceAddr: data });
    guestMemory(g.vm, gpa, size).fill(0x5a);
    const reader = g.boot(0, 'readpages', [gpa, 513]); // pre_fault_memory_test's TEST_NPAGES
    expect((await runUntilUcall(reader, { signal: g.signal })).cmd).toBe('done');
    // Resumed, the ucall's OUT returns and restores RAX, the last value read, then hlt.
    expect(reader.run().reason).toBe('hlt');
    expect(reader.getRegs().rax).toBe(0x5a5a_5a5a_5a5a_5a5an);
    expect(data.bytes.every((b) => b === 0x5a)).toBe(true); // reads only
    // Past the mapping's end the guest page tables have nothing: #PF with no IDT, a triple fault.
    const outside = g.boot(1, 'readpages', [gpa + BigInt(size), 1]);
    expect((await outside.runAsync({ signal: g.signal })).reason).toBe('shutdown');
  });

  it('readpages with RSI = 0 reads one address forever: the same 8-byte MMIO read, exit after exit', (ctx) => {
    using c = caseContext(openKvm(ctx));
    const g = selftestGuest(c, { identityMapSize: 4 * GiB });
    const mmio = 0xc000_0000; // private_mem_kvm_exits_test's address, in no memslot here
    const vcpu = g.boot(0, 'readpages', [mmio, 0]);
    for (let i = 0; i < 3; i++) {
      const e = vcpu.run() as MmioExit;
      expect(e).toMatchObject({ reason: 'mmio', address: BigInt(mmio), length: 8, isWrite: false });
    }
  });

  it('private_mem_conversions on a default VM without KVM_CAP_EXIT_HYPERCALL: its first MAP_GPA_RANGE gets -KVM_ENOSYS from KVM and the guest aborts', async (ctx) => {
    using c = caseContext(openKvm(ctx));
    const base = 4n * BigInt(GiB); // upstream's BASE_DATA_GPA
    const per = 0x20_1000; // PER_CPU_DATA_SIZE
    const g = selftestGuest(c, { identityMapSize: 4 * GiB + 4 * MiB });
    const data = c.use(Mapping.anonymous(4 * MiB));
    g.vm.setUserMemoryRegion2({ slot: 10, guestPhysAddr: base, memorySize: 4 * MiB, userspaceAddr: data });
    const vcpu = g.boot(0, 'private_mem_conversions', [base, hostUsesVmmcall() ? 1 : 0]);
    // The first sync point: SYNC_SHARED over the whole range, 0xaa there, 0xcc wanted (upstream's host loop).
    const sync = await runUntilUcall(vcpu, { signal: g.signal });
    expect(sync.cmd).toBe('sync');
    expect(sync.args).toEqual([0n, base, BigInt(per), 0xaan, 0xccn]);
    expect(data.bytes.subarray(0, per).every((b) => b === 0xaa)).toBe(true);
    expect(data.bytes[per]).toBe(0);
    data.bytes.fill(0xcc, 0, per);
    // Then the first range (offset 0, one page) goes private: KVM answers the hypercall itself.
    const e = await runUntilUcall(vcpu, { signal: g.signal }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(GuestAssertionError);
    const uc = (e as GuestAssertionError).ucall;
    expect(uc.message).toBe('private_mem_conversions: map_gpa_range failed');
    const enosys = BigInt.asUintN(64, -1000n);
    expect(uc.args).toEqual([enosys, base, 4096n, 1n]); // result, gpa, size, MAP_GPA_SET_ATTRIBUTES
    // Resumed past the ABORT's OUT (which restores RAX), it halts with the hypercall's result in RAX.
    expect(vcpu.run().reason).toBe('hlt');
    expect(vcpu.getRegs().rax).toBe(enosys);
    expect(data.bytes[0]).toBe(0x11); // it had written pattern one first
    expect(data.bytes[4096]).toBe(0xcc);
  });
});
