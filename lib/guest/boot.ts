/**
 * x86-64 guest helpers: put a vCPU straight into 64-bit long mode (no firmware, no real-mode
 * start), with identity-mapped page tables written into guest memory the caller chooses; load a
 * flat guest image; set the entry point, the stack and the arguments.
 *
 * What the guest gets: CS a flat 64-bit code segment, DS/ES/FS/GS/SS flat data segments, paging
 * with 2 MiB pages mapping guest-virtual = guest-physical for [0, identityMapSize), SSE enabled,
 * interrupts off, and an empty IDT, so any exception ends in a triple fault (a `shutdown` exit)
 * rather than in code nobody wrote.
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
const PTE_PRESENT_RW = 0x3n;
const PDE_LARGE = 0x80n;

/** Options for {@link setupLongMode}. */
export interface LongModeOptions {
  /**
   * Guest-physical address (page-aligned) where the page tables are written: a PML4, a PDPT and
   * one page directory per GiB mapped; {@link pageTablesSize} says how much room that takes. It
   * must lie in a memslot set with a Mapping (see `guestMemory()`).
   */
  pageTables: number | bigint;
  /** How much to identity-map from address 0, a multiple of 2 MiB up to 512 GiB. Default 1 GiB. */
  identityMapSize?: number | bigint;
  /**
   * The CPUID to give a vCPU that has none yet (KVM_SET_CPUID2) before its long-mode registers
   * are set. Default: everything KVM supports (`vm.supportedCpuid()`), as the kernel's own
   * selftest library does. A vCPU that already has CPUID keeps it.
   */
  cpuid?: readonly CpuidEntry[];
}

/** Bytes of page tables that identity-mapping `identityMapSize` bytes takes (PML4 + PDPT + PDs). */
export function pageTablesSize(identityMapSize: number | bigint = GIB): bigint {
  const size = checkMapSize(identityMapSize);
  return BigInt(PAGE_SIZE) * (2n + (size + GIB - 1n) / GIB);
}

function checkMapSize(value: number | bigint): bigint {
  const size = u64(value, 'identityMapSize');
  if (size === 0n || size % LARGE_PAGE !== 0n || size > 512n * GIB) {
    throw argRangeError(`The "identityMapSize" argument must be a non-zero multiple of 2 MiB up to 512 GiB; received ${size}`);
  }
  return size;
}

/**
 * Writes identity-mapped page tables into guest memory at `pageTables` and sets the vCPU's
 * special registers for 64-bit long mode (ioctls KVM_GET_SREGS and KVM_SET_SREGS). A vCPU with no
 * CPUID gets `opts.cpuid` (default: all KVM supports) first (KVM_GET_CPUID2, KVM_SET_CPUID2):
 * since "KVM: x86: Check EFER validity on KVM_SET_SREGS*" (Linux 7.2, marked for stable) KVM
 * refuses EFER.LME/LMA on a vCPU whose CPUID lacks long mode.
 * @returns the guest-physical range the tables occupy
 * @throws RangeError for a bad address or size, or tables outside memory the host can reach;
 * KvmError from KVM_SET_SREGS
 */
export function setupLongMode(vcpu: Vcpu, opts: LongModeOptions): { start: bigint; end: bigint } {
  const o = options(opts, 'options');
  const base = u64(o.pageTables, 'pageTables');
  if (base % BigInt(PAGE_SIZE) !== 0n) throw argRangeError(`The "pageTables" address must be page-aligned; received 0x${base.toString(16)}`);
  const mapSize = checkMapSize((o.identityMapSize as number | bigint | undefined) ?? GIB);
  const size = pageTablesSize(mapSize);
  const cpuid = o.cpuid as readonly CpuidEntry[] | undefined;
  if (vcpu.getCpuid2().length === 0) vcpu.setCpuid2(cpuid ?? vcpu.vm.supportedCpuid());
  const bytes = guestMemory(vcpu.vm, base, Number(size));
  bytes.fill(0);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const page = BigInt(PAGE_SIZE);
  const pdpt = base + page;
  v.setBigUint64(0, pdpt | PTE_PRESENT_RW, true); // PML4[0] -> PDPT
  const pds = Number((mapSize + GIB - 1n) / GIB);
  for (let g = 0; g < pds; g++) {
    const pd = base + page * BigInt(2 + g);
    v.setBigUint64(PAGE_SIZE + g * 8, pd | PTE_PRESENT_RW, true); // PDPT[g] -> PD
    for (let i = 0; i < 512; i++) {
      const addr = BigInt(g) * GIB + BigInt(i) * LARGE_PAGE;
      if (addr >= mapSize) break;
      v.setBigUint64((2 + g) * PAGE_SIZE + i * 8, addr | PTE_PRESENT_RW | PDE_LARGE, true);
    }
  }

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
  return { start: base, end: base + size };
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
