/**
 * A host mapping of memory (a guest_memfd range, or anonymous memory) exposed to JavaScript
 * without copying.
 * @module
 */
import { KvmStateError } from './errors.js';
import { native, type NativeMapping } from './native.js';
import { u64 } from './numbers.js';

/** Node 20's largest ArrayBuffer (buffer.constants.MAX_LENGTH): the largest mapping exposed. */
export const MAX_MAPPING_LENGTH = 2 ** 32;

/**
 * A MAP_SHARED (guest_memfd) or MAP_PRIVATE|MAP_ANONYMOUS mapping. `bytes` is a Uint8Array
 * over the mapped memory itself: writes through it are writes to the file, with no copy.
 *
 * close() (or `using`) unmaps the file at once: the range is replaced in place by private
 * anonymous memory, so a view obtained earlier (or an I/O job still writing into it) can no
 * longer reach the file, and cannot fault either. The address range is returned to the system
 * when the garbage collector drops the buffer. A mapping holds its own reference to the file:
 * closing the GuestMemfd does not unmap it, as in the kernel. A mapping dropped without close()
 * is unmapped when collected (a safety net, not the way to release memory).
 *
 * Host access to guest_memfd memory the kernel will not fault in (beyond the file's end, or
 * private to the guest) raises SIGBUS, which would kill the process; so mappings past the end of
 * the file are refused, and `bytes` is refused for guest_memfds without INIT_SHARED.
 */
export class Mapping implements Disposable {
  #buffer: ArrayBuffer | undefined;
  #bytes: Uint8Array | undefined;
  readonly #privateReason: string | undefined;
  /** The host virtual address of the first byte (for memslot userspace_addr). */
  readonly address: bigint;
  /** The mapping's length in bytes. */
  readonly length: number;
  /** The offset in the file where the mapping starts (0 for anonymous memory). */
  readonly offset: bigint;

  /**
   * @internal Use GuestMemfd.map() or Mapping.anonymous().
   * @param privateReason set when every host access to the range would fault (SIGBUS): `bytes`
   * is then refused with that reason instead of handing out a view that kills the process.
   */
  constructor(m: NativeMapping, offset: bigint, privateReason?: string) {
    this.#buffer = m.buffer;
    this.#privateReason = privateReason;
    this.address = m.address;
    this.length = m.buffer.byteLength;
    this.offset = offset;
  }

  /**
   * Maps `length` bytes of fresh anonymous memory (mmap MAP_PRIVATE|MAP_ANONYMOUS), e.g. for a
   * legacy memslot.
   * @throws RangeError if length is 0 or larger than {@link MAX_MAPPING_LENGTH}
   * @throws KvmError (syscall 'mmap') if the kernel refuses, e.g. ENOMEM
   */
  static anonymous(length: number | bigint): Mapping {
    const len = checkLength(length);
    return new Mapping(native.mapAnonymous(len), 0n);
  }

  /**
   * The mapped memory as bytes, without copying.
   * @throws KvmStateError ERR_KVM_CLOSED after close(); ERR_KVM_PRIVATE_MEMORY for a guest_memfd
   * created without GuestMemfdFlag.INIT_SHARED, whose pages the kernel refuses to the host
   */
  get bytes(): Uint8Array {
    const buffer = this.#buffer;
    if (buffer === undefined) throw new KvmStateError('ERR_KVM_CLOSED', 'Mapping is closed (unmapped)');
    if (this.#privateReason !== undefined) throw new KvmStateError('ERR_KVM_PRIVATE_MEMORY', this.#privateReason);
    return (this.#bytes ??= new Uint8Array(buffer));
  }

  /**
   * Which pages of the range are resident (mincore(2)): one byte per page, 1 where resident.
   * For a guest_memfd mapping, 1 means the file holds the page up to date: faulted in by a host
   * or guest access. Pages only reserved by allocate() and not yet touched count as 0; punched
   * pages are 0 until touched again.
   * @throws KvmError (syscall 'mincore'); KvmStateError ERR_KVM_CLOSED after close()
   */
  residency(): Uint8Array {
    const buffer = this.#buffer;
    if (buffer === undefined) throw new KvmStateError('ERR_KVM_CLOSED', 'Mapping is closed (unmapped)');
    return native.mincore(buffer);
  }

  /** The number of resident pages in the range (see residency()). */
  residentPages(): number {
    let n = 0;
    for (const r of this.residency()) n += r;
    return n;
  }

  /** Whether close() has been called. */
  get closed(): boolean {
    return this.#buffer === undefined;
  }

  /**
   * Unmaps the file from the range (see the class comment) and refuses `bytes` from then on.
   * Idempotent. A memslot that still points at the range now sees anonymous memory, not the file.
   * @throws KvmError (syscall 'mmap') if the kernel refuses to replace the range
   */
  close(): void {
    const buffer = this.#buffer;
    if (buffer === undefined) return;
    this.#buffer = undefined;
    this.#bytes = undefined;
    native.unmap(buffer);
  }

  /** Unmaps like close(), but never throws (for `using`). */
  [Symbol.dispose](): void {
    try {
      this.close();
    } catch {
      // dispose must not throw.
    }
  }
}

/** Checks a mapping length: > 0 and small enough for an ArrayBuffer. */
export function checkLength(length: unknown, name = 'length'): bigint {
  const len = u64(length, name);
  if (len === 0n || len > BigInt(MAX_MAPPING_LENGTH)) {
    throw new RangeError(
      `The "${name}" argument must be > 0 and <= 4 GiB (Node's largest ArrayBuffer); received ${len}`,
    );
  }
  return len;
}
