/**
 * The host side of the guest-to-host call convention (a mirror of the kernel KVM selftests'
 * ucall; the guest side and the ABI are guest/ucall.h).
 *
 * A guest makes a call by filling a `struct ucall` in its memory and writing its address to
 * UCALL_PORT with a 32-bit OUT. The host reads the struct through the memslot's mapping, may
 * write a reply into its args, and runs the vCPU again.
 * @module
 */
import { mapGpaRange, type HypercallExit, type MapGpaRange, type VcpuExit } from '../kvm/exits.js';
import { HypercallError } from '../core/constants.js';
import {
  CONSOLE_PORT, UCALL_MAX_ARGS, UCALL_MSG_LEN, UCALL_PORT, UCALL_STRUCT_SIZE, UcallCmd, UcallOffset,
} from './images.js';
import { checkU64, describe } from '../core/numbers.js';
import type { RunAsyncOptions, Vcpu } from '../kvm/vcpu.js';
import { KvmError, argRangeError, argTypeError } from '../core/errors.js';
import { guestMemory } from './memory.js';

/** A decoded guest call. */
export interface Ucall {
  /** What the guest asked for. */
  cmd: 'none' | 'sync' | 'abort' | 'printf' | 'done' | 'unknown';
  /** The raw struct ucall.cmd. */
  command: bigint;
  /** args[0..nargs). */
  args: bigint[];
  /** The NUL-terminated msg (ABORT and PRINTF), '' otherwise. */
  message: string;
  /** Guest-physical address of the struct ucall. */
  address: bigint;
}

const CMD_NAMES = new Map<bigint, Ucall['cmd']>([
  [BigInt(UcallCmd.NONE), 'none'], [BigInt(UcallCmd.SYNC), 'sync'], [BigInt(UcallCmd.ABORT), 'abort'],
  [BigInt(UcallCmd.PRINTF), 'printf'], [BigInt(UcallCmd.DONE), 'done'],
]);

/**
 * The guest call an exit carries, or undefined if the exit is not one (anything but a 4-byte
 * OUT to UCALL_PORT).
 * @throws RangeError if the struct is not in memory the host can reach (see `guestMemory()`)
 */
export function getUcall(vcpu: Vcpu, exit: VcpuExit): Ucall | undefined {
  if (exit.reason !== 'io' || exit.direction !== 'out' || exit.port !== UCALL_PORT || exit.size !== 4 || exit.count !== 1) {
    return undefined;
  }
  const address = BigInt(new DataView(exit.data.buffer, exit.data.byteOffset, 4).getUint32(0, true));
  const b = guestMemory(vcpu.vm, address, UCALL_STRUCT_SIZE);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const command = v.getBigUint64(UcallOffset.CMD, true);
  const nargs = Number(BigInt.asUintN(8, v.getBigUint64(UcallOffset.NARGS, true)));
  const args: bigint[] = [];
  for (let i = 0; i < Math.min(nargs, UCALL_MAX_ARGS); i++) args.push(v.getBigUint64(UcallOffset.ARGS + i * 8, true));
  const msg = b.subarray(UcallOffset.MSG, UcallOffset.MSG + UCALL_MSG_LEN);
  const end = msg.indexOf(0);
  const message = Buffer.from(msg.subarray(0, end < 0 ? msg.length : end)).toString('latin1');
  return { cmd: CMD_NAMES.get(command) ?? 'unknown', command, args, message, address };
}

/**
 * Writes a reply into the guest's struct ucall args[] (the guest reads it after its OUT
 * returns, i.e. on the next run). At most UCALL_MAX_ARGS values.
 */
export function replyUcall(vcpu: Vcpu, ucall: Ucall, args: readonly (number | bigint)[]): void {
  if (!Array.isArray(args) || args.length > UCALL_MAX_ARGS) {
    throw argTypeError(`The "args" argument must be an array of at most ${UCALL_MAX_ARGS} numbers`);
  }
  const b = guestMemory(vcpu.vm, ucall.address, UCALL_STRUCT_SIZE);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  args.forEach((a, i) => v.setBigUint64(UcallOffset.ARGS + i * 8, BigInt(checkU64(a, `args[${i}]`)), true));
}

/** A guest assertion failed (UCALL_ABORT): the message and values are the guest's. */
export class GuestAssertionError extends Error {
  /** The guest's call. */
  readonly ucall: Ucall;
  /** Builds the error from the call. */
  constructor(ucall: Ucall) {
    super(`guest assertion failed: ${ucall.message} [${ucall.args.map((a) => '0x' + a.toString(16)).join(', ')}]`);
    this.name = 'GuestAssertionError';
    this.ucall = ucall;
  }
}

