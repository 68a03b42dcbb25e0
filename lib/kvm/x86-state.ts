/**
 * x86-64 vCPU register state as typed objects, and their encoding into the kernel's structs
 * (struct kvm_regs, kvm_sregs, kvm_fpu of arch/x86/include/uapi/asm/kvm.h). The byte offsets
 * come from the addon's `uapiLayout()`, which native/uapi/kvm.h pins with static_asserts; a test
 * checks every offset used here against it.
 *
 * Numbers follow the project's convention: 64-bit fields are bigints on the way out and accept
 * a safe-integer number or a bigint on the way in; narrower fields are numbers.
 * @module
 */
import { checkU64 } from '../core/numbers.js';
import { argTypeError } from '../core/errors.js';

/** General-purpose registers (struct kvm_regs). Every field is a u64. */
export interface Regs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint;
  rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint;
  r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

/** What `setRegs()` accepts: every field of {@link Regs}, as a number or a bigint. */
export type RegsInput = { [K in keyof Regs]: number | bigint };

/** The order of the fields in struct kvm_regs (8 bytes each). */
export const REG_NAMES: readonly (keyof Regs)[] = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
];

/** A segment register with its hidden part (struct kvm_segment). */
export interface Segment {
  /** Base address (u64). */
  base: bigint;
  /** Limit in bytes, already scaled by granularity (u32). */
  limit: number;
  selector: number;
  /** Descriptor type (4 bits): 11 = code execute/read accessed, 3 = data read/write accessed. */
  type: number;
  present: number;
  dpl: number;
  /** Default operand size (0 for a 64-bit code segment). */
  db: number;
  /** 1 for code/data descriptors, 0 for system ones (TSS, LDT). */
  s: number;
  /** 64-bit code segment. */
  l: number;
  /** Granularity. */
  g: number;
  avl: number;
  unusable: number;
}

/** A descriptor-table register (struct kvm_dtable). */
export interface DTable {
  base: bigint;
  limit: number;
}

/** Special registers (struct kvm_sregs). */
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment;
  tr: Segment; ldt: Segment;
  gdt: DTable; idt: DTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** Pending external interrupts, one bit per vector (4 u64 words). */
  interruptBitmap: bigint[];
}

/** x87 and SSE state (struct kvm_fpu). */
export interface Fpu {
  /** The eight x87 registers, 16 bytes each (80-bit values in the low 10). */
  fpr: Uint8Array;
  fcw: number;
  fsw: number;
  /** Abridged tag word. */
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** The sixteen XMM registers, 16 bytes each. */
  xmm: Uint8Array;
  /**
   * MXCSR as struct kvm_fpu has it. The kernel's KVM_GET_FPU / KVM_SET_FPU do not copy this field
   * (it reads back 0 and writes are dropped); the guest's real MXCSR travels with KVM_GET_XSAVE.
   */
  mxcsr: number;
}

/** Byte sizes and offsets of the structs, as native/uapi/kvm.h defines them. */
export const Layout = {
  regs: { size: 144 },
  segment: { size: 24, base: 0, limit: 8, selector: 12, type: 14, present: 15, unusable: 22 },
  sregs: {
    size: 312, segments: ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const,
    gdt: 192, idt: 208, cr0: 224, cr8: 256, efer: 264, apicBase: 272, interruptBitmap: 280,
  },
  fpu: { size: 416, fcw: 128, fsw: 130, ftwx: 132, lastOpcode: 134, lastIp: 136, lastDp: 144, xmm: 152, mxcsr: 408 },
} as const;

// The byte flags after `type` in struct kvm_segment, in order.
const SEG_FLAGS = ['present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function small(value: unknown, name: string, bits: 8 | 16 | 32): number {
  const max = 2 ** bits - 1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max) {
    const what = typeof value === 'number' ? String(value) : typeof value;
    const err = typeof value === 'number' ? RangeError : TypeError;
    throw new err(`The "${name}" field must be an integer in [0, ${max}]; received ${what}`);
  }
  return value;
}

function field(o: unknown, key: string, where: string): unknown {
  if (typeof o !== 'object' || o === null) throw argTypeError(`The "${where}" argument must be an object`);
  return (o as Record<string, unknown>)[key];
}

/** struct kvm_regs bytes -> Regs. */
export function decodeRegs(b: Uint8Array): Regs {
  const v = view(b);
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => (r[n] = v.getBigUint64(i * 8, true)));
  return r;
}

/** Regs -> struct kvm_regs bytes. Every field is required. */
export function encodeRegs(regs: RegsInput): Uint8Array {
  const b = new Uint8Array(Layout.regs.size);
  const v = view(b);
  REG_NAMES.forEach((n, i) => v.setBigUint64(i * 8, BigInt(checkU64(field(regs, n, 'regs'), `regs.${n}`)), true));
  return b;
}

function decodeSegment(v: DataView, at: number): Segment {
  const s = {
    base: v.getBigUint64(at, true),
    limit: v.getUint32(at + Layout.segment.limit, true),
    selector: v.getUint16(at + Layout.segment.selector, true),
    type: v.getUint8(at + Layout.segment.type),
  } as Segment;
  SEG_FLAGS.forEach((k, i) => (s[k] = v.getUint8(at + Layout.segment.present + i)));
  return s;
}

