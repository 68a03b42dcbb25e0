/**
 * Taking over a kernel object's fd that came from elsewhere (another process through an
 * FdChannel, a parent, a C program): the steps GuestMemfd.adopt(), Vm.adopt() and
 * vm.adoptVcpu() share.
 * @module
 */
import { argTypeError, KvmStateError, type KvmArgCode } from '../core/errors.js';
import { fdFacts, type FdFacts } from '../core/fd-identity.js';
import { native, type NativeStat } from '../core/native.js';
import { describe, fdNumber } from '../core/numbers.js';
import { refuseOwned } from '../core/resource.js';
import { receivedFdOf, type HeldReceivedFd } from '../ipc/message.js';

/** The `fd` argument of an adopt: a number, or a ReceivedFd of this library (read once). */
export interface FdArgument {
  n: number;
  received: HeldReceivedFd | undefined;
}

/** Reads the `fd` argument once: a ReceivedFd by its private fields, else an fd number. */
export function fdArgument(fd: unknown): FdArgument {
  const received = receivedFdOf(fd);
  if (received === undefined && typeof fd === 'object' && fd !== null) {
    throw argTypeError(`The "fd" argument must be a file descriptor or a ReceivedFd of this library; received ${describe(fd)}`);
  }
  return { n: received ? received.fd : fdNumber(fd, 'fd'), received };
}

/** The `dup` option (default false). */
export function dupOption(value: unknown): boolean {
  const dup = value ?? false;
  if (typeof dup !== 'boolean') throw argTypeError(`The "options.dup" option must be a boolean; received ${describe(dup)}`);
  return dup;
}

type AdoptedKind = 'guest_memfd' | 'vm' | 'vcpu';

const NOT_KIND: Record<AdoptedKind, [code: KvmArgCode, what: string]> = {
  guest_memfd: ['ERR_KVM_NOT_GUEST_MEMFD', 'a guest_memfd'],
  vm: ['ERR_KVM_NOT_VM', 'a KVM VM'],
  vcpu: ['ERR_KVM_NOT_VCPU', 'a KVM vCPU'],
};

/** Checks of one kind of object, around the ownership check. */
export interface AdoptChecks {
  /** After the kind check, before the ownership check: what the file itself must be. */
  before?: (n: number, facts: FdFacts, st: NativeStat) => void;
  /** After the ownership check: checks with side effects on the file (a guarded read). */
  after?: (n: number) => void;
}

/**
 * The checks and the hand-over: the fd is of `kind` (and passes `checks`), no live library
 * object owns it (unless `dup`); then `build` gets the fd, made close-on-exec, or a
 * close-on-exec duplicate. A ReceivedFd leaves its message only once `build` succeeded; on any
 * failure the fd stays the caller's.
 */
export function takeOver<T>({ n, received }: FdArgument, dup: boolean, kind: AdoptedKind, checks: AdoptChecks, build: (fd: number) => T): T {
  if (received?.closed) throw new KvmStateError('ERR_KVM_CLOSED', `received fd ${n} was already taken or closed`);
  const st = native.fstat(n); // EBADF for a closed fd
  const facts = fdFacts(n);
  if (facts.kind !== kind) {
    const [code, what] = NOT_KIND[kind];
    throw argTypeError(
      `fd ${n} is not ${what}: /proc/self/fd/${n} is '${facts.link}' on a filesystem with magic 0x${facts.fsMagic.toString(16)}`,
      code,
    );
  }
  checks.before?.(n, facts, st);
  if (!dup) refuseOwned(n, 'fd', received?.owner);
  checks.after?.(n);
  if (dup) {
    const copy = native.dupCloexec(n);
    try {
      return build(copy);
    } catch (e) {
      native.close(copy);
      throw e;
    }
  }
  native.setCloexec(n);
  const made = build(n);
  received?.take();
  return made;
}
