/**
 * x86-64 guest helpers: put a vCPU straight into 64-bit long mode (no firmware, no real-mode
 * start), with identity-mapped page tables written into guest memory the caller chooses; load a
 * flat guest image; set the entry point, the stack and the arguments.
 *
 * What the guest gets: CS a flat 64-bit code segment, DS/ES/FS/GS/SS flat data segments, paging
 * with 2 MiB pages mapping guest-virtual = guest-physical for [0, identityMapSize) plus any extra
 * mappings the caller asks for (e.g. a slot near the top of a large guest-physical space), SSE
 * enabled, interrupts off, and an empty IDT, so any exception ends in a triple fault (a `shutdown`
 * exit) rather than in code nobody wrote.
 * @module
 */
import { PAGE_SIZE } from '../core/constants.js';
import type { CpuidEntry } from '../kvm/cpuid.js';
import { options, u64 } from '../core/numbers.js';
import type { Vcpu } from '../kvm/vcpu.js';
import type { Vm } from '../kvm/vm.js';
import type { Segment } from '../kvm/x86-state.js';
import { argTypeError, argRangeError } from '../core/errors.js';
import { guestMemory } from './memory.js';

/** Control-register and EFER bits (Intel SDM vol. 3, 2.5). */
export const X86 = {
  CR0_PE: 1n << 0n, CR0_MP: 1n << 1n, CR0_ET: 1n << 4n, CR0_NE: 1n << 5n,
  CR0_WP: 1n << 16n, CR0_AM: 1n << 18n, CR0_PG: 1n << 31n,
  CR4_PAE: 1n << 5n, CR4_OSFXSR: 1n << 9n, CR4_OSXMMEXCPT: 1n << 10n,
  EFER_SCE: 1n << 0n, EFER_LME: 1n << 8n, EFER_LMA: 1n << 10n, EFER_NXE: 1n << 11n,
  /** RFLAGS bit 1 is reserved and always set. */
  RFLAGS_FIXED: 1n << 1n,
} as const;

const GIB = 1n << 30n;
const LARGE_PAGE = 2n << 20n;
/** The lower canonical half of a 48-bit address space ends here; the upper half starts at 2^64 - 2^47. */
const LOWER_HALF_END = 1n << 47n;
const UPPER_HALF_START = (1n << 64n) - LOWER_HALF_END;
/** The architectural limit of guest-physical addresses (MAXPHYADDR at most 52). */
const GPA_LIMIT = 1n << 52n;
const PTE_PRESENT_RW = 0x3n;
const PDE_LARGE = 0x80n;

/**
 * A mapping of guest-virtual [gva, gva + size) to guest-physical [gpa, gpa + size) with 2 MiB
 * pages, beside the identity map (see {@link LongModeOptions.extraMappings}).
 */
export interface ExtraMapping {
  /** First guest-virtual address: 2 MiB-aligned, canonical (48-bit), outside the identity map. */
  gva: number | bigint;
  /** First guest-physical address: 2 MiB-aligned, the range below 2^52. */
  gpa: number | bigint;
  /** Bytes mapped: a non-zero multiple of 2 MiB. */
  size: number | bigint;
}

/** Options for {@link setupLongMode}. */
export interface LongModeOptions {
  /**
   * Guest-physical address (page-aligned) where the page tables are written: a PML4, a PDPT and
   * one page directory per GiB identity-mapped, then the tables of {@link extraMappings};
   * {@link pageTablesSize} says how much room that takes. It must lie in a memslot set with a
   * Mapping (see `guestMemory()`).
   */
  pageTables: number | bigint;
  /** How much to identity-map from address 0, a multiple of 2 MiB up to 512 GiB. Default 1 GiB. */
  identityMapSize?: number | bigint;
  /**
   * More guest memory to map, with 2 MiB pages, beyond the identity map: for guest-physical
   * ranges the identity map cannot reach, such as the kernel's pre_fault_memory_test slot near the
   * top of a 40-bit guest-physical space (about 1012 GiB, past the 512 GiB one PML4 entry covers),
   * usually with gva = gpa. Each needs its own PDPT page per 512 GiB (PML4 entry) the identity
   * map does not use and its own page directory per GiB the identity map does not cover; they are
   * written after the identity tables, PDPTs first (by PML4 index), then page directories (by
   * address). Ranges must not overlap the identity map or each other (in guest-virtual terms;
   * two mappings may alias one guest-physical range). Default none.
   */
  extraMappings?: readonly ExtraMapping[];
  /**
   * The CPUID to give a vCPU that has none yet (KVM_SET_CPUID2) before its long-mode registers
   * are set. Default: everything KVM supports (`vm.supportedCpuid()`), as the kernel's own
   * selftest library does. A vCPU that already has CPUID keeps it.
   */
  cpuid?: readonly CpuidEntry[];
}

