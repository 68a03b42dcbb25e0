/**
 * The fd lifetime shared by every kernel object (Kvm, Vm, GuestMemfd): one owner per fd,
 * idempotent close(), `[Symbol.dispose]` that never throws, a clear error on use after close,
 * and a FinalizationRegistry that closes a leaked guest_memfd as a safety net only.
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

interface Leak extends FdIdentity {
  fd: number;
  owned: number;
}

// Closes fds of objects that were garbage-collected without close(). The number may have been
// closed behind the library's back and reused since, even by a file of the same kind, so the
// link, the filesystem and the inode must all still match. Only files with an inode of their own
// can be told apart this way (guest_memfd: one inode per file); VM and /dev/kvm fds share one
// inode per kind, so objects for those are not given to the safety net and a leaked one stays open
// until its environment ends (the main thread's at exit, a Worker's when it ends; see ownFd).
const leaks = new FinalizationRegistry<Leak>(({ fd, owned, ...id }) => {
  try {
    native.disownFd(owned);
    if (sameFile(fd, id)) native.close(fd);
  } catch {
    // The fd is gone already; nothing to do.
  }
});

/** Base class of the fd-owning objects. */
export abstract class FdResource implements Disposable {
  #fd: number;
  readonly #what: string;
  // This environment's record of the fd (native ownFd), which closes it at the environment's
  // teardown (a Worker ending) if close() never ran: a FinalizationRegistry does not run then.
  readonly #owned: number;

  /**
   * @param fd the fd this object now owns
   * @param what the object's name in error messages ('Vm', 'GuestMemfd')
   * @param identity for files that can be told apart from others of their kind: the leak safety
   * net closes the fd if this object is collected without close()
   */
  protected constructor(fd: number, what: string, identity?: FdIdentity) {
    this.#fd = fd;
    this.#what = what;
    this.#owned = native.ownFd(fd, identity !== undefined);
    if (identity) leaks.register(this, { fd, owned: this.#owned, ...identity }, this);
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
