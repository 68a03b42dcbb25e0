/**
 * The selftest harness: what a case is, what it gets to run with, and how its outcome is
 * decided. Each case is a plain function that takes a {@link CaseContext} and throws on failure,
 * so the same code runs under the CLI (`kvm-gmem selftest`, KTAP out) and under vitest.
 * @module
 */
import { KvmError, KvmStateError } from '../core/errors.js';
import { Kvm } from '../kvm/kvm.js';
import { GuestAssertionError, UnexpectedExitError } from '../guest/ucall.js';
import type { HostFacts } from './host.js';

/** The upstream selftest a group of cases mirrors, or `lifecycle` for the design-thread cases. */
export type SelftestGroup =
  | 'guest_memfd_test' | 'set_memory_region_test' | 'lifecycle'
  | 'pre_fault_memory_test' | 'private_mem_conversions_test' | 'private_mem_kvm_exits_test';

/** One named check. */
export interface SelftestCase {
  /**
   * The unique name printed in KTAP: `<group>.<function>`, then the variant in brackets when
   * the function runs more than once (e.g. `[vm_type=DEFAULT flags=MMAP|INIT_SHARED]`).
   */
  readonly name: string;
  /** Which group it belongs to. */
  readonly group: SelftestGroup;
  /**
   * For mirrored cases, the upstream function (in the kernel's tools/testing/selftests/kvm/<group>.c,
   * or x86/<group>.c for the private_mem_* groups,
   * https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/tools/testing/selftests/kvm)
   * whose checks it makes with the same arguments and expectations; for lifecycle cases, the
   * lore.kernel.org URLs of the design-thread messages whose argument it pins down.
   */
  readonly source: string;
  /** One line on what it checks. */
  readonly summary: string;
  /** Runs the checks; throws on failure (see {@link classify}). */
  readonly run: (ctx: CaseContext) => void | Promise<void>;
  /** Why the case cannot run on this host, decided before it starts (a SKIP), if it cannot. */
  readonly skipReason?: string;
  /** The most it may take, in milliseconds (default 60 000). */
  readonly timeoutMs?: number;
  /** The VM type the case runs on, by name ('DEFAULT'...), for `vm_type` expectation conditions. */
  readonly vmType?: string;
}

/** What a case runs with. */
export interface CaseContext {
  /** /dev/kvm, opened for this case and closed after it. */
  readonly kvm: Kvm;
  /** What the host offers (probed once per run). */
  readonly host: HostFacts;
  /** The page size (getpagesize()). */
  readonly pageSize: number;
  /** Aborts when the case runs out of time; pass it to runAsync(). */
  readonly signal: AbortSignal;
  /** Adds a diagnostic line (KTAP `# ...` before the result line). */
  log(line: string): void;
  /** Ends the case as skipped with a precise reason. */
  skip(reason: string): never;
  /** Registers a resource closed when the case ends, last registered first; returns it. */
  use<T extends Disposable>(resource: T): T;
  /** Registers a function run when the case ends, in reverse order of registration. */
  defer(fn: () => void | Promise<void>): void;
}

/** Thrown by a check that did not hold. */
export class SelftestFailure extends Error {
  /**
   * For a kernel call expected to fail: the errno code it gave instead ('EINVAL'), or 'success'
   * if it succeeded. What `errno` and `succeeds` expectation entries match.
   */
  readonly got?: string;
  /** Builds the failure. */
  constructor(message: string, got?: string) {
    super(message);
    this.name = 'SelftestFailure';
    if (got !== undefined) this.got = got;
  }
}

/** Thrown by {@link CaseContext.skip}. */
export class SelftestSkip extends Error {
  /** Builds the skip. */
  constructor(reason: string) {
    super(reason);
    this.name = 'SelftestSkip';
  }
}

/** A case's outcome, before expectations are applied. */
export type CaseVerdict = 'pass' | 'fail' | 'skip' | 'error' | 'timeout';