/**
 * Bytes of page tables that identity-mapping `identityMapSize` bytes takes (PML4 + PDPT + PDs),
 * plus the tables of `extraMappings` (see {@link LongModeOptions.extraMappings}).
 * @throws RangeError for a bad size or mapping (as {@link setupLongMode} would)
 */
export function pageTablesSize(identityMapSize: number | bigint = GIB, extraMappings: readonly ExtraMapping[] = []): bigint {
  const size = checkMapSize(identityMapSize);
  const plan = planExtraMappings(extraMappings, size);
  return BigInt(PAGE_SIZE) * (2n + identityPds(size) + BigInt(plan.pdpts.length + plan.pds.length));
}

/** Page directories the identity map takes: one per GiB started. */
function identityPds(mapSize: bigint): bigint {
  return (mapSize + GIB - 1n) / GIB;
}

/** The PML4 entry (bits 47:39 of the address) of GiB number `g` (address >> 30). */
function pml4Index(g: bigint): bigint {
  return (g / 512n) % 512n;
}

/** The checked mappings and the table pages they add, in layout order. */
interface ExtraPlan {
  mappings: { gva: bigint; gpa: bigint; size: bigint }[];
  /** PML4 indices (0..511) that get a new PDPT page (not 0: that is the identity map's). */
  pdpts: bigint[];
  /** GiB indices (gva >> 30) that get a new page directory (not the identity map's). */
  pds: bigint[];
}

function planExtraMappings(value: unknown, mapSize: bigint): ExtraPlan {
  if (!Array.isArray(value)) throw argTypeError('The "extraMappings" option must be an array of { gva, gpa, size }');
  const mappings: ExtraPlan['mappings'] = [];
  const pdpts = new Set<bigint>();
  const pds = new Set<bigint>();
  const idPds = identityPds(mapSize);
  (value as readonly unknown[]).forEach((m, i) => {
    const name = `extraMappings[${i}]`;
    const o = options(m, name);
    const gva = u64(o.gva, `${name}.gva`);
    const gpa = u64(o.gpa, `${name}.gpa`);
    const size = u64(o.size, `${name}.size`);
    const hex = (v: bigint) => `0x${v.toString(16)}`;
    if (size === 0n || size % LARGE_PAGE !== 0n) throw argRangeError(`The "${name}.size" must be a non-zero multiple of 2 MiB; received ${hex(size)}`);
    if (gva % LARGE_PAGE !== 0n) throw argRangeError(`The "${name}.gva" must be 2 MiB-aligned; received ${hex(gva)}`);
    if (gpa % LARGE_PAGE !== 0n) throw argRangeError(`The "${name}.gpa" must be 2 MiB-aligned; received ${hex(gpa)}`);
    const end = gva + size;
    const lower = end <= LOWER_HALF_END;
    if (!lower && !(gva >= UPPER_HALF_START && end <= 1n << 64n)) {
      throw argRangeError(`The "${name}" range [${hex(gva)}, ${hex(end)}) is not canonical: it must lie below 2^47 or from 2^64 - 2^47 up (48-bit virtual addresses)`);
    }
    if (gpa + size > GPA_LIMIT) throw argRangeError(`The "${name}" guest-physical range [${hex(gpa)}, ${hex(gpa + size)}) must lie below 2^52`);
    if (gva < mapSize) throw argRangeError(`The "${name}" range [${hex(gva)}, ${hex(end)}) overlaps the identity map [0, ${hex(mapSize)})`);
    const clash = mappings.findIndex((p) => gva < p.gva + p.size && p.gva < end);
    if (clash >= 0) throw argRangeError(`The "${name}" range [${hex(gva)}, ${hex(end)}) overlaps extraMappings[${clash}]`);
    mappings.push({ gva, gpa, size });
    for (let g = gva / GIB; g <= (end - 1n) / GIB; g++) {
      const pml4 = pml4Index(g);
      if (pml4 !== 0n) pdpts.add(pml4);
      if (pml4 !== 0n || g >= idPds) pds.add(g);
    }
  });
  const order = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);
  return { mappings, pdpts: [...pdpts].sort(order), pds: [...pds].sort(order) };
}

function checkMapSize(value: number | bigint): bigint {
  const size = u64(value, 'identityMapSize');
  if (size === 0n || size % LARGE_PAGE !== 0n || size > 512n * GIB) {
    throw argRangeError(`The "identityMapSize" argument must be a non-zero multiple of 2 MiB up to 512 GiB; received ${size}`);
  }
  return size;
}

