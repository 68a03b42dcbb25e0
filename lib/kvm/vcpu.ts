/**
 * Vcpu: a KVM vCPU fd (KVM_CREATE_VCPU), its kvm_run mapping, its registers, and running it.
 * @module
 */
import { availableParallelism } from 'node:os';
import { decodeCpuid, encodeCpuid, type CpuidEntry } from './cpuid.js';
import { KvmError, KvmStateError, errnoError, argTypeError, argRangeError, explain } from '../core/errors.js';
import { decodeExit, type ExitViews, type VcpuExit } from './exits.js';
import { native, type NativeVcpuRunner } from '../core/native.js';
import { describe, options, u64 } from '../core/numbers.js';
import { FdResource } from '../core/resource.js';
import type { Vm } from './vm.js';
import {
  decodeFpu, decodeRegs, decodeSregs, encodeFpu, encodeRegs, encodeSregs, Layout,
  type Fpu, type Regs, type RegsInput, type Sregs,
} from './x86-state.js';

/** How long the event loop polls for a run's result before sleeping, in milliseconds. */
const POLL_MS = 0.05;
const CAN_POLL = availableParallelism() >= 2;

/** Options for `vcpu.runAsync()`. */
export interface RunAsyncOptions {
  /** Aborting kicks the vCPU; the promise then rejects with the signal's reason (an AbortError). */
  signal?: AbortSignal;
}

/** A guest-physical range, as KVM_PRE_FAULT_MEMORY passes it back. */
export interface GpaRange {
  /** First guest-physical address. */
  gpa: bigint;
  /** Length in bytes. */
  size: bigint;
}

/**
 * The KvmError a failed KVM_PRE_FAULT_MEMORY throws (request 'KVM_PRE_FAULT_MEMORY'), with the
 * range the kernel passed back.
 */
export type PreFaultMemoryError = KvmError & {
  /** What was left to map when the call failed (the kernel writes it back on failure too). */
  readonly remaining: GpaRange;
  /** From the looping calls: the bytes mapped before the failure. */
  readonly mapped?: bigint;
};

/** Options of `vcpu.preFaultMemory()`. */
export interface PreFaultMemoryOptions {
  /** Called after each call that made progress: bytes done so far, bytes left. */
  onProgress?(done: bigint, left: bigint): void;
  /**
   * How many calls in a row may make no progress with EINTR or EAGAIN before the loop gives up
   * with that error (default 1000).
   */
  maxRetries?: number;
}

/** Options of `vcpu.preFaultMemoryAsync()`. */
export interface PreFaultMemoryAsyncOptions extends PreFaultMemoryOptions {
  /** Aborting kicks the vCPU's thread; the promise rejects with the signal's reason (an AbortError). */
  signal?: AbortSignal;
}

const EINTR = 4;
const EAGAIN = 11;
const DEFAULT_MAX_RETRIES = 1000;

/**
 * A vCPU. Created by `vm.createVcpu(id)`.
 *
 * Close it explicitly (or with `using`). One dropped without close() has its thread stopped and
 * its mapping released when collected, but keeps its fd until the process exits: vCPU fds, like
 * VM fds, cannot be told apart safely once the number may have been reused.
 *
 * Run it with `run()` (blocks the calling thread until the next exit) or `runAsync()` (the same
 * KVM_RUN on a native thread that belongs to this vCPU for its whole life, so the event loop keeps
 * going). While a runAsync() is in flight, every other call but `kick()` and `close()` throws a
 * KvmStateError ('ERR_KVM_VCPU_RUNNING') instead of waiting.
 */
export class Vcpu extends FdResource {
  /** The vCPU id given to KVM_CREATE_VCPU. */
  readonly id: number;
  /** The VM this vCPU belongs to. */
  readonly vm: Vm;
  readonly #runner: NativeVcpuRunner;
  readonly #page: DataView;
  readonly #buffer: ArrayBuffer;
  // Mirrors the runner's busy state (set by runAsync, cleared when the run settles), so the
  // synchronous calls check it without crossing into native code.
  #inFlight = false;
  readonly #views: ExitViews = {};