/**
 * The guest stopped in a way the ucall loop does not handle (see `exit`), or made no call in
 * `maxExits` exits.
 */
export class UnexpectedExitError extends Error {
  /** The exit (the last one, when the guest made no call in `maxExits` exits). */
  readonly exit: VcpuExit;
  /** Builds the error from the exit; `exits` when the loop gave up after that many. */
  constructor(exit: VcpuExit, exits?: number) {
    const what = exit.reason === 'io' ? `io ${exit.direction} port 0x${exit.port.toString(16)}`
      : exit.reason === 'mmio' ? `mmio ${exit.isWrite ? 'write' : 'read'} at 0x${exit.address.toString(16)}`
      : exit.reason;
    super(exits === undefined
      ? `unexpected vCPU exit: ${what} (exit_reason ${exit.exitReason})`
      : `the guest made no ucall in ${exits} exits (the last: ${what}, exit_reason ${exit.exitReason})`);
    this.name = 'UnexpectedExitError';
    this.exit = exit;
  }
}

/** Options for {@link runUntilUcall}. */
export interface UcallLoopOptions extends RunAsyncOptions {
  /** Receives console text: bytes written to CONSOLE_PORT, and PRINTF messages. Default: dropped. */
  console?: (text: string) => void;
  /** Use the synchronous `run()` instead of `runAsync()`. */
  sync?: boolean;
  /**
   * Called with every exit that is neither a ucall nor console output (mmio, intr, hlt...):
   * return true when it was handled and the vCPU should run on; false makes it an
   * UnexpectedExitError. It may also throw to end the loop.
   */
  onExit?: (exit: VcpuExit) => boolean;
  /** Give up with UnexpectedExitError after this many exits without a SYNC or DONE call. Default: no limit. */
  maxExits?: number;
  /**
   * Called first with every hypercall exit (KVM_EXIT_HYPERCALL, see `vm.enableCap()`): set
   * `exit.ret[0]` and return true to run on; false passes it to `privateMemory`, then `onExit`.
   */
  onHypercall?: (exit: HypercallExit) => boolean;
  /**
   * Convert private memory as a VMM does, with `vcpu.vm.convertMemory()` (options: its
   * `discard`): a memory-fault exit converts its range to what the guest accessed (private or
   * shared) and runs again; a MAP_GPA_RANGE hypercall converts its range by the ENCRYPTED bit and
   * answers 0, or HypercallError.EINVAL (22) when the range is empty, reaches past 2^64, is not
   * all in guest_memfd memslots, or KVM_SET_MEMORY_ATTRIBUTES refuses it (EINVAL, e.g.
   * unaligned): a hostile guest cannot end the loop. Other failures (a closed Vm, GuestMemfd or
   * Mapping, ENOMEM...) end it with convertMemory()'s error. A memory fault outside guest_memfd
   * memslots ends the loop with convertMemory()'s RangeError. Checked, like `onHypercall`,
   * before the vCPU first runs.
   */
  privateMemory?: true | { discard?: boolean };
}

/** convertMemory()'s options from `privateMemory`, or undefined when it is off. */
function privateMemoryOptions(o: UcallLoopOptions): { discard?: boolean } | undefined {
  const p = o.privateMemory;
  if (p === undefined) return undefined;
  if (p === true) return {};
  if (typeof p !== 'object' || p === null) throw argTypeError(`The "options.privateMemory" option must be true or an object; received ${describe(p)}`);
  const discard = p.discard;
  if (discard !== undefined && typeof discard !== 'boolean') {
    throw argTypeError(`The "options.privateMemory.discard" option must be a boolean; received ${describe(discard)}`);
  }
  return discard === undefined ? {} : { discard };
}

/** Checks the loop's hooks before the vCPU first runs, so a mistake is not found only when the exit that needs it comes. */
function checkLoopOptions(o: UcallLoopOptions): void {
  if (o.onHypercall !== undefined && typeof o.onHypercall !== 'function') {
    throw argTypeError(`The "options.onHypercall" option must be a function; received ${describe(o.onHypercall)}`);
  }
  privateMemoryOptions(o);
}

const GPA_LIMIT = 1n << 64n;

/**
 * Converts the range of a MAP_GPA_RANGE hypercall and returns the guest's answer: 0, or
 * KVM_EINVAL for a range that cannot be converted. The page count is the guest's: an empty range
 * or one past 2^64 is refused without a call, as KVM refuses them
 * (https://docs.kernel.org/virt/kvm/x86/hypercalls.html, KVM_HC_MAP_GPA_RANGE).
 */
