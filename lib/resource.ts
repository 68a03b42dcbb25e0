/**
 * The fd lifetime shared by every kernel object (Kvm, Vm, GuestMemfd): one owner per fd,
 * idempotent close(), `[Symbol.dispose]` that never throws, a clear error on use after close,
 * and a FinalizationRegistry that closes a leaked fd as a safety net only.
 * @module
 * @internal
 */
import { readlinkSync } from 'node:fs';
import { KvmStateError } from './errors.js';
import { native } from './native.js';

interface Leak {
  fd: number;
  /** What /proc/self/fd/N must still name for the fd to be ours. */
  link: string;
}

// Closes fds of objects that were garbage-collected without close(). The fd number might have
// been closed and reused by someone else since (through a raw close()), so the link is checked
// first: a reused number that now names something else is left alone.
const leaks = new FinalizationRegistry<Leak>(({ fd, link }) => {
  try {
    if (readlinkSync(`/proc/self/fd/${fd}`) === link) native.close(fd);
  } catch {
    // The fd is gone already; nothing to do.
  }
});

/** Base class of the fd-owning objects. */
export abstract class FdResource implements Disposable {
  #fd: number;
  readonly #what: string;

  /**
   * @param fd the fd this object now owns
   * @param what the object's name in error messages ('Vm', 'GuestMemfd')
   * @param link what /proc/self/fd/<fd> reads as, for the leak safety net
   */
  protected constructor(fd: number, what: string, link: string) {
    this.#fd = fd;
    this.#what = what;
    leaks.register(this, { fd, link }, this);
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