  private constructor(fd: number, id: number, vm: Vm, runSize: number) {
    const runner = new native.VcpuRunner(fd, runSize);
    super(fd, 'Vcpu');
    this.id = id;
    this.vm = vm;
    this.#runner = runner;
    this.#buffer = runner.buffer;
    this.#page = new DataView(this.#buffer);
  }

  /**
   * Whether a runAsync() (or a preFaultMemoryAsync() / preFaultMemoryOnceAsync()) is in flight,
   * or a preFaultMemory() loop (seen from its `onProgress`).
   */
  get running(): boolean {
    return this.#inFlight;
  }

  /** @internal The Vcpu of a vCPU fd KVM_CREATE_VCPU made (`vm.createVcpu()`). */
  static fromCreated(fd: number, id: number, vm: Vm, runSize: number): Vcpu {
    return new Vcpu(fd, id, vm, runSize);
  }

  /** The Linux thread id of this vCPU's own thread, once runAsync() has started it. */
  get threadId(): number | undefined {
    return this.#runner.threadId;
  }

  /**
   * The shared kvm_run area (KVM_GET_VCPU_MMAP_SIZE bytes, struct kvm_run first), without
   * copying: for what the decoded exits do not cover (sync regs, interrupt window...).
   * @throws KvmStateError after close()
   */
  get kvmRun(): Uint8Array {
    this.#idle();
    return new Uint8Array(this.#buffer);
  }

  /** Reads the general-purpose registers (ioctl KVM_GET_REGS). @throws KvmError; KvmStateError */
  getRegs(): Regs {
    const b = new Uint8Array(Layout.regs.size);
    native.getRegs(this.#idle(), b);
    return decodeRegs(b);
  }

  /**
   * Writes the general-purpose registers (ioctl KVM_SET_REGS); every field is required, so start
   * from getRegs(). @throws TypeError/RangeError for bad values; KvmError; KvmStateError
   */
  setRegs(regs: RegsInput): void {
    const b = encodeRegs(regs);
    native.setRegs(this.#idle(), b);
  }

  /** Reads the special registers: segments, descriptor tables, control registers, EFER (ioctl KVM_GET_SREGS). */
  getSregs(): Sregs {
    const b = new Uint8Array(Layout.sregs.size);
    native.getSregs(this.#idle(), b);
    return decodeSregs(b);
  }

  /**
   * Writes the special registers (ioctl KVM_SET_SREGS); start from getSregs().
   * @throws KvmError EINVAL for a state KVM refuses (e.g. long mode without PAE); KvmStateError
   */
  setSregs(sregs: Sregs): void {
    const b = encodeSregs(sregs);
    native.setSregs(this.#idle(), b);
  }

  /** Reads the x87/SSE state (ioctl KVM_GET_FPU), e.g. to move a vCPU to another process. */
  getFpu(): Fpu {
    const b = new Uint8Array(Layout.fpu.size);
    native.getFpu(this.#idle(), b);
    return decodeFpu(b);
  }

  /** Writes the x87/SSE state (ioctl KVM_SET_FPU); start from getFpu(). */
  setFpu(fpu: Fpu): void {
    const b = encodeFpu(fpu);
    native.setFpu(this.#idle(), b);
  }

  /**
   * Sets the CPUID the guest sees (ioctl KVM_SET_CPUID2), typically `kvm.getSupportedCpuid()` or
   * a subset. Do it before the first run: KVM refuses a different table once the vCPU has run
   * (EINVAL), and Linux 7.2 refuses long-mode special registers on a vCPU without the LM bit.
   * @throws TypeError/RangeError for bad entries (more than 256, a field outside u32); KvmError
   * (EINVAL for a table KVM refuses, E2BIG for too many entries); KvmStateError
   */
  setCpuid2(entries: readonly CpuidEntry[]): void {
    const bytes = encodeCpuid(entries);
    native.setCpuid2(this.#idle(), bytes);
  }

  /**
   * Reads the CPUID this vCPU shows its guest (ioctl KVM_GET_CPUID2): what setCpuid2() set, as
   * KVM adjusted it; empty before setCpuid2().
   * @throws KvmError; KvmStateError
   */
  getCpuid2(): CpuidEntry[] {
    return decodeCpuid(native.getCpuid2(this.#idle()));
  }

  /**
   * Runs the vCPU on the calling thread until the next exit that needs userspace (ioctl
   * KVM_RUN). Blocks the event loop meanwhile: a guest that never exits blocks it for good (use
   * runAsync() for those).
   * @returns the exit; EINTR (a signal for this thread) is returned as `{ reason: 'intr' }`, and
   * EFAULT with KVM_EXIT_MEMORY_FAULT as `{ reason: 'memory_fault', ... }`
   * @throws KvmError for any other KVM_RUN failure; KvmStateError while a runAsync() is in flight
   * or after close()
   */
  run(): VcpuExit {
    this.#idle();
    return this.#decode(this.#runner.run());
  }

  /**
   * Runs the vCPU on its own native thread (started on the first call and kept for the vCPU's
   * life) until the next exit that needs userspace (ioctl KVM_RUN). The event loop keeps running;
   * a run in flight keeps the process alive like pending I/O.
   * @returns the exit, as run() does
   * @throws (rejects) KvmError for a KVM_RUN failure; KvmStateError ('ERR_KVM_CLOSED') if the
   * vCPU is closed before the run ends; the signal's reason if `options.signal` aborts it.
   * Throws KvmStateError at once if a run is already in flight.
   */
  runAsync(opts: RunAsyncOptions = {}): Promise<VcpuExit> {
    const signal = options(opts, 'options').signal as AbortSignal | undefined;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw argTypeError('The "options.signal" argument must be an AbortSignal');
    }
    this.#idle();
    if (signal?.aborted) return Promise.reject(signal.reason);
    // The listener goes on before the run starts: if it cannot be added nothing has started.
    const onAbort = () => this.#runner.kick();
    signal?.addEventListener('abort', onAbort, { once: true });
    let pending: Promise<number>;
    try {
      pending = this.#runner.runAsync(CAN_POLL);
    } catch (e) {
      signal?.removeEventListener('abort', onAbort);
      throw e;
    }
    this.#inFlight = true;
    if (CAN_POLL) this.#poll();
    if (signal === undefined) return pending.then((status) => this.#settled(status));
    return pending.then((status) => {
      signal.removeEventListener('abort', onAbort);
      const exit = this.#settled(status);
      // An exit other than the kick's own is never dropped: the guest did something.
      if (signal.aborted && exit.reason === 'intr') throw signal.reason;
      return exit;
    });
  }

  /**
   * Maps [gpa, gpa + size) into KVM's stage-2 page tables now, as if the vCPU had read it
   * (ioctl KVM_PRE_FAULT_MEMORY), with exactly one call. The kernel may stop early (a signal, a
   * memslot change) and passes back what is left: call again with it until its size is 0, or use
   * {@link preFaultMemory}. A private gpa (MemoryAttribute.PRIVATE) is mapped from its guest_memfd.
   * https://docs.kernel.org/virt/kvm/api.html#kvm-pre-fault-memory
   * @returns the remaining range (size 0n when all of it was mapped)
   * @throws {@link PreFaultMemoryError} (a KvmError with `remaining`): ENOENT for a gpa in no
   * memslot, EINVAL for an empty, unaligned or wrapping range, EINTR/EAGAIN when it stopped before
   * any page (try again), EFAULT, EOPNOTSUPP without two-dimensional paging, ENOTTY on kernels
   * without the call; TypeError/RangeError for bad numbers; KvmStateError while a run is in flight
   * or after close()
   */
  preFaultMemoryOnce(gpa: number | bigint, size: number | bigint): GpaRange {
    const g = u64(gpa, 'gpa');
    const sz = u64(size, 'size');
    const fd = this.#idle();
    const out = new BigUint64Array(2);
    const status = native.preFaultMemory(fd, g, sz, 0, out);
    const left = { gpa: out[0]!, size: out[1]! };
    if (status !== 0) throw this.#preFaultError(status, g, sz, left);
    return left;
  }

  /**
   * Maps [gpa, gpa + size) into KVM's stage-2 page tables (ioctl KVM_PRE_FAULT_MEMORY), calling
   * again until all of it is mapped, on the calling thread. A call that stopped before any page
   * with EINTR ("a signal is pending") or EAGAIN ("a retry may succeed", a racing memslot
   * change) is retried, at most `maxRetries` times in a row. An empty range makes one call, which
   * the kernel refuses (EINVAL). The vCPU is busy until it returns, as during a runAsync(): from
   * `onProgress`, other calls but `kick()` and `close()` throw ERR_KVM_VCPU_RUNNING, and a
   * close() there ends the loop with ERR_KVM_CLOSED.
   * @returns the bytes mapped (`size` when it returns)
   * @throws {@link PreFaultMemoryError} with `remaining` and `mapped` for any other errno (see
   * {@link preFaultMemoryOnce}), or EINTR/EAGAIN past `maxRetries`; what `onProgress` throws;
   * TypeError/RangeError for bad arguments; KvmStateError while a run is in flight or after close()
   * (also a close() from `onProgress`)
   */
  preFaultMemory(gpa: number | bigint, size: number | bigint, opts: PreFaultMemoryOptions = {}): { mapped: bigint } {
    const g = u64(gpa, 'gpa');
    const sz = u64(size, 'size');
    const { onProgress, maxRetries } = preFaultOptions(opts);
    this.#idle();
    const out = new BigUint64Array(2);
    const loop = new PreFaultLoop(g, sz, maxRetries, onProgress);
    // Busy for the whole loop: onProgress cannot start a run (whose KVM_RUN would hold the vCPU
    // mutex our next call waits on, on this very thread) nor another pre-fault.
    this.#inFlight = true;
    try {
      // At least one call: an empty range gets the kernel's answer (EINVAL), as preFaultMemoryOnce's does.
      do {
        // The fd again on every pass: onProgress may have closed this vCPU (and its number been reused).
        const fd = this.open();
        const before = loop.left;
        const status = native.preFaultMemory(fd, before.gpa, before.size, 0, out);
        const failed = loop.step(status, { gpa: out[0]!, size: out[1]! });
        if (failed !== undefined) throw this.#preFaultError(failed, before.gpa, before.size, loop.left, loop.mapped);
      } while (loop.left.size > 0n);
    } finally {
      this.#inFlight = false;
    }
    return { mapped: loop.mapped };
  }

  /**
   * {@link preFaultMemory} with each call on this vCPU's own thread (the one runAsync() uses), so
   * the event loop and the calling thread stay free meanwhile (e.g. to delete a memslot while the
   * call runs). While it is in flight the vCPU is busy as during a runAsync(): other calls but
   * `kick()` and `close()` throw ERR_KVM_VCPU_RUNNING. `kick()` interrupts only the call in
   * flight (EINTR, or a return with the pages done so far), which the loop then continues like any
   * EINTR (see `maxRetries`); to end the loop, abort `options.signal` (the signal's reason is
   * thrown after the call in flight stops) or close() the vCPU. An empty range makes one call, as
   * preFaultMemory() does.
   * @returns (resolves to) the bytes mapped
   * @throws (rejects) as preFaultMemory(); with the signal's reason once `options.signal` aborted;
   * KvmStateError ERR_KVM_CLOSED if the vCPU is closed meanwhile. Throws at once for bad
   * arguments, or a run in flight.
   */
  preFaultMemoryAsync(gpa: number | bigint, size: number | bigint, opts: PreFaultMemoryAsyncOptions = {}): Promise<{ mapped: bigint }> {
    const g = u64(gpa, 'gpa');
    const sz = u64(size, 'size');
    const { onProgress, maxRetries } = preFaultOptions(opts);
    const signal = abortSignal(opts);
    const loop = new PreFaultLoop(g, sz, maxRetries, onProgress);
    return this.#preFaultAsync(signal, async (once) => {
      // At least one call, as in preFaultMemory().
      do {
        const before = loop.left;
        const [status, left] = await once(before);
        const failed = loop.step(status, left);
        if (signal?.aborted) throw signal.reason;
        if (failed !== undefined) throw this.#preFaultError(failed, before.gpa, before.size, loop.left, loop.mapped);
      } while (loop.left.size > 0n);
      return { mapped: loop.mapped };
    });
  }

  /**
   * {@link preFaultMemoryOnce} on this vCPU's own thread: exactly one KVM_PRE_FAULT_MEMORY, with
   * the vCPU busy (as during a runAsync()) until it settles. `kick()` stops it.
   * @returns (resolves to) the remaining range
   * @throws (rejects) {@link PreFaultMemoryError} as preFaultMemoryOnce(); KvmStateError
   * ERR_KVM_CLOSED if the vCPU is closed meanwhile. Throws at once for bad numbers, or a run in flight.
   */
  preFaultMemoryOnceAsync(gpa: number | bigint, size: number | bigint): Promise<GpaRange> {
    const g = u64(gpa, 'gpa');
    const sz = u64(size, 'size');
    return this.#preFaultAsync(undefined, async (once) => {
      const [status, left] = await once({ gpa: g, size: sz });
      if (status !== 0) throw this.#preFaultError(status, g, sz, left);
      return left;
    });
  }

  // Runs `body` with the vCPU busy; `once` makes one KVM_PRE_FAULT_MEMORY on the vCPU's thread.
  #preFaultAsync<T>(
    signal: AbortSignal | undefined,
    body: (once: (r: GpaRange) => Promise<[number, GpaRange]>) => Promise<T>,
  ): Promise<T> {
    this.#idle();
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    const runner = this.#runner;
    const out = new BigUint64Array(2);
    const once = async (r: GpaRange): Promise<[number, GpaRange]> => {
      const status = await runner.preFaultAsync(r.gpa, r.size, 0);
      if (this.closed) throw new KvmStateError('ERR_KVM_CLOSED', `Vcpu ${this.id} was closed while pre-faulting memory`);
      runner.preFaultRange(out);
      return [status, { gpa: out[0]!, size: out[1]! }];
    };
    const onAbort = () => runner.kick();
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#inFlight = true;
    const done = () => {
      this.#inFlight = false;
      signal?.removeEventListener('abort', onAbort);
    };
    let p: Promise<T>;
    try {
      p = body(once);
    } catch (e) {
      done();
      throw e;
    }
    return p.finally(done);
  }

  #preFaultError(status: number, gpa: bigint, size: bigint, remaining: GpaRange, mapped?: bigint): PreFaultMemoryError {
    const e = explain(
      errnoError(status, 'ioctl', `vcpu ${this.id}, gpa=0x${gpa.toString(16)}, size=0x${size.toString(16)}, flags=0x0`, 'KVM_PRE_FAULT_MEMORY'),
      { call: 'pre-fault-memory', gpa: remaining.gpa, size: remaining.size, slots: this.vm.memslots },
    ) as KvmError;
    return Object.assign(e, { remaining, ...(mapped !== undefined ? { mapped } : {}) });
  }

  /**
   * Stops a runAsync() in flight: sets kvm_run.immediate_exit and signals the vCPU's thread, so
   * KVM_RUN returns EINTR and the run settles with `{ reason: 'intr' }`. The guest's state is kept;
   * run again to continue it.
   * @returns whether a run was in flight (false: nothing to stop, nothing changed)
   */
  kick(): boolean {
    return !this.closed && this.#runner.kick();
  }

  /**
   * Closes the vCPU: stops its thread (kicking a run in flight, whose promise then rejects with
   * ERR_KVM_CLOSED), unmaps kvm_run and closes the fd. Idempotent.
   */
  override close(): void {
    if (this.closed) return;
    this.#runner.close();
    super.close();
  }

  // Polls for the run's result from the event loop (setImmediate, so timers and I/O still run)
  // for a short while instead of letting the loop sleep in epoll: most exits a VMM handles (port
  // I/O, MMIO) come back within microseconds, and waking a sleeping thread costs tens of them on a
  // virtual CPU. A result found by polling is taken straight from the vCPU thread, without an
  // event-loop wake-up; after POLL_MS the thread-safe function delivers it. Only with a second CPU
  // to poll on: on one CPU the poll would take the CPU the vCPU thread needs. The vCPU thread
  // polls for the next request the same way (vcpu_runner.cc).
  #poll(): void {
    const runner = this.#runner;
    const deadline = performance.now() + POLL_MS;
    const spin = (): void => {
      if (runner.poll(performance.now() > deadline)) setImmediate(spin);
    };
    setImmediate(spin);
  }

  #settled(status: number): VcpuExit {
    this.#inFlight = false;
    if (this.closed) throw new KvmStateError('ERR_KVM_CLOSED', `Vcpu ${this.id} was closed while running`);
    return this.#decode(status);
  }

  #decode(status: number): VcpuExit {
    const exit = decodeExit(this.#page, this.#buffer, status, this.#views);
    if (exit) return exit;
    throw errnoError(status, 'ioctl', `vcpu ${this.id}`, 'KVM_RUN');
  }

  /** The fd, if the vCPU is open and not running (nor pre-faulting on its thread). */
  #idle(): number {
    const fd = this.open();
    if (this.#inFlight) {
      throw new KvmStateError('ERR_KVM_VCPU_RUNNING', `Vcpu ${this.id} is running (runAsync, preFaultMemory or preFaultMemoryAsync in flight); kick() it or await the run`);
    }
    return fd;
  }
}

/** The pre-fault loop's bookkeeping, shared by the synchronous and asynchronous loops. */
class PreFaultLoop {
  left: GpaRange;
  mapped = 0n;
  #retries = 0;
  constructor(gpa: bigint, size: bigint, readonly maxRetries: number, readonly onProgress?: (done: bigint, left: bigint) => void) {
    this.left = { gpa, size };
  }

