/**
 * What `FdChannel.receive()` gives: a message (its JSON payload) and the fds it carried, each
 * owned by the message until taken.
 * @module
 */
import { KvmStateError } from '../core/errors.js';
import { ANON_INODE_FS_MAGIC, fdFacts, type FdFacts, type FdKind } from '../core/fd-identity.js';
import { native, type NativeMessage } from '../core/native.js';
import { claimFd, releaseFd } from '../core/resource.js';
import { decodePayload, MAX_PAYLOAD, MSG_CTRUNC, MSG_TRUNC } from './wire.js';

/**
 * One fd of a received message. It arrives close-on-exec (MSG_CMSG_CLOEXEC). The message owns
 * it until `take()`: disposing the message closes every fd not taken.
 */
export interface ReceivedFd {
  /** The fd number in this process (FD_CLOEXEC set). */
  readonly fd: number;
  /**
   * What it is ('guest_memfd', 'vm', 'vcpu', 'kvm', else 'other'), decided by `fdKind()`: the
   * filesystem's magic number and, on the anon-inode filesystem, the kernel's name for the file.
   */
  readonly kind: FdKind;
  /** What /proc/self/fd/N linked to when the message arrived. */
  readonly link: string;
  /** Whether the fd has left the message: taken or closed. */
  readonly closed: boolean;
  /**
   * Hands the fd to the caller, who must close it (or give it to an object that will, e.g.
   * `GuestMemfd.adopt()`, which also takes a ReceivedFd directly).
   * @throws KvmStateError ERR_KVM_CLOSED if it was already taken or closed
   */
  take(): number;
  /**
   * Closes the fd (close(2)) unless it was taken. Idempotent.
   * @throws KvmError if close(2) fails (EBADF if it was closed behind the library's back)
   */
  close(): void;
}

/**
 * A received message: the payload and the fds, in the order they were sent. Dispose it (or
 * close the fds) when done: the fds not taken are closed then. An undisposed message keeps its
 * fds open until its environment ends (the process exits, or the Worker that received it ends).
 */
export interface ReceivedMessage extends Disposable {
  /** JSON.parse of the payload. */
  readonly payload: unknown;
  /** The fds, in the order sent. */
  readonly fds: readonly ReceivedFd[];
  /** Closes every fd that was not taken; never throws. */
  [Symbol.dispose](): void;
}

/** A {@link ReceivedFd} of this library, seen through its private fields. */
export interface HeldReceivedFd {
  /** The fd number. */
  readonly fd: number;
  /** Whether it has left its message (taken or closed). */
  readonly closed: boolean;
  /** Hands the fd over (see {@link ReceivedFd.take}). */
  take(): number;
  /** The ReceivedFd itself: the fd's owner until take(). */
  readonly owner: object;
}

/**
 * `value` if it is a ReceivedFd this library made (recognised by its private fields, so no
 * getter of a look-alike object runs), else undefined.
 * @internal
 */
export function receivedFdOf(value: unknown): HeldReceivedFd | undefined {
  return heldOf(value);
}

let heldOf: (value: unknown) => HeldReceivedFd | undefined;

class Received implements ReceivedFd {
  readonly #fd: number;
  readonly kind: FdKind;
  readonly link: string;
  #held = true;
  // The message owns the fd until take(): a raw number of it cannot be adopted meanwhile.
  readonly #ref: WeakRef<object>;
  // This environment's record of the fd: a Worker that ends with the message unread closes it.
  #owned = 0;

