/**
 * FdListener: the listening end of an FdChannel path, for a successor process that connects
 * to its predecessor by name.
 * @module
 */
import { KvmStateError, errnoError } from '../core/errors.js';
import { type NativeFdWatch, native } from '../core/native.js';
import { options } from '../core/numbers.js';
import { FdResource, identityOf } from '../core/resource.js';
import { FdChannel } from './channel.js';
import { Turns, WAIT_CLOSED, deadlineOf, waitOn } from './socket.js';
import { statSync, unlinkSync } from 'node:fs';

/** Options of `FdChannel.listen()`. */
export interface ListenOptions {
  /** listen(2)'s backlog: connections queued before accept(). Default 16. */
  backlog?: number;
}

/** Options of `FdListener.accept()`. */
export interface AcceptOptions {
  /** Give up after this many milliseconds (KvmStateError ERR_KVM_TIMEOUT). Default: no limit. */
  timeoutMs?: number;
}

/**
 * A listening AF_UNIX SOCK_SEQPACKET socket bound to a path (`FdChannel.listen()`); each
 * `accept()` gives the FdChannel of one connection. close() also removes the socket file.
 */
export class FdListener extends FdResource {
  /** The socket path. */
  readonly path: string;
  readonly #ino: bigint;
  #watch: NativeFdWatch | undefined;
  readonly #turns = new Turns();

  private constructor(fd: number, path: string, ino: bigint) {
    super(fd, 'FdListener', identityOf(fd));
    this.path = path;
    this.#ino = ino;
  }

  /** @internal The listener of a socket just bound to `path` (`FdChannel.listen()`). */
  static fromBound(fd: number, path: string, ino: bigint): FdListener {
    return new FdListener(fd, path, ino);
  }

  /**
   * Accepts the next connection: waits (on a native thread, not the event loop) until one is
   * queued, then accept4(2) with SOCK_CLOEXEC. Accepts are served one at a time, in call order.
   * @throws (rejects with) KvmStateError ERR_KVM_TIMEOUT after `timeoutMs`, ERR_KVM_CLOSED when
   * the listener is closed (also while waiting); KvmError (syscall 'accept4'): EMFILE, ENFILE
   */
  async accept(opts: AcceptOptions = {}): Promise<FdChannel> {
    const o = options(opts, 'options');
    const deadline = deadlineOf(o.timeoutMs, 'options.timeoutMs');
    this.open();
    return this.#turns.run(async () => {
      for (;;) {
        const fd = this.open();
        const c = native.unixAccept(fd);
        if (c >= 0) {
          try {
            return FdChannel.fromAccepted(c);
          } catch (e) {
            native.close(c);
            throw e;
          }
        }
        this.#watch ??= new native.FdWatch(fd);
        const code = await waitOn(this.#watch, deadline, `FdListener.accept on '${this.path}'`);
        if (code === WAIT_CLOSED || this.closed) {
          throw new KvmStateError('ERR_KVM_CLOSED', 'FdListener was closed while accept() was waiting');
        }
        if (code < 0) throw errnoError(-code, 'poll', `fd ${fd}, POLLIN`);
      }
    });
  }

  /**
   * Stops listening: removes the socket file (unlink(2), only if the path still names the file
   * this listener bound) and closes the socket (close(2)). An accept() waiting rejects with
   * ERR_KVM_CLOSED. Idempotent.
   * @throws KvmError only if close(2) fails
   */
  override close(): void {
    if (this.closed) return;
    const w = this.#watch;
    this.#watch = undefined;
    try {
      w?.close();
      try {
        if (statSync(this.path, { bigint: true }).ino === this.#ino) unlinkSync(this.path);
      } catch {
        // Already gone.
      }
    } finally {
      super.close();
    }
  }
}
