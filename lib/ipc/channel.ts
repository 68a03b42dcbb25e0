/**
 * FdChannel: passing file descriptors (guest_memfd, VM, vCPU, any fd) between processes over a
 * Unix domain socket, with a JSON payload beside them, the way a VMM hands its guest memory to
 * its own upgraded successor.
 *
 * The socket is AF_UNIX SOCK_SEQPACKET: message boundaries are kept, so one `send()` is one
 * `receive()`, and the fds travel in the same sendmsg(2) as the payload (SCM_RIGHTS). Node cannot
 * send arbitrary fds itself, so the system calls are the addon's (native/ipc/fdpass.cc).
 *
 * A message on the wire is exactly the UTF-8 JSON text of the payload (at most
 * {@link MAX_PAYLOAD} bytes) plus at most {@link MAX_FDS} fds in one SCM_RIGHTS control message;
 * a C program can speak it too. An empty message is never sent: on a SEQPACKET socket a read of
 * 0 bytes is what the peer's close looks like.
 * @module
 */
import { statSync, unlinkSync } from 'node:fs';
import { KvmError, KvmStateError, argRangeError, argTypeError, errnoError } from '../core/errors.js';
import { fdFacts } from '../core/fd-identity.js';
import { type NativeFdWatch, type NativeMessage, native } from '../core/native.js';
import { describe, fdNumber, options } from '../core/numbers.js';
import { FdResource, identityOf, ownFd, refuseOwned } from '../core/resource.js';
import { FdListener, type ListenOptions } from './listener.js';
import { type ReceivedMessage, toMessage } from './message.js';
import { Turns, WAIT_CLOSED, boolOption, checkPath, deadlineOf, staleSocket, timeoutArg, waitOn } from './socket.js';
import { AF_UNIX, DEFAULT_SEND_TIMEOUT_MS, MAX_FDS, MAX_PAYLOAD, SCM_MAX_FD, SOCK_SEQPACKET, encodePayload } from './wire.js';

/**
 * Something `send()` can pass: an object of this library that holds an fd (Kvm, Vm, Vcpu,
 * GuestMemfd, FdChannel; its fd is sent, the object keeps it) or a raw fd.
 */
export type SendItem = FdResource | number;

/** Options of `FdChannel.send()`. */
export interface SendOptions {
  /**
   * How long to wait for room when the peer's receive queue is full, in milliseconds (default
   * {@link DEFAULT_SEND_TIMEOUT_MS}; `Infinity` for no limit). send() is synchronous: it blocks
   * the calling thread while it waits.
   */
  timeoutMs?: number;
}

/** Options of `FdChannel.receive()`. */
export interface ReceiveOptions {
  /** Give up after this many milliseconds (KvmStateError ERR_KVM_TIMEOUT). Default: no limit. */
  timeoutMs?: number;
  /**
   * The most fds to accept in the message (default {@link MAX_FDS}, at most 253). A message
   * with more is refused with ERR_KVM_CONTROL_TRUNCATED and every fd it carried is closed.
   */
  maxFds?: number;
}

/** Options of `FdChannel.connect()`. */
export interface ConnectOptions {
  /**
   * Give up after this many milliseconds (KvmStateError ERR_KVM_TIMEOUT). Default: no limit.
   * Waiting happens while the listener's backlog is full (EAGAIN) and, with `waitForListener`,
   * while nobody listens on the path yet.
   */
  timeoutMs?: number;
  /**
   * Retry (with a short back-off, until `timeoutMs`) when the path does not exist yet (ENOENT)
   * or nobody listens on it (ECONNREFUSED), instead of failing at once. Default false.
   */
  waitForListener?: boolean;
}

/** Options of `FdChannel.fromFd()`. */
export interface FromFdOptions {
  /**
   * Own a duplicate (fcntl F_DUPFD_CLOEXEC) instead of the fd itself: the caller (or the library
   * object that owns it) keeps the original. Default false: the channel takes the fd over.
   */
  dup?: boolean;
}

/**
 * One end of a connected AF_UNIX SOCK_SEQPACKET socket that carries messages (a JSON payload
 * and up to {@link MAX_FDS} fds each) to the process at the other end.
 *
 * Make one with `FdChannel.pair()` (both ends here: give one to a child), `FdChannel.connect()`
 * to a path an `FdListener` listens on, `FdListener.accept()`, or `FdChannel.fromFd()` for an
 * inherited socket. The socket fd is FD_CLOEXEC. Close it (or `using`); one dropped without
 * close() is closed when collected (a safety net: sockets have an inode each, so the number is
 * checked to still be this socket first).
 *
 * Sending a Vm or Vcpu fd works, but KVM ties a VM to the address space that created it: in the
 * receiving process every VM or vCPU ioctl on it fails with EIO. A guest_memfd, on the other hand,
 * can be mapped, allocated and punched there (`GuestMemfd.adopt()`), with its data intact.
 */