/** What running one case gave. */
export interface CaseOutcome {
  /**
   * pass, fail (a check did not hold or the kernel answered otherwise), skip, error (no verdict
   * reached: a bug in the case), or timeout (still running when its time ran out).
   */
  verdict: CaseVerdict;
  /** The skip reason, or the failure or error message. */
  reason?: string;
  /** The error itself, for fail and error. */
  error?: unknown;
  /** Diagnostic lines the case logged. */
  diagnostics: string[];
  /** Wall time in milliseconds. */
  durationMs: number;
}

/**
 * Decides whether an exception is a failure (the kernel or the guest did not behave as the
 * check expects: a failed assertion, an unexpected errno, a guest ABORT or exit) or an error
 * (the case could not reach a verdict: a bug in the case, a timeout, a broken argument).
 */
export function classify(e: unknown): 'fail' | 'error' {
  if (
    e instanceof SelftestFailure || e instanceof KvmError || e instanceof KvmStateError ||
    e instanceof GuestAssertionError || e instanceof UnexpectedExitError ||
    (e instanceof Error && (e.name === 'AssertionError' || e.name === 'GuestMemoryFaultError'))
  ) {
    return 'fail';
  }
  return 'error';
}

/** The abort reason a case's signal carries when its time runs out. */
export class CaseTimeout extends Error {
  /** Builds it for a case allowed `ms` milliseconds. */
  constructor(ms: number) {
    super(timedOutMessage(ms));
    this.name = 'CaseTimeout';
  }
}

function timedOutMessage(ms: number): string {
  return `timed out after ${ms} ms`;
}

/** The message of anything thrown. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Options for {@link runCase}. */
export interface RunCaseOptions {
  /** The /dev/kvm path (default /dev/kvm). */
  device?: string;
  /** Called with each diagnostic line as it is logged. */
  onLog?: (line: string) => void;
}

/**
 * Runs one case: opens /dev/kvm, runs the checks under a timeout, closes what it registered.
 * Never throws: every outcome is a {@link CaseOutcome}.
 */
export async function runCase(c: SelftestCase, host: HostFacts, opts: RunCaseOptions = {}): Promise<CaseOutcome> {
  const diagnostics: string[] = [];
  const log = (line: string): void => {
    for (const l of line.split('\n')) {
      diagnostics.push(l);
      opts.onLog?.(l);
    }
  };
  const started = performance.now();
  const done = (verdict: CaseVerdict, reason?: string, error?: unknown): CaseOutcome => ({
    verdict, diagnostics, durationMs: performance.now() - started,
    ...(reason !== undefined ? { reason } : {}), ...(error !== undefined ? { error } : {}),
  });
  if (c.skipReason !== undefined) return done('skip', c.skipReason);
  if (!host.available) return done('skip', host.unavailableReason);

  const cleanups: (() => void | Promise<void>)[] = [];
  const controller = new AbortController();
  const timeoutMs = c.timeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  let outcome: CaseOutcome;
  try {
    const kvm = Kvm.open(opts.device);
    cleanups.push(() => kvm.close());
    const ctx: CaseContext = {
      kvm, host, pageSize: host.pageSize, signal: controller.signal, log,
      skip(reason: string): never {
        throw new SelftestSkip(reason);
      },
      use<T extends Disposable>(resource: T): T {
        cleanups.push(() => resource[Symbol.dispose]());
        return resource;
      },
      defer(fn) {
        cleanups.push(fn);
      },
    };
    // Every blocking call in a case (KVM_RUN included) is awaited with ctx.signal, so this timer
    // fires even while a guest never exits: the abort kicks the vCPU and the case is abandoned.
    const timedOut = new CaseTimeout(timeoutMs);
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort(timedOut);
        reject(timedOut);
      }, timeoutMs);
    });
    await Promise.race([Promise.resolve().then(() => c.run(ctx)), timeout]);
    outcome = done('pass');
  } catch (e) {
    if (e instanceof SelftestSkip) outcome = done('skip', e.message);
    else if (controller.signal.aborted) outcome = done('timeout', timedOutMessage(timeoutMs), e);
    else outcome = done(classify(e), messageOf(e), e);
  } finally {
    clearTimeout(timer);
  }
  // Cleanup failures make a passing case an error: a case must leave nothing behind.
  for (const fn of cleanups.reverse()) {
    try {
      await fn();
    } catch (e) {
      if (outcome.verdict === 'pass') outcome = done('error', `cleanup failed: ${messageOf(e)}`, e);
      else log(`cleanup failed: ${messageOf(e)}`);
    }
  }
  return outcome;
}