/**
 * The page tables {@link setupLongMode} writes at guest-physical `base`, as bytes: PML4, the
 * identity map's PDPT and page directories, then the extra mappings' PDPTs and page directories
 * (see {@link LongModeOptions.extraMappings}); {@link pageTablesSize} bytes long.
 * @throws RangeError for a bad size or mapping
 * @internal
 */
export function pageTableBytes(base: bigint, identityMapSize: number | bigint, extraMappings: readonly ExtraMapping[]): Uint8Array {
  const mapSize = checkMapSize(identityMapSize);
  const plan = planExtraMappings(extraMappings, mapSize);
  const idPds = Number(identityPds(mapSize));
  const bytes = new Uint8Array(PAGE_SIZE * (2 + idPds + plan.pdpts.length + plan.pds.length));
  const v = new DataView(bytes.buffer);
  const page = BigInt(PAGE_SIZE);
  const pdpt = base + page;
  v.setBigUint64(0, pdpt | PTE_PRESENT_RW, true); // PML4[0] -> PDPT
  for (let g = 0; g < idPds; g++) {
    const pd = base + page * BigInt(2 + g);
    v.setBigUint64(PAGE_SIZE + g * 8, pd | PTE_PRESENT_RW, true); // PDPT[g] -> PD
    for (let i = 0; i < 512; i++) {
      const addr = BigInt(g) * GIB + BigInt(i) * LARGE_PAGE;
      if (addr >= mapSize) break;
      v.setBigUint64((2 + g) * PAGE_SIZE + i * 8, addr | PTE_PRESENT_RW | PDE_LARGE, true);
    }
  }
  // The extra mappings: PDPT pages, then page directories, after the identity tables.
  const pdptPage = new Map<bigint, number>([[0n, 1]]); // PML4 index -> page number within the tables
  plan.pdpts.forEach((pml4, k) => pdptPage.set(pml4, 2 + idPds + k));
  const pdPage = new Map<bigint, number>(); // GiB number -> page number within the tables
  for (let g = 0; g < idPds; g++) pdPage.set(BigInt(g), 2 + g);
  plan.pds.forEach((g, k) => pdPage.set(g, 2 + idPds + plan.pdpts.length + k));
  for (const pml4 of plan.pdpts) v.setBigUint64(Number(pml4) * 8, (base + page * BigInt(pdptPage.get(pml4)!)) | PTE_PRESENT_RW, true);
  for (const g of plan.pds) {
    const at = pdptPage.get(pml4Index(g))!;
    v.setBigUint64(at * PAGE_SIZE + Number(g % 512n) * 8, (base + page * BigInt(pdPage.get(g)!)) | PTE_PRESENT_RW, true);
  }
  for (const m of plan.mappings) {
    for (let off = 0n; off < m.size; off += LARGE_PAGE) {
      const va = m.gva + off;
      const pd = pdPage.get(va / GIB)!;
      v.setBigUint64(pd * PAGE_SIZE + Number((va / LARGE_PAGE) % 512n) * 8, (m.gpa + off) | PTE_PRESENT_RW | PDE_LARGE, true);
    }
  }
  return bytes;
}

/**
 * Writes identity-mapped page tables (and those of `opts.extraMappings`) into guest memory at
 * `pageTables` and sets the vCPU's
 * special registers for 64-bit long mode (ioctls KVM_GET_SREGS and KVM_SET_SREGS). A vCPU with no
 * CPUID gets `opts.cpuid` (default: all KVM supports) first (KVM_GET_CPUID2, KVM_SET_CPUID2):
 * since "KVM: x86: Check EFER validity on KVM_SET_SREGS*" (Linux 7.2, marked for stable) KVM
 * refuses EFER.LME/LMA on a vCPU whose CPUID lacks long mode.
 * @returns the guest-physical range the tables occupy
 * @throws RangeError for a bad address, size or extra mapping (misaligned, not canonical, past
 * 2^52, overlapping the identity map or another one), or tables outside memory the host can reach
 * (the option checks come before any kernel call); TypeError for an extraMappings that is not an
 * array of objects; KvmError from KVM_SET_SREGS
 */