function mapForGuest(vcpu: Vcpu, map: MapGpaRange, convert: { discard?: boolean }): bigint {
  const einval = BigInt(HypercallError.EINVAL);
  if (map.size === 0n || map.gpa + map.size > GPA_LIMIT) return einval;
  try {
    vcpu.vm.convertMemory(map.gpa, map.size, map.private ? 'private' : 'shared', convert);
    return 0n;
  } catch (e) {
    // The range is the guest's mistake (not in guest_memfd memslots, a bad number, or refused by
    // KVM_SET_MEMORY_ATTRIBUTES, e.g. unaligned); anything else (a closed object, ENOMEM...) is the VMM's.
    const code = (e as { code?: unknown }).code;
    if (e instanceof RangeError && (code === 'ERR_KVM_NOT_GUEST_MEMFD' || code === 'ERR_OUT_OF_RANGE')) return einval;
    if (e instanceof KvmError && e.code === 'EINVAL' && e.request === 'KVM_SET_MEMORY_ATTRIBUTES') return einval;
    throw e;
  }
}

/** Whether the private-memory exits of `exit` were handled (the vCPU runs on). */
function handlePrivate(vcpu: Vcpu, exit: VcpuExit, o: UcallLoopOptions): boolean {
  if (exit.reason === 'hypercall' && o.onHypercall?.(exit)) return true;
  const convert = privateMemoryOptions(o);
  if (convert === undefined) return false;
  if (exit.reason === 'memory_fault') {
    vcpu.vm.convertMemory(exit.gpa, exit.size, exit.private ? 'private' : 'shared', convert);
    return true;
  }
  const map = mapGpaRange(exit);
  if (map === undefined || exit.reason !== 'hypercall') return false;
  exit.ret[0] = mapForGuest(vcpu, map, convert);
  return true;
}

function handle(vcpu: Vcpu, exit: VcpuExit, o: UcallLoopOptions): Ucall | undefined {
  if (handlePrivate(vcpu, exit, o)) return undefined;
  if (exit.reason === 'io' && exit.port === CONSOLE_PORT && exit.direction === 'out') {
    o.console?.(Buffer.from(exit.data).toString('latin1'));
    return undefined;
  }
  const uc = getUcall(vcpu, exit);
  if (uc === undefined) {
    if (o.onExit?.(exit)) return undefined;
    throw new UnexpectedExitError(exit);
  }
  if (uc.cmd === 'printf') {
    o.console?.(uc.message);
    return undefined;
  }
  if (uc.cmd === 'abort') throw new GuestAssertionError(uc);
  return uc;
}

/**
 * Runs the vCPU until the guest makes a SYNC or DONE call, and returns it: the one ucall loop
 * of the library. On the way, console output and PRINTF calls go to `options.console`,
 * hypercalls to `options.onHypercall`, memory faults and MAP_GPA_RANGE hypercalls to
 * `options.privateMemory` when set, other exits to `options.onExit`.
 * @throws (rejects) GuestAssertionError for an ABORT call; UnexpectedExitError for an exit
 * nobody handled (mmio, hlt, shutdown...) or after `maxExits`; what runAsync() throws;
 * TypeError for an `onHypercall` that is not a function or a bad `privateMemory`, and RangeError
 * for a bad `maxExits`, before the vCPU runs
 */
export async function runUntilUcall(vcpu: Vcpu, opts: UcallLoopOptions = {}): Promise<Ucall> {
  if (opts.sync) return runUntilUcallSync(vcpu, opts);
  checkLoopOptions(opts);
  const runOpts: RunAsyncOptions = opts.signal ? { signal: opts.signal } : {};
  const max = maxExits(opts);
  let exit: VcpuExit | undefined;
  for (let n = 0; n < max; n++) {
    exit = await vcpu.runAsync(runOpts);
    const uc = handle(vcpu, exit, opts);
    if (uc) return uc;
  }
  throw new UnexpectedExitError(exit!, max);
}

/** {@link runUntilUcall} with the synchronous `run()`, returning at once. */
export function runUntilUcallSync(vcpu: Vcpu, opts: Omit<UcallLoopOptions, 'sync' | 'signal'> = {}): Ucall {
  checkLoopOptions(opts);
  const max = maxExits(opts);
  let exit: VcpuExit | undefined;
  for (let n = 0; n < max; n++) {
    exit = vcpu.run();
    const uc = handle(vcpu, exit, opts);
    if (uc) return uc;
  }
  throw new UnexpectedExitError(exit!, max);
}

function maxExits(opts: Pick<UcallLoopOptions, 'maxExits'>): number {
  if (opts.maxExits === undefined) return Infinity;
  if (!Number.isSafeInteger(opts.maxExits) || opts.maxExits < 1) {
    throw argRangeError(`The "options.maxExits" argument must be a whole number >= 1; received ${String(opts.maxExits)}`);
  }
  return opts.maxExits;
}