// ---- checks ----------------------------------------------------------------------------------

/** Fails with `message` unless `cond` holds. */
export function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new SelftestFailure(message);
}

/** Fails unless `actual` equals `expected` (Object.is, so bigints and numbers are not mixed). */
export function checkEq<T>(actual: T, expected: T, what: string): void {
  if (!Object.is(actual, expected)) {
    throw new SelftestFailure(`${what}: expected ${show(expected)}, got ${show(actual)}`);
  }
}

/**
 * Runs `f`, which must fail with a KvmError whose code is `code` (e.g. 'EINVAL'); returns that
 * error. Fails if `f` succeeds or throws anything else.
 */
export function checkErrno(f: () => unknown, code: string, what: string): KvmError {
  const e = checkThrows(f, KvmError, `${what}: expected ${code}, but the call succeeded`, 'success');
  if (e.code !== code) throw new SelftestFailure(`${what}: expected ${code}, got ${e.code} (${e.message})`, e.code);
  return e;
}

/** Runs `f`, which must succeed; returns its result. Anything it throws fails the check, naming `what`. */
export function checkSucceeds<R>(f: () => R, what: string): R {
  try {
    return f();
  } catch (e) {
    throw new SelftestFailure(`${what} should succeed: ${messageOf(e)}`);
  }
}

/**
 * Runs `f`, which must throw an instance of `type`; returns what it threw. Fails with `message`
 * (given what `f` returned, if a function) when `f` returns, with `got` as the failure's
 * {@link SelftestFailure.got}; anything else thrown propagates.
 */
export function checkThrows<E, R>(
  f: () => R, type: abstract new (...args: never[]) => E, message: string | ((result: R) => string), got?: string,
): E {
  let result: R;
  try {
    result = f();
  } catch (e) {
    if (e instanceof type) return e;
    throw e;
  }
  throw new SelftestFailure(typeof message === 'string' ? message : message(result), got);
}

/** Fails unless every byte of `bytes` equals `value`; names the first one that differs. */
export function checkBytes(bytes: Uint8Array, value: number, what: string, base = 0): void {
  const i = firstNotEqual(bytes, value);
  if (i >= 0) {
    throw new SelftestFailure(
      `${what}: expected 0x${hex(value)} at every byte, got 0x${hex(bytes[i]!)} at offset 0x${(base + i).toString(16)}`,
    );
  }
}

/** The index of the first byte not equal to `value`, or -1. */
export function firstNotEqual(bytes: Uint8Array, value: number): number {
  const v = value & 0xff;
  // Compare 8 bytes at a time where the view is aligned; this runs over whole mappings.
  let i = 0;
  if (bytes.byteOffset % 8 === 0) {
    const words = new BigUint64Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.length / 8));
    const w = BigInt(v) * 0x0101010101010101n;
    for (let k = 0; k < words.length; k++) {
      if (words[k] !== w) {
        i = k * 8;
        break;
      }
      i = (k + 1) * 8;
    }
  }
  for (; i < bytes.length; i++) if (bytes[i] !== v) return i;
  return -1;
}

function hex(v: number): string {
  return v.toString(16).padStart(2, '0');
}

function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n (0x${v.toString(16)})`;
  if (typeof v === 'number' && Number.isInteger(v)) return `${v} (0x${v.toString(16)})`;
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}
