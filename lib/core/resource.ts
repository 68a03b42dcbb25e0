/**
 * The fd lifetime shared by every kernel object (Kvm, Vm, GuestMemfd): one owner per fd,
 * idempotent close(), `[Symbol.dispose]` that never throws, a clear error on use after close,
 * and a FinalizationRegistry that closes a leaked guest_memfd as a safety net only.
 *
 * One registry says which library object owns each fd number: every FdResource and every fd a
 * received message still holds. Taking a number from a user (`GuestMemfd.adopt()`,
 * `FdChannel.fromFd()`) is refused while a live object owns it, and the safety net closes a
 * number only while the registry still names the collected object as its owner.
 * @module
 * @internal
 */
import { KvmStateError } from './errors.js';
import { fdFacts } from './fd-identity.js';
import { native } from './native.js';

/** How the safety net recognises a leaked fd as still being the object's own file. */
export interface FdIdentity {
  /** What /proc/self/fd/N read as when the object took the fd (fdFacts().link). */
  link: string;
  /** Its filesystem's magic number (fstatfs): inode numbers are unique only within one. */
  fsMagic: number;
  /** The file's inode (fstat st_ino). */
  ino: number | bigint;
}

/** The identity of an fd the library just took: its link, its filesystem and its inode. */
export function identityOf(fd: number): FdIdentity {
  const f = fdFacts(fd);
  return { link: f.link, fsMagic: f.fsMagic, ino: native.inodeOf(fd) };
}

function sameFile(fd: number, id: FdIdentity): boolean {
  const f = fdFacts(fd);
  return f.link === id.link && f.fsMagic === id.fsMagic && native.inodeOf(fd) === id.ino;
}

// fd number -> its owner, held weakly so that a leaked owner can still be collected (and its fd
// closed by the safety net). An entry whose object is gone or closed owns nothing.
const owners = new Map<number, WeakRef<object>>();

/**
 * Records `owner` as the owner of `fd`, replacing any earlier entry: the kernel has just given
 * this number to the library (a new fd, or one a caller handed over after {@link refuseOwned}),
 * so an older entry can only be an object whose fd was closed behind the library's back.
 * @returns the entry, to pass to {@link releaseFd}
 */
export function claimFd(fd: number, owner: object): WeakRef<object> {
  const ref = new WeakRef(owner);
  owners.set(fd, ref);
  return ref;
}

/** Forgets `ref` as the owner of `fd`, unless the number has been claimed by another since. */
export function releaseFd(fd: number, ref: WeakRef<object>): void {
  if (owners.get(fd) === ref) owners.delete(fd);
}

/** The live library object that owns `fd`, if any. */
export function fdOwner(fd: number): object | undefined {
  const owner = owners.get(fd)?.deref();
  if (owner === undefined) owners.delete(fd);
  return owner;
}

/**
 * Refuses to take over `fd` while a live library object other than `except` owns it: a second
 * owner would close (or punch, or map) a file that is not its own once the first one is done
 * with the number.
 * @throws KvmStateError ERR_KVM_FD_OWNED naming the argument and its owner
 */
export function refuseOwned(fd: number, name: string, except?: object): void {
  const owner = fdOwner(fd);
  if (owner === undefined || owner === except) return;
  const what = owner.constructor?.name ?? 'object';
  throw new KvmStateError(
    'ERR_KVM_FD_OWNED',
    `The "${name}" argument (fd ${fd}) is owned by a live ${what} of this library: pass { dup: true } to adopt a ` +
      `duplicate (F_DUPFD_CLOEXEC), or close that object first`,
  );
}

interface Leak extends FdIdentity {
  fd: number;
  /** The collected object's entry in the owner registry. */
  ref: WeakRef<object>;
  /** Its record in this environment's native fd record (see ownFd). */
  owned: number;
}

// Closes fds of objects that were garbage-collected without close(). Only a number the registry
// still gives to the collected object is closed: any other owner since then (the number was
// closed behind the library's back and reused) keeps it. The link, the filesystem and the inode
// must match as well, for a number closed and reused outside the library. Only files with an
// inode of their own can be told apart this way (guest_memfd: one inode per file); VM and
// /dev/kvm fds share one inode per kind, so objects for those are not given to the safety net
// and a leaked one stays open until its environment ends (the main thread's at exit, a Worker's
// when it ends; see ownFd).
const leaks = new FinalizationRegistry<Leak>(({ fd, ref, owned, ...id }) => {
  try {
    native.disownFd(owned);
  } catch {
    // Nothing recorded: nothing to forget.
  }
  if (owners.get(fd) !== ref) return;
  owners.delete(fd);
  try {
    if (sameFile(fd, id)) native.close(fd);
  } catch {
    // The fd is gone already; nothing to do.
  }
});

// Set by FdResource's static block: only code inside the class can read its private fields.
let readOwnFd: (value: unknown, name: string) => number | undefined;

/** Base class of the fd-owning objects. */
export abstract class FdResource implements Disposable {
  #fd: number;
  readonly #what: string;
  // This environment's record of the fd (native ownFd), which closes it at the environment's
  // teardown (a Worker ending) if close() never ran: a FinalizationRegistry does not run then.
  readonly #owned: number;
  readonly #ref: WeakRef<object>;

  static {
    readOwnFd = (value, name) => {
      if (typeof value !== 'object' || value === null || !(#fd in value)) return undefined;
      const fd = value.#fd;
      if (fd < 0) throw new KvmStateError('ERR_KVM_CLOSED', `The "${name}" argument: ${value.#what} is closed`);
      return fd;
    };
  }

  /**
   * @param fd the fd this object now owns
   * @param what the object's name in error messages ('Vm', 'GuestMemfd')
   * @param identity for files that can be told apart from others of their kind: the leak safety
   * net closes the fd if this object is collected without close()
   */
  protected constructor(fd: number, what: string, identity?: FdIdentity) {
    this.#fd = fd;
    this.#what = what;
    this.#ref = claimFd(fd, this);
    this.#owned = native.ownFd(fd, identity !== undefined);
    if (identity) leaks.register(this, { fd, ref: this.#ref, owned: this.#owned, ...identity }, this);
  }

  /** The file descriptor. Throws a KvmStateError (ERR_KVM_CLOSED) after close(). */
  get fd(): number {
    return this.open();
  }

  /** Whether close() has been called. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Returns the fd, or throws ERR_KVM_CLOSED if this object was closed. */
  protected open(): number {
    const fd = this.#fd;
    if (fd < 0) throw new KvmStateError('ERR_KVM_CLOSED', `${this.#what} is closed`);
    return fd;
  }

  /**
   * Closes the fd (close(2)). Idempotent: later calls do nothing. The object forgets the fd
   * before the call, so it can never act on the number again even if close(2) fails.
   * @throws KvmError only if close(2) itself fails (e.g. EBADF if the fd was closed behind
   * the library's back).
   */
  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    leaks.unregister(this);
    releaseFd(fd, this.#ref);
    native.disownFd(this.#owned);
    native.close(fd);
  }

  /** Closes like close(), but never throws (for `using`). */
  [Symbol.dispose](): void {
    try {
      this.close();
    } catch {
      // dispose must not throw; close() already forgot the fd.
    }
  }
}

/**
 * The fd of a library object, read from the object's own private field: no getter, proxy or
 * own property that user code may have put on it runs. `undefined` if `value` is not an
 * FdResource.
 * @throws KvmStateError ERR_KVM_CLOSED (naming `name`) if the object is closed
 */
export function ownFd(value: unknown, name: string): number | undefined {
  return readOwnFd(value, name);
}
