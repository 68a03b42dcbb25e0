/**
 * What FdChannel and FdListener share: argument checks for paths and timeouts, waiting on a
 * socket through the addon's fd watch thread, and telling a stale socket file from a live one.
 * @module
 */
import { lstatSync } from 'node:fs';
import { KvmError, KvmStateError, argRangeError, argTypeError } from '../core/errors.js';
import { native, type NativeFdWatch } from '../core/native.js';
import { describe } from '../core/numbers.js';
import { MAX_PATH_BYTES } from './wire.js';

export const WAIT_CLOSED = 2;
export const WAIT_TIMEOUT = 0;

export async function waitOn(watch: NativeFdWatch, deadline: number, what: string): Promise<number> {
  const left = deadline - performance.now();
  if (left <= 0) throw new KvmStateError('ERR_KVM_TIMEOUT', `${what} timed out`);
  const code = await watch.wait(left === Infinity ? -1 : Math.min(Math.ceil(left), 0x7fffffff));
  if (code === WAIT_TIMEOUT && performance.now() >= deadline) throw new KvmStateError('ERR_KVM_TIMEOUT', `${what} timed out`);
  return code;
}

export function checkPath(path: unknown): asserts path is string {
  if (typeof path !== 'string') throw argTypeError(`The "path" argument must be a string; received ${describe(path)}`);
  if (path.length === 0 || path.includes('\0')) throw argTypeError('The "path" argument must be a non-empty string without NUL bytes');
  const n = Buffer.byteLength(path);
  if (n > MAX_PATH_BYTES) {
    throw argRangeError(`The "path" argument must be at most ${MAX_PATH_BYTES} bytes (a Unix socket path); received ${n}`);
  }
}

/** A timeout option as an absolute deadline on performance.now(); undefined means none. */
export function deadlineOf(value: unknown, name: string): number {
  if (value === undefined) return Infinity;
  const t = timeoutArg(value, name);
  return t < 0 ? Infinity : performance.now() + t;
}

/** A timeout in milliseconds for native code: -1 for Infinity, else an integer in [0, 2^31). */
export function timeoutArg(value: unknown, name: string): number {
  if (typeof value !== 'number') throw argTypeError(`The "${name}" option must be a number of milliseconds; received ${describe(value)}`);
  if (value === Infinity) return -1;
  if (!(value >= 0) || !Number.isFinite(value)) {
    throw argRangeError(`The "${name}" option must be >= 0 (or Infinity); received ${value}`);
  }
  return Math.min(Math.ceil(value), 0x7fffffff);
}

/** Why an EADDRINUSE path must be left alone, or undefined if it is a stale socket file. */
export function staleSocket(path: string): string | undefined {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return undefined; // gone meanwhile: bind again
  }
  if (!st.isSocket()) return `'${path}' exists and is not a socket; it was left alone`;
  try {
    native.close(native.unixConnect(path));
    return `a process is listening on '${path}'`;
  } catch (e) {
    if (e instanceof KvmError && e.code === 'ECONNREFUSED') return undefined;
    return `'${path}' is a socket in use (connect: ${e instanceof KvmError ? e.code : String(e)})`;
  }
}

/** A boolean option (default false). */
export function boolOption(value: unknown, name: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw argTypeError(`The "${name}" option must be a boolean; received ${describe(value)}`);
  return value;
}

/** Runs async calls one at a time, in call order (receives on a channel, accepts on a listener). */
export class Turns {
  #tail: Promise<void> = Promise.resolve();

  /** Runs `f` once every call made before this one has settled. */
  async run<T>(f: () => Promise<T>): Promise<T> {
    const before = this.#tail;
    let done!: () => void;
    this.#tail = new Promise<void>((r) => (done = r));
    try {
      await before;
      return await f();
    } finally {
      done();
    }
  }
}
