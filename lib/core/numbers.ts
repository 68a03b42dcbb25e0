/**
 * Argument checks for the project's number convention: u64 quantities (addresses, sizes,
 * offsets, flags) are accepted as a safe-integer `number` or a `bigint`, never truncated or
 * wrapped; they are returned as `bigint`. Failures throw TypeError/RangeError naming the
 * argument, before any system call.
 * @module
 */
import { argTypeError, argRangeError } from './errors.js';

const U64_MAX = (1n << 64n) - 1n;
const I64_MAX = (1n << 63n) - 1n;

/** A u64 input: a non-negative safe integer or a bigint in [0, 2^64). */
export type U64 = number | bigint;

/**
 * Checks a u64 argument and returns it unchanged (a number stays a number: the addon reads it
 * with one Node-API call, and no BigInt is allocated on hot paths).
 */
export function checkU64(value: unknown, name: string): number | bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw argRangeError(
        `The "${name}" argument must be a non-negative safe integer (or a bigint); received ${value}`,
      );
    }
    return value;
  }
  if (typeof value === 'bigint') {
    if (value < 0n || value > U64_MAX) {
      throw argRangeError(`The "${name}" argument must be in [0, 2^64); received ${value}n`);
    }
    return value;
  }
  throw argTypeError(`The "${name}" argument must be a number or a bigint; received ${describe(value)}`);
}

/** Checks a u64 argument and returns it as a bigint. */
export function u64(value: unknown, name: string): bigint {
  return BigInt(checkU64(value, name));
}

/** Checks a file offset or length: a u64 that also fits a signed 64-bit off_t. */
export function off(value: unknown, name: string): bigint {
  const v = u64(value, name);
  if (v > I64_MAX) throw argRangeError(`The "${name}" argument must be at most 2^63 - 1; received ${v}n`);
  return v;
}

/** Checks a u32 argument (slots, memslot flags, capability numbers, VM types). */
export function u32(value: unknown, name: string): number {
  if (typeof value !== 'number') {
    throw argTypeError(`The "${name}" argument must be an integer; received ${describe(value)}`);
  }
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw argRangeError(`The "${name}" argument must be an integer in [0, 2^32); received ${value}`);
  }
  return value;
}

/** Checks a raw file descriptor number. */
export function fdNumber(value: unknown, name: string): number {
  if (typeof value !== 'number') {
    throw argTypeError(`The "${name}" argument must be a file descriptor; received ${describe(value)}`);
  }
  if (!Number.isInteger(value) || value < 0 || value > 0x7fffffff) {
    throw argRangeError(`The "${name}" argument must be a file descriptor (integer >= 0); received ${value}`);
  }
  return value;
}

/** Checks that an options argument is a plain object. */
export function options(value: unknown, name: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw argTypeError(`The "${name}" argument must be an object; received ${describe(value)}`);
  }
  return value as Record<string, unknown>;
}

/** A short description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'bigint') return `bigint ${value}n`;
  if (typeof value === 'string') return `string '${value.length > 40 ? value.slice(0, 40) + '...' : value}'`;
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`;
  // eslint-disable-next-line @typescript-eslint/no-base-to-string -- what is left (symbol, function, bigint...) prints as itself
  return `${typeof value} ${String(value)}`;
}