  static {
    heldOf = (value) => {
      if (typeof value !== 'object' || value === null || !(#held in value)) return undefined;
      const r = value;
      return {
        fd: r.#fd,
        get closed() {
          return !r.#held;
        },
        take: () => r.take(),
        owner: r,
      };
    };
  }

  constructor(fd: number) {
    this.#fd = fd;
    this.#ref = claimFd(fd, this);
    let facts: FdFacts;
    try {
      facts = fdFacts(fd);
    } catch {
      facts = { kind: 'other', link: '', fsMagic: 0 };
    }
    this.link = facts.link;
    this.kind = facts.kind;
    // A file with an inode of its own is recognised by it; a shared anonymous inode (VM, vCPU)
    // needs a duplicate to be told apart at teardown.
    this.#owned = native.ownFd(fd, facts.fsMagic !== 0 && facts.fsMagic !== ANON_INODE_FS_MAGIC);
  }

  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return !this.#held;
  }

  take(): number {
    if (!this.#held) throw new KvmStateError('ERR_KVM_CLOSED', `received fd ${this.#fd} was already taken or closed`);
    this.#held = false;
    releaseFd(this.#fd, this.#ref);
    native.disownFd(this.#owned);
    return this.#fd;
  }

  close(): void {
    if (!this.#held) return;
    this.#held = false;
    releaseFd(this.#fd, this.#ref);
    native.disownFd(this.#owned);
    native.close(this.#fd);
  }
}

class Message implements ReceivedMessage {
  readonly payload: unknown;
  readonly fds: readonly ReceivedFd[];

  constructor(payload: unknown, fds: ReceivedFd[]) {
    this.payload = payload;
    this.fds = fds;
  }

  [Symbol.dispose](): void {
    for (const f of this.fds) {
      try {
        f.close();
      } catch {
        // dispose never throws; the fd is forgotten either way.
      }
    }
  }
}

/** Turns what recvMsg returned into a message, or throws (after closing its fds). */
export function toMessage(m: NativeMessage, maxFds: number): ReceivedMessage {
  const closeAll = () => {
    for (const fd of m.fds) {
      try {
        native.close(fd);
      } catch {
        // gone already
      }
    }
  };
  if ((m.flags & MSG_CTRUNC) !== 0 && m.closed < m.room) {
    // Room was left, so the kernel stopped installing fds for another reason than maxFds (the fd
    // table had a free number again by the time the addon asked, or a security module refused).
    throw new KvmStateError(
      'ERR_KVM_CONTROL_TRUNCATED',
      `FdChannel.receive: the kernel installed only ${m.closed} of the message's fds with room for ${m.room} (MSG_CTRUNC); ` +
        `the fd table was full for a moment or a security module refused one; the ${m.closed} fds received were closed`,
    );
  }
  if ((m.flags & MSG_CTRUNC) !== 0 || (m.closed > 0 && (m.flags & MSG_TRUNC) === 0)) {
    const how = (m.flags & MSG_CTRUNC) !== 0 ? 'the control data was truncated (MSG_CTRUNC)' : `${m.closed} arrived`;
    throw new KvmStateError(
      'ERR_KVM_CONTROL_TRUNCATED',
      `FdChannel.receive: the message carried more fds than maxFds (${maxFds}): ${how}; ` +
        `the ${m.closed} fds received were closed`,
    );
  }
  if ((m.flags & MSG_TRUNC) !== 0) {
    throw new KvmStateError(
      'ERR_KVM_PAYLOAD_TRUNCATED',
      `FdChannel.receive: the payload was longer than MAX_PAYLOAD (${MAX_PAYLOAD} bytes) and was truncated (MSG_TRUNC); ` +
        `the ${m.closed} fds it carried were closed`,
    );
  }
  if (m.bytes.length === 0) {
    if (m.eof) throw new KvmStateError('ERR_KVM_PEER_CLOSED', 'FdChannel.receive: the peer closed the connection');
    if (m.fds.length === 0) throw new KvmStateError('ERR_KVM_BAD_MESSAGE', 'FdChannel.receive: an empty message (no payload, no fds) from a peer still connected');
    closeAll();
    throw new KvmStateError('ERR_KVM_BAD_MESSAGE', `FdChannel.receive: an empty message with ${m.fds.length} fds (they were closed)`);
  }
  let payload: unknown;
  try {
    payload = decodePayload(m.bytes);
  } catch (e) {
    if (e instanceof KvmStateError) {
      closeAll();
      throw e;
    }
    closeAll();
    throw new KvmStateError(
      'ERR_KVM_BAD_MESSAGE',
      `FdChannel.receive: the payload (${m.bytes.length} bytes) is not UTF-8 JSON; the ${m.fds.length} fds it carried were closed`,
      { cause: e },
    );
  }
  return new Message(payload, m.fds.map((fd) => new Received(fd)));
}