  /**
   * Takes one call's result: returns the errno to throw, or undefined to go on. The kernel
   * returns 0 once any page was mapped, else the first error; EINTR and EAGAIN before any page
   * are worth a retry (https://docs.kernel.org/virt/kvm/api.html#kvm-pre-fault-memory).
   */
  step(status: number, left: GpaRange): number | undefined {
    const progress = this.left.size > left.size ? this.left.size - left.size : 0n;
    this.left = left;
    if (progress > 0n) {
      this.mapped += progress;
      this.#retries = 0;
      this.onProgress?.(this.mapped, left.size);
      return status === 0 || status === EINTR || status === EAGAIN ? undefined : status;
    }
    if (status !== 0 && status !== EINTR && status !== EAGAIN) return status;
    // No progress: a retry, bounded (a 0 without progress is one too, so the loop always ends).
    if (++this.#retries > this.maxRetries) return status === 0 ? EAGAIN : status;
    return undefined;
  }
}

function preFaultOptions(opts: PreFaultMemoryOptions): { onProgress?: (done: bigint, left: bigint) => void; maxRetries: number } {
  const o = options(opts, 'options');
  const onProgress = o.onProgress;
  if (onProgress !== undefined && typeof onProgress !== 'function') {
    throw argTypeError('The "options.onProgress" option must be a function');
  }
  const maxRetries = o.maxRetries ?? DEFAULT_MAX_RETRIES;
  if (typeof maxRetries !== 'number' || !Number.isSafeInteger(maxRetries) || maxRetries < 0) {
    throw argRangeError(`The "options.maxRetries" option must be a whole number >= 0; received ${describe(maxRetries)}`);
  }
  return { ...(onProgress ? { onProgress: onProgress as (done: bigint, left: bigint) => void } : {}), maxRetries };
}

function abortSignal(opts: PreFaultMemoryAsyncOptions): AbortSignal | undefined {
  const signal = options(opts, 'options').signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw argTypeError('The "options.signal" argument must be an AbortSignal');
  }
  return signal;
}