export class FdChannel extends FdResource {
  #watch: NativeFdWatch | undefined;
  readonly #turns = new Turns();

  private constructor(fd: number) {
    super(fd, 'FdChannel', identityOf(fd));
  }

  /** @internal The FdChannel of a connection accept4() just made: nothing else can own that fd. */
  static fromAccepted(fd: number): FdChannel {
    return new FdChannel(fd);
  }

  /**
   * Two connected ends in this process: socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC).
   * Pass one end's fd to a child (e.g. as an extra stdio entry of child_process.spawn), close
   * it here, and the child calls `FdChannel.fromFd()`.
   * @throws KvmError (syscall 'socketpair'): EMFILE, ENFILE
   */
  static pair(): [FdChannel, FdChannel] {
    const [a, b] = native.socketPair();
    let first: FdChannel | undefined;
    try {
      first = new FdChannel(a);
      return [first, new FdChannel(b)];
    } catch (e) {
      if (first) first.close();
      else native.close(a);
      native.close(b);
      throw e;
    }
  }

  /**
   * Listens on a socket path: socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK),
   * bind(2), listen(2). If the path is taken (EADDRINUSE) by a socket file that nobody listens
   * on any more (connect(2) says ECONNREFUSED), that stale file is unlinked and bind retried;
   * anything else at the path (a live listener, a regular file) is left alone and the
   * EADDRINUSE thrown.
   * @throws KvmError (syscall 'bind' / 'listen'): EADDRINUSE, EACCES, ENOENT (no such
   * directory); TypeError/RangeError for a bad path (empty, NUL byte, over 107 bytes) or backlog
   */
  static listen(path: string, opts: ListenOptions = {}): FdListener {
    checkPath(path);
    const o = options(opts, 'options');
    const backlog = o.backlog ?? 16;
    if (typeof backlog !== 'number') throw argTypeError(`The "options.backlog" option must be an integer; received ${describe(backlog)}`);
    if (!Number.isInteger(backlog) || backlog < 1 || backlog > 0x7fffffff) {
      throw argRangeError(`The "options.backlog" option must be an integer >= 1; received ${backlog}`);
    }
    let fd: number;
    try {
      fd = native.unixListen(path, backlog);
    } catch (e) {
      if (!(e instanceof KvmError) || e.code !== 'EADDRINUSE') throw e;
      const why = staleSocket(path);
      if (why !== undefined) throw e.withHint(why);
      try {
        unlinkSync(path);
      } catch {
        // Someone else removed it first: bind again all the same.
      }
      fd = native.unixListen(path, backlog);
    }
    try {
      return FdListener.fromBound(fd, path, statSync(path, { bigint: true }).ino);
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  /**
   * Connects to a listener's path: socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) + connect(2).
   * Retries while the listener's backlog is full (EAGAIN) and, with `waitForListener`, while
   * the path is missing or nobody listens, until `timeoutMs`.
   * @throws KvmError (syscall 'connect'): ENOENT (no such path), ECONNREFUSED (nobody listens),
   * EPROTOTYPE (a socket of another type), EACCES; KvmStateError ERR_KVM_TIMEOUT;
   * TypeError/RangeError for a bad path or option
   */
  static async connect(path: string, opts: ConnectOptions = {}): Promise<FdChannel> {
    checkPath(path);
    const o = options(opts, 'options');
    const deadline = deadlineOf(o.timeoutMs, 'options.timeoutMs');
    const wait = o.waitForListener ?? false;
    if (typeof wait !== 'boolean') {
      throw argTypeError(`The "options.waitForListener" option must be a boolean; received ${describe(wait)}`);
    }
    for (let delay = 2; ; delay = Math.min(delay * 2, 100)) {
      try {
        return new FdChannel(native.unixConnect(path));
      } catch (e) {
        const again = e instanceof KvmError && (e.code === 'EAGAIN' || (wait && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')));
        if (!again) throw e;
        const left = deadline - performance.now();
        if (left <= 0) {
          throw new KvmStateError('ERR_KVM_TIMEOUT', `FdChannel.connect('${path}') timed out: ${(e as Error).message}`, { cause: e });
        }
        await new Promise((r) => setTimeout(r, Math.min(delay, left)));
      }
    }
  }

  /**
   * Adopts an inherited socket fd: checks that it is an AF_UNIX SOCK_SEQPACKET socket that is
   * not listening (getsockopt SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN), sets FD_CLOEXEC (fcntl), and
   * owns it from then on (close() closes it). On failure the fd is left to the caller.
   *
   * Every fd has one owner: an fd that a live object of this library owns (another FdChannel, a
   * received message's fd not taken yet) is refused. With `{ dup: true }` the channel owns a
   * duplicate (fcntl F_DUPFD_CLOEXEC) and the original stays where it was.
   * @throws TypeError (code 'ERR_KVM_NOT_SEQPACKET') for another kind of fd; KvmStateError
   * ERR_KVM_FD_OWNED for an fd a live library object owns (without `dup`); KvmError EBADF for
   * a closed one, (syscall 'fcntl') EMFILE when no fd is left for the duplicate;
   * TypeError/RangeError for a bad number or option
   */
  static fromFd(fd: number, opts: FromFdOptions = {}): FdChannel {
    const n = fdNumber(fd, 'fd');
    const dup = boolOption(options(opts, 'options').dup, 'options.dup');
    // Every argument is taken: no user code runs from here on.
    let t;
    try {
      t = native.socketType(n);
    } catch (e) {
      if (e instanceof KvmError && e.code === 'ENOTSOCK') {
        throw argTypeError(`fd ${n} is not a socket (${fdFacts(n).link}); FdChannel.fromFd needs an AF_UNIX SOCK_SEQPACKET socket`, 'ERR_KVM_NOT_SEQPACKET');
      }
      throw e;
    }
    if (t.domain !== AF_UNIX || t.type !== SOCK_SEQPACKET || t.listening) {
      const what = t.listening ? 'a listening socket' : `a socket of domain ${t.domain}, type ${t.type}`;
      throw argTypeError(`fd ${n} is ${what}; FdChannel.fromFd needs a connected AF_UNIX SOCK_SEQPACKET socket (domain 1, type 5)`, 'ERR_KVM_NOT_SEQPACKET');
    }
    if (dup) {
      const copy = native.dupCloexec(n);
      try {
        return new FdChannel(copy);
      } catch (e) {
        native.close(copy);
        throw e;
      }
    }
    refuseOwned(n, 'fd');
    native.setCloexec(n);
    return new FdChannel(n);
  }

  /**
   * Sends one message: the JSON text of `payload` and the fds of `items`, in that order, in one
   * sendmsg(2) with SCM_RIGHTS (MSG_NOSIGNAL). The items stay open here: the receiver gets new
   * fds for the same open files. Waits (blocking) up to `opts.timeoutMs` for room when the
   * peer's queue is full.
   *
   * `payload` must survive JSON.stringify (a bigint does not: send it as a string or number);
   * `undefined` is sent as null. Every argument is taken (the items, the options, the payload's
   * toJSON) before any item's fd is read, so an item closed meanwhile is refused, never replaced
   * by whatever file took its number.
   * @throws KvmError (syscall 'sendmsg'): EPIPE when the peer is gone, EBADF when an fd in
   * `items` is closed, ETOOMANYREFS when too many fds are in flight; KvmStateError ERR_KVM_TIMEOUT
   * when there was no room in time, ERR_KVM_CLOSED after close() or for a closed item;
   * RangeError for more than MAX_FDS items or a payload over MAX_PAYLOAD bytes; TypeError for an
   * item that is not a library object or fd, or a payload JSON cannot encode
   */
  send(payload: unknown, items: readonly SendItem[] = [], opts: SendOptions = {}): void {
    // Take every argument first (the items, the options, the payload's toJSON), then read the
    // fds: user code run in between could close an item and reuse its number for another file.
    if (!Array.isArray(items)) throw argTypeError(`The "items" argument must be an array; received ${describe(items)}`);
    const count = items.length;
    if (count > MAX_FDS) {
      throw argRangeError(`The "items" argument must hold at most ${MAX_FDS} fds (MAX_FDS); received ${count}`);
    }
    const list: unknown[] = [];
    for (let i = 0; i < count; i++) list.push(items[i]);
    const o = options(opts, 'options');
    const timeout = timeoutArg(o.timeoutMs ?? DEFAULT_SEND_TIMEOUT_MS, 'options.timeoutMs');
    const bytes = encodePayload(payload);
    const fds = list.map((item, i) => {
      const own = ownFd(item, `items[${i}]`); // ERR_KVM_CLOSED for a closed object
      if (own !== undefined) return own;
      if (typeof item === 'number') return fdNumber(item, `items[${i}]`);
      throw argTypeError(`The "items[${i}]" element must be a GuestMemfd, Vm, Vcpu, Kvm, FdChannel or an fd number; received ${describe(item)}`);
    });
    const fd = this.open();
    const sent = native.sendMsg(fd, bytes, fds, timeout);
    if (sent < 0) {
      throw new KvmStateError('ERR_KVM_TIMEOUT', `FdChannel.send timed out after ${timeout} ms: the peer's receive queue stayed full`);
    }
  }

  /**
   * Receives one message: waits until one arrives (on a native thread of this channel's own, not
   * the libuv pool; the event loop goes on), then recvmsg(2) with MSG_CMSG_CLOEXEC, so every fd
   * arrives close-on-exec. Receives are served one at a time, in call order.
   *
   * Nothing leaks on any error path: when a message is refused, every fd it carried has been
   * closed already.
   * @throws (rejects with) KvmStateError ERR_KVM_PEER_CLOSED when the other end is gone (end of
   * file, or ECONNRESET as `cause`), ERR_KVM_TIMEOUT after `timeoutMs`, ERR_KVM_CONTROL_TRUNCATED
   * for a message with more fds than `maxFds` (MSG_CTRUNC), ERR_KVM_PAYLOAD_TRUNCATED for a
   * payload over MAX_PAYLOAD bytes (MSG_TRUNC), ERR_KVM_BAD_MESSAGE for a payload that is not
   * UTF-8 JSON (an empty message from a live peer included), ERR_KVM_CLOSED when this channel is
   * closed (also while waiting); KvmError (syscall 'recvmsg') EMFILE/ENFILE when the fd table
   * filled up while the message's fds were installed (the message is consumed, the fds it
   * brought closed), or (syscall 'recvmsg' or 'poll') for other failures; TypeError/RangeError
   * for bad options
   */
  async receive(opts: ReceiveOptions = {}): Promise<ReceivedMessage> {
    const o = options(opts, 'options');
    const deadline = deadlineOf(o.timeoutMs, 'options.timeoutMs');
    const maxFds = o.maxFds ?? MAX_FDS;
    if (typeof maxFds !== 'number') throw argTypeError(`The "options.maxFds" option must be an integer; received ${describe(maxFds)}`);
    if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > SCM_MAX_FD) {
      throw argRangeError(`The "options.maxFds" option must be an integer in [0, ${SCM_MAX_FD}]; received ${maxFds}`);
    }
    this.open();
    return this.#turns.run(() => this.#receiveOne(deadline, maxFds));
  }

  async #receiveOne(deadline: number, maxFds: number): Promise<ReceivedMessage> {
    let reset: KvmError | undefined;
    for (;;) {
      const fd = this.open();
      let m: NativeMessage | undefined;
      try {
        m = native.recvMsg(fd, MAX_PAYLOAD, maxFds);
      } catch (e) {
        // The kernel reports a peer that closed with messages of ours unread once, before the
        // messages it sent: read those first (a dead VMM's guest_memfds must not be lost).
        if (e instanceof KvmError && e.code === 'ECONNRESET' && reset === undefined) {
          reset = e;
          continue;
        }
        throw e;
      }
      if (m !== undefined && !(reset !== undefined && m.eof)) return toMessage(m, maxFds);
      if (reset !== undefined) {
        throw new KvmStateError('ERR_KVM_PEER_CLOSED', 'FdChannel.receive: the peer closed the connection (ECONNRESET)', { cause: reset });
      }
      const code = await this.#wait(deadline, 'FdChannel.receive');
      if (code === WAIT_CLOSED || this.closed) {
        throw new KvmStateError('ERR_KVM_CLOSED', 'FdChannel was closed while receive() was waiting');
      }
      if (code < 0) throw errnoError(-code, 'poll', `fd ${fd}, POLLIN`);
    }
  }

  /** Waits for the socket to be readable; throws ERR_KVM_TIMEOUT past the deadline. */
  #wait(deadline: number, what: string): Promise<number> {
    this.#watch ??= new native.FdWatch(this.open());
    return waitOn(this.#watch, deadline, what);
  }

  /**
   * Closes the socket (close(2)); a receive() waiting on it rejects with ERR_KVM_CLOSED. The
   * peer sees end of file. Idempotent.
   * @throws KvmError only if close(2) fails
   */
  override close(): void {
    if (this.closed) return;
    const w = this.#watch;
    this.#watch = undefined;
    try {
      w?.close();
    } finally {
      super.close();
    }
  }
}