export function setupLongMode(vcpu: Vcpu, opts: LongModeOptions): { start: bigint; end: bigint } {
  const o = options(opts, 'options');
  const base = u64(o.pageTables, 'pageTables');
  if (base % BigInt(PAGE_SIZE) !== 0n) throw argRangeError(`The "pageTables" address must be page-aligned; received 0x${base.toString(16)}`);
  const tables = pageTableBytes(base, (o.identityMapSize as number | bigint | undefined) ?? GIB, (o.extraMappings ?? []) as readonly ExtraMapping[]);
  const cpuid = o.cpuid as readonly CpuidEntry[] | undefined;
  if (vcpu.getCpuid2().length === 0) vcpu.setCpuid2(cpuid ?? vcpu.vm.supportedCpuid());
  guestMemory(vcpu.vm, base, tables.length).set(tables);

  const s = vcpu.getSregs();
  const flat = (selector: number, type: number, code: boolean): Segment => ({
    base: 0n, limit: 0xffffffff, selector, type, present: 1, dpl: 0, db: code ? 0 : 1, s: 1,
    l: code ? 1 : 0, g: 1, avl: 0, unusable: 0,
  });
  s.cs = flat(0x08, 11, true);
  s.ds = s.es = s.fs = s.gs = s.ss = flat(0x10, 3, false);
  // A 64-bit busy TSS and no LDT: what VMX checks on entry into long mode.
  s.tr = { base: 0n, limit: 0x67, selector: 0x18, type: 11, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
  s.ldt = { base: 0n, limit: 0, selector: 0, type: 2, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 };
  s.gdt = { base: 0n, limit: 0 };
  s.idt = { base: 0n, limit: 0 };
  s.cr3 = base;
  s.cr4 = X86.CR4_PAE | X86.CR4_OSFXSR | X86.CR4_OSXMMEXCPT;
  s.cr0 = X86.CR0_PE | X86.CR0_MP | X86.CR0_ET | X86.CR0_NE | X86.CR0_WP | X86.CR0_AM | X86.CR0_PG;
  s.efer = X86.EFER_LME | X86.EFER_LMA;
  vcpu.setSregs(s);
  return { start: base, end: base + BigInt(tables.length) };
}

/**
 * Copies a flat guest image into guest memory at `gpa` (through `guestMemory()`).
 * @throws RangeError if no memslot with a Mapping covers [gpa, gpa + image.length)
 */
export function loadImage(vm: Vm, image: Uint8Array, gpa: number | bigint): void {
  if (!(image instanceof Uint8Array)) throw argTypeError('The "image" argument must be a Uint8Array');
  guestMemory(vm, gpa, image.length).set(image);
}

/** Where a guest starts (see {@link setEntry}). */
export interface EntryOptions {
  /** Guest address of the first instruction. */
  entry: number | bigint;
  /** Initial stack pointer (the stack grows down from it). */
  stack: number | bigint;
  /** Up to six arguments, in the System V order: rdi, rsi, rdx, rcx, r8, r9. */
  args?: readonly (number | bigint)[];
}

const ARG_REGS = ['rdi', 'rsi', 'rdx', 'rcx', 'r8', 'r9'] as const;

/**
 * Sets rip, rsp and the argument registers, and clears every other general-purpose register
 * (ioctls KVM_GET_REGS / KVM_SET_REGS).
 */
export function setEntry(vcpu: Vcpu, opts: EntryOptions): void {
  const o = options(opts, 'options');
  const args = (o.args ?? []) as readonly unknown[];
  if (!Array.isArray(args) || args.length > ARG_REGS.length) {
    throw argTypeError(`The "args" option must be an array of at most ${ARG_REGS.length} numbers`);
  }
  const regs = vcpu.getRegs();
  for (const k of Object.keys(regs) as (keyof typeof regs)[]) regs[k] = 0n;
  regs.rip = u64(o.entry, 'entry');
  regs.rsp = u64(o.stack, 'stack');
  regs.rflags = X86.RFLAGS_FIXED;
  args.forEach((a, i) => (regs[ARG_REGS[i]!] = u64(a, `args[${i}]`)));
  vcpu.setRegs(regs);
}

/** Everything {@link bootGuest} needs. */
export interface BootOptions extends LongModeOptions {
  /** The flat image (e.g. `guestImage('hello')`). */
  image: Uint8Array;
  /** Where to load it; execution starts at its first byte. */
  loadAt: number | bigint;
  /** Initial stack pointer. */
  stack: number | bigint;
  /** Arguments in rdi, rsi, rdx, rcx, r8, r9. */
  args?: readonly (number | bigint)[];
}

/**
 * Long mode, image and entry in one call: setupLongMode(), loadImage(), setEntry().
 * @returns where the page tables went
 */
export function bootGuest(vcpu: Vcpu, opts: BootOptions): { start: bigint; end: bigint } {
  const o = options(opts, 'options') as unknown as BootOptions;
  const tables = setupLongMode(vcpu, o);
  loadImage(vcpu.vm, o.image, o.loadAt);
  setEntry(vcpu, { entry: o.loadAt, stack: o.stack, ...(o.args ? { args: o.args } : {}) });
  return tables;
}