function encodeSegment(v: DataView, at: number, s: unknown, name: string): void {
  v.setBigUint64(at, BigInt(checkU64(field(s, 'base', name), `${name}.base`)), true);
  v.setUint32(at + Layout.segment.limit, small(field(s, 'limit', name), `${name}.limit`, 32), true);
  v.setUint16(at + Layout.segment.selector, small(field(s, 'selector', name), `${name}.selector`, 16), true);
  v.setUint8(at + Layout.segment.type, small(field(s, 'type', name), `${name}.type`, 8));
  SEG_FLAGS.forEach((k, i) => v.setUint8(at + Layout.segment.present + i, small(field(s, k, name) ?? 0, `${name}.${k}`, 8)));
}

const CRS = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8'] as const;

/** struct kvm_sregs bytes -> Sregs. */
export function decodeSregs(b: Uint8Array): Sregs {
  const v = view(b);
  const L = Layout.sregs;
  const s = {} as Sregs;
  L.segments.forEach((n, i) => (s[n] = decodeSegment(v, i * Layout.segment.size)));
  s.gdt = { base: v.getBigUint64(L.gdt, true), limit: v.getUint16(L.gdt + 8, true) };
  s.idt = { base: v.getBigUint64(L.idt, true), limit: v.getUint16(L.idt + 8, true) };
  CRS.forEach((n, i) => (s[n] = v.getBigUint64(L.cr0 + i * 8, true)));
  s.efer = v.getBigUint64(L.efer, true);
  s.apicBase = v.getBigUint64(L.apicBase, true);
  s.interruptBitmap = [0, 1, 2, 3].map((i) => v.getBigUint64(L.interruptBitmap + i * 8, true));
  return s;
}

/** Sregs -> struct kvm_sregs bytes. Every field is required (start from `getSregs()`). */
export function encodeSregs(s: Sregs): Uint8Array {
  const b = new Uint8Array(Layout.sregs.size);
  const v = view(b);
  const L = Layout.sregs;
  L.segments.forEach((n, i) => encodeSegment(v, i * Layout.segment.size, field(s, n, 'sregs'), `sregs.${n}`));
  for (const t of ['gdt', 'idt'] as const) {
    const d = field(s, t, 'sregs');
    v.setBigUint64(L[t], BigInt(checkU64(field(d, 'base', `sregs.${t}`), `sregs.${t}.base`)), true);
    v.setUint16(L[t] + 8, small(field(d, 'limit', `sregs.${t}`), `sregs.${t}.limit`, 16), true);
  }
  CRS.forEach((n, i) => v.setBigUint64(L.cr0 + i * 8, BigInt(checkU64(field(s, n, 'sregs'), `sregs.${n}`)), true));
  v.setBigUint64(L.efer, BigInt(checkU64(field(s, 'efer', 'sregs'), 'sregs.efer')), true);
  v.setBigUint64(L.apicBase, BigInt(checkU64(field(s, 'apicBase', 'sregs'), 'sregs.apicBase')), true);
  const bitmap = field(s, 'interruptBitmap', 'sregs') ?? [0n, 0n, 0n, 0n];
  if (!Array.isArray(bitmap) || bitmap.length !== 4) {
    throw argTypeError('The "sregs.interruptBitmap" field must be an array of 4 u64 words');
  }
  bitmap.forEach((w, i) => v.setBigUint64(L.interruptBitmap + i * 8, BigInt(checkU64(w, `sregs.interruptBitmap[${i}]`)), true));
  return b;
}

/** struct kvm_fpu bytes -> Fpu (fpr and xmm are copies). */
export function decodeFpu(b: Uint8Array): Fpu {
  const v = view(b);
  const L = Layout.fpu;
  return {
    fpr: b.slice(0, 128),
    fcw: v.getUint16(L.fcw, true),
    fsw: v.getUint16(L.fsw, true),
    ftwx: v.getUint8(L.ftwx),
    lastOpcode: v.getUint16(L.lastOpcode, true),
    lastIp: v.getBigUint64(L.lastIp, true),
    lastDp: v.getBigUint64(L.lastDp, true),
    xmm: b.slice(L.xmm, L.xmm + 256),
    mxcsr: v.getUint32(L.mxcsr, true),
  };
}

/** Fpu -> struct kvm_fpu bytes. */
export function encodeFpu(f: Fpu): Uint8Array {
  const b = new Uint8Array(Layout.fpu.size);
  const v = view(b);
  const L = Layout.fpu;
  const bytes = (k: 'fpr' | 'xmm', len: number, at: number) => {
    const a = field(f, k, 'fpu');
    if (!(a instanceof Uint8Array) || a.length !== len) {
      throw argTypeError(`The "fpu.${k}" field must be a Uint8Array of ${len} bytes`);
    }
    b.set(a, at);
  };
  bytes('fpr', 128, 0);
  v.setUint16(L.fcw, small(field(f, 'fcw', 'fpu'), 'fpu.fcw', 16), true);
  v.setUint16(L.fsw, small(field(f, 'fsw', 'fpu'), 'fpu.fsw', 16), true);
  v.setUint8(L.ftwx, small(field(f, 'ftwx', 'fpu'), 'fpu.ftwx', 8));
  v.setUint16(L.lastOpcode, small(field(f, 'lastOpcode', 'fpu'), 'fpu.lastOpcode', 16), true);
  v.setBigUint64(L.lastIp, BigInt(checkU64(field(f, 'lastIp', 'fpu'), 'fpu.lastIp')), true);
  v.setBigUint64(L.lastDp, BigInt(checkU64(field(f, 'lastDp', 'fpu'), 'fpu.lastDp')), true);
  bytes('xmm', 256, L.xmm);
  v.setUint32(L.mxcsr, small(field(f, 'mxcsr', 'fpu'), 'fpu.mxcsr', 32), true);
  return b;
}
