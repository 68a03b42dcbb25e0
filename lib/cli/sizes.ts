/**
 * Sizes on the command line: `4096`, `2M`, `64MiB`, `1GiB`, `1.5G`. Binary units throughout
 * (K = KiB = 1024 bytes, as QEMU's -m and the kernel's memparse read them); a bare number is
 * in the option's own unit, MiB for every size option of the `kvm-gmem` command, as before
 * units were accepted.
 * @module
 */
import { UsageError } from './exit.js';

/** Bytes per unit letter (binary: K = KiB). */
const UNIT: Record<string, number> = { B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** One line for --help: how sizes are written. */
export const SIZE_SYNTAX = 'a number with a unit: B, K/KiB, M/MiB, G/GiB, T/TiB (binary: 1K = 1024); a bare number is MiB';

/**
 * Parses a size into bytes.
 * @param text e.g. '64MiB', '2M', '1.5GiB', '4096' (a bare number is `bare` bytes each)
 * @param option the option's name, for the error message
 * @param bare the unit of a bare number, in bytes (default 1 MiB)
 * @throws UsageError for anything else: an unknown unit, decimal units (MB, GB), a size that is
 * not a whole number of bytes, zero, or above 2^53 bytes
 */
export function parseSize(text: string, option: string, bare = UNIT.M!): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([bkmgt])(i?b)?)?\s*$/i.exec(text);
  const number = m?.[1] ?? '';
  const letter = m?.[2]?.toUpperCase();
  const suffix = m?.[3];
  if (!m || (letter === 'B' && suffix !== undefined)) throw new UsageError(`--${option}: '${text}' is not a size; expected ${SIZE_SYNTAX}`);
  // "MB" is ambiguous (10^6 or 2^20): refuse it rather than guess.
  if (letter !== undefined && suffix !== undefined && !/^ib$/i.test(suffix)) {
    throw new UsageError(`--${option}: '${text}' is not a size (write ${number}${letter}iB or ${number}${letter}: units are binary); expected ${SIZE_SYNTAX}`);
  }
  const bytes = Number(number) * (letter !== undefined ? UNIT[letter]! : bare);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new UsageError(`--${option}: '${text}' is not a positive whole number of bytes`);
  }
  return bytes;
}

/**
 * Parses a comma-separated list of sizes into bytes (see {@link parseSize}).
 * @throws UsageError for an empty list or a bad entry
 */
export function parseSizeList(text: string, option: string, bare = UNIT.M!): number[] {
  const parts = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (parts.length === 0) throw new UsageError(`--${option}: expected a comma-separated list of sizes, got '${text}'`);
  return parts.map((p) => parseSize(p, option, bare));
}

/**
 * Bytes as a whole number of MiB.
 * @throws UsageError if it is not one
 */
export function wholeMiB(bytes: number, option: string, text: string): number {
  if (bytes % UNIT.M! !== 0) throw new UsageError(`--${option}: '${text}' is not a whole number of MiB`);
  return bytes / UNIT.M!;
}
