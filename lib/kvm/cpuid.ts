/**
 * CPUID tables as KVM exchanges them (struct kvm_cpuid_entry2): what KVM can offer a guest
 * (`kvm.getSupportedCpuid()`) and what one vCPU shows its guest (`vcpu.setCpuid2()`,
 * `vcpu.getCpuid2()`).
 * @module
 */
import { native } from '../core/native.js';
import { u32 } from '../core/numbers.js';
import { argTypeError, argRangeError } from '../core/errors.js';

/** One CPUID leaf (and subleaf) as KVM describes it: struct kvm_cpuid_entry2, padding left out. */
export interface CpuidEntry {
  /** The leaf: EAX on input to CPUID. */
  function: number;
  /** The subleaf: ECX on input, meaningful when `flags` has CpuidFlag.SIGNIFICANT_INDEX. */
  index: number;
  /** CpuidFlag bits. */
  flags: number;
  /** EAX on output. */
  eax: number;
  /** EBX on output. */
  ebx: number;
  /** ECX on output. */
  ecx: number;
  /** EDX on output. */
  edx: number;
}

/** Bits of {@link CpuidEntry.flags} (include/uapi/linux/kvm.h). */
export const CpuidFlag = {
  /** The entry applies only to the subleaf in `index` (KVM_CPUID_FLAG_SIGNIFCANT_INDEX). */
  SIGNIFICANT_INDEX: 1 << 0,
} as const;

/** Bytes per struct kvm_cpuid_entry2. */
export const CPUID_ENTRY_SIZE = 40;
/** The most entries KVM takes in one table (KVM_MAX_CPUID_ENTRIES). */
export const MAX_CPUID_ENTRIES: number = native.limits.maxCpuidEntries;

const FIELDS = ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const;

/** Decodes the addon's entry bytes. */
export function decodeCpuid(bytes: Uint8Array): CpuidEntry[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: CpuidEntry[] = [];
  for (let off = 0; off + CPUID_ENTRY_SIZE <= bytes.byteLength; off += CPUID_ENTRY_SIZE) {
    const e = {} as CpuidEntry;
    FIELDS.forEach((f, i) => (e[f] = v.getUint32(off + 4 * i, true)));
    out.push(e);
  }
  return out;
}

/**
 * Encodes entries for KVM_SET_CPUID2, checking each field is a u32.
 * @throws TypeError for a non-array or a non-object entry; RangeError for more than
 * {@link MAX_CPUID_ENTRIES} entries or a field outside [0, 2^32)
 */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  if (!Array.isArray(entries)) throw argTypeError('The "entries" argument must be an array of CPUID entries');
  if (entries.length > MAX_CPUID_ENTRIES) {
    throw argRangeError(`The "entries" argument must have at most ${MAX_CPUID_ENTRIES} entries; received ${entries.length}`);
  }
  // Read every field first (getters included), then write: the bytes are built from one snapshot.
  const rows = entries.map((e: unknown, i) => {
    if (typeof e !== 'object' || e === null) throw argTypeError(`The "entries[${i}]" argument must be an object`);
    const r = e as Record<string, unknown>;
    return FIELDS.map((f) => u32(r[f] ?? 0, `entries[${i}].${f}`));
  });
  const bytes = new Uint8Array(rows.length * CPUID_ENTRY_SIZE);
  const v = new DataView(bytes.buffer);
  rows.forEach((row, k) => row.forEach((x, i) => v.setUint32(k * CPUID_ENTRY_SIZE + 4 * i, x, true)));
  return bytes;
}
