/**
 * A host mapping of memory (a guest_memfd range, or anonymous memory) exposed to JavaScript
 * without copying.
 * @module
 */
import { readFileSync } from 'node:fs';
import { types } from 'node:util';
import { GuestMemoryFaultError, KvmStateError, argTypeError, argRangeError, explain } from '../core/errors.js';
import { native, type NativeFault, type NativeMapping } from '../core/native.js';
import { checkU64, describe, options, u32, u64 } from '../core/numbers.js';

/** Node 20's largest ArrayBuffer (buffer.constants.MAX_LENGTH): the largest mapping exposed. */
export const MAX_MAPPING_LENGTH: number = native.limits.maxMappingLength;

/** A NUMA memory policy as get_mempolicy(2) reports it (see {@link Mapping.memPolicy}). */
export interface MemoryPolicy {
  /** The MemPolicy mode, with any MPOL_F_* mode flags set on it (bits 13-15). */
  mode: number;
  /** The nodes of the policy, bit n for node n (0n for DEFAULT and LOCAL). */
  nodemask: bigint;
}

/** Where and how `Mapping.mbind()` applies a policy. */
export interface MbindOptions {
  /** Start of the range within the mapping (page-aligned; default 0). */
  offset?: number | bigint;
  /** Length of the range (default: the rest of the mapping). */
  length?: number | bigint;
  /** The number of nodemask bits the kernel reads, plus one (historical); default 64, at most 1025. */
  maxnode?: number;
  /** MPOL_MF_* flags (STRICT 1, MOVE 2, MOVE_ALL 4); default 0. */
  flags?: number;
}

// Every mapping this library made whose address range is still reserved, by start address. The
// range stays reserved (mapped, or a placeholder after close()) until the mapping's ArrayBuffer
// is collected, so entries hold the buffer weakly and go when it does: a memslot that points
// into a range holds the buffer (see rangeHolders()), however its address was given.
interface RangeEntry {
  readonly address: bigint;
  readonly end: bigint;
  readonly buffer: WeakRef<ArrayBuffer>;
}

const ranges = new Map<bigint, RangeEntry>();

/**
 * The most address ranges the library keeps reserved at once: half the kernel's per-process
 * limit (vm.max_map_count, 65530 by default). Past the limit mmap fails with ENOMEM everywhere in
 * the process, and V8 aborts when its own next mmap does; the other half stays for V8 and the rest.
 */
export const MAX_LIVE_MAPPINGS = Math.floor(readMaxMapCount() / 2);

function readMaxMapCount(): number {
  try {
    const v = Number(readFileSync('/proc/sys/vm/max_map_count', 'utf8').trim());
    return Number.isSafeInteger(v) && v > 0 ? v : 65530;
  } catch {
    return 65530;
  }
}

/**
 * Refuses a new mapping when the library already keeps {@link MAX_LIVE_MAPPINGS} ranges (closed
 * mappings count until their buffers are collected).
 * @throws KvmStateError ERR_KVM_MAPPING_LIMIT
 * @internal
 */
export function checkMappingRoom(): void {
  if (ranges.size < MAX_LIVE_MAPPINGS) return;
  throw new KvmStateError(
    'ERR_KVM_MAPPING_LIMIT',
    `kvm-gmem keeps ${ranges.size} mappings, its limit (half of vm.max_map_count): close mappings and drop ` +
      'references to them (a closed mapping keeps its address range until collected), or raise vm.max_map_count',
  );
}
const rangeGone = new FinalizationRegistry<RangeEntry>((e) => {
  // A new mapping may have been made at the same address since the buffer was collected.
  if (ranges.get(e.address) === e) ranges.delete(e.address);
});

/**
 * The ArrayBuffers of every library mapping whose address range overlaps [address, address +
 * size): while they live, those ranges stay reserved and cannot be reused by other memory. A
 * memslot keeps them for as long as the kernel may point into the range.
 * @internal
 */
export function rangeHolders(address: bigint, size: bigint): ArrayBuffer[] {
  const end = address + size;
  const out: ArrayBuffer[] = [];
  for (const e of ranges.values()) {
    if (e.address >= end || e.end <= address) continue;
    const b = e.buffer.deref();
    if (b !== undefined) out.push(b);
  }
  return out;
}

/**
 * A mapping's address and length, read from its private fields (no getter or own property that
 * user code may have put on the object runs), or undefined if `value` is not a Mapping.
 * @throws KvmStateError ERR_KVM_CLOSED (naming `name`) if the mapping is closed
 * @internal
 */
export function mappingRange(value: unknown, name: string): { address: bigint; length: number } | undefined {
  return readRange(value, name);
}

let readRange: (value: unknown, name: string) => { address: bigint; length: number } | undefined;

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
 * the file are refused unless asked for (`map(..., { beyondEnd: true })`), and `bytes` is
 * refused for them and for guest_memfds without INIT_SHARED. The guarded accessors (read,
 * readInto, write, fill) work on any mapping: they copy through native code that catches the
 * SIGBUS and throw a {@link GuestMemoryFaultError} instead.
 */
export class Mapping implements Disposable {
  #buffer: ArrayBuffer | undefined;
  #bytes: Uint8Array | undefined;
  readonly #privateReason: string | undefined;
  readonly #pastEofReason: string | undefined;
  readonly #address: bigint;
  readonly #size: number;
  /** The host virtual address of the first byte (for memslot userspace_addr). */
  readonly address: bigint;
  /** The mapping's length in bytes. */
  readonly length: number;
  /** The offset in the file where the mapping starts (0 for anonymous memory). */
  readonly offset: bigint;

  /**
   * @param privateReason set when every host access to the range would fault (SIGBUS): `bytes`
   * is then refused with that reason instead of handing out a view that kills the process.
   * @param pastEofReason set when the range extends past the end of the file: `bytes` is then
   * refused (ERR_KVM_PAST_EOF) with that reason.
   */
  private constructor(m: NativeMapping, offset: bigint, privateReason?: string, pastEofReason?: string) {
    this.#buffer = m.buffer;
    this.#privateReason = privateReason;
    this.#pastEofReason = pastEofReason;
    this.address = this.#address = m.address;
    this.length = this.#size = m.buffer.byteLength;
    this.offset = offset;
    const entry: RangeEntry = { address: m.address, end: m.address + BigInt(this.#size), buffer: new WeakRef(m.buffer) };
    ranges.set(m.address, entry);
    rangeGone.register(m.buffer, entry);
  }

  /** @internal The Mapping of a shared mapping of a file (`GuestMemfd.map()`); parameters as the constructor's. */
  static fromNative(m: NativeMapping, offset: bigint, privateReason?: string, pastEofReason?: string): Mapping {
    return new Mapping(m, offset, privateReason, pastEofReason);
  }

  static {
    readRange = (value, name) => {
      if (typeof value !== 'object' || value === null || !(#address in value)) return undefined;
      if (value.#buffer === undefined) throw new KvmStateError('ERR_KVM_CLOSED', `The "${name}" Mapping is closed`);
      return { address: value.#address, length: value.#size };
    };
  }

  /**
   * Maps `length` bytes of fresh anonymous memory (mmap MAP_PRIVATE|MAP_ANONYMOUS), e.g. for a
   * legacy memslot.
   * @throws RangeError if length is 0 or larger than {@link MAX_MAPPING_LENGTH}
   * @throws KvmError (syscall 'mmap') if the kernel refuses, e.g. ENOMEM
   */
  static anonymous(length: number | bigint): Mapping {
    const len = checkLength(length);
    checkMappingRoom();
    return new Mapping(native.mapAnonymous(len), 0n);
  }

  /**
   * The mapped memory as bytes, without copying.
   * @throws KvmStateError ERR_KVM_CLOSED after close(); ERR_KVM_PRIVATE_MEMORY for a guest_memfd
   * created without GuestMemfdFlag.INIT_SHARED, whose pages the kernel refuses to the host;
   * ERR_KVM_PAST_EOF for a mapping that extends past the end of its file. Use the guarded
   * accessors (read, write, fill) for those.
   */
  get bytes(): Uint8Array {
    const buffer = this.#live();
    if (this.#privateReason !== undefined) throw new KvmStateError('ERR_KVM_PRIVATE_MEMORY', this.#privateReason);
    if (this.#pastEofReason !== undefined) throw new KvmStateError('ERR_KVM_PAST_EOF', this.#pastEofReason);
    return (this.#bytes ??= new Uint8Array(buffer));
  }

  /**
   * Copies `length` bytes at `offset` of the mapping into a new Uint8Array, SIGBUS-guarded:
   * works on any mapping, including private guest_memfd memory and ranges past the end of the
   * file, where `bytes` is refused. Forward, 8 bytes at a time.
   * @throws GuestMemoryFaultError when the kernel will not fault a page in for the host (SIGBUS;
   * e.g. BUS_ADRERR past the end of the file or for private memory): `offset`/`fileOffset` name
   * the faulting byte, `bytesDone` how many were copied before it
   * @throws RangeError if the range is outside the mapping; TypeError for a bad number;
   * KvmStateError ERR_KVM_CLOSED after close()
   */
  read(offset: number | bigint, length: number | bigint): Uint8Array {
    const buffer = this.#live();
    const o = this.#offset(offset);
    const l = this.#length(length, o);
    const out = new Uint8Array(l);
    this.#check('read', o, l, native.guardedRead(buffer, o, out));
    return out;
  }

  /**
   * Copies `target.length` bytes at `offset` of the mapping into `target`, SIGBUS-guarded (see
   * {@link Mapping.read}). On a fault, `target` holds the `bytesDone` bytes copied before it.
   * `target` may be a view of this mapping's own `bytes`: overlapping ranges copy like memmove.
   * @throws GuestMemoryFaultError on SIGBUS; RangeError if the range is outside the mapping;
   * TypeError if target is not a Uint8Array (or is detached); ERR_KVM_CLOSED after close()
   */
  readInto(offset: number | bigint, target: Uint8Array): void {
    const buffer = this.#live();
    const o = this.#offset(offset);
    checkBytes(target, 'target');
    this.#length(target.length, o, 'target.length');
    this.#check('read', o, target.length, native.guardedRead(buffer, o, target));
  }

  /**
   * Copies `data` into the mapping at `offset`, SIGBUS-guarded (see {@link Mapping.read}). On a
   * fault, the `bytesDone` bytes before the faulting one were written, none after it. `data` may
   * be a view of this mapping's own `bytes`: overlapping ranges copy like memmove.
   * @throws GuestMemoryFaultError on SIGBUS; RangeError if the range is outside the mapping;
   * TypeError if data is not a Uint8Array (or is detached); ERR_KVM_CLOSED after close()
   */
  write(offset: number | bigint, data: Uint8Array): void {
    const buffer = this.#live();
    const o = this.#offset(offset);
    checkBytes(data, 'data');
    this.#length(data.length, o, 'data.length');
    this.#check('write', o, data.length, native.guardedWrite(buffer, o, data));
  }

  /**
   * Sets `length` bytes at `offset` (default: the whole mapping) to `value`, SIGBUS-guarded (see
   * {@link Mapping.read}). Unlike TypedArray.fill, `value` must be a byte: an integer in
   * [0, 255].
   * @throws GuestMemoryFaultError on SIGBUS (the bytes before the faulting one are set);
   * RangeError for a value that is not a byte or a range outside the mapping; TypeError for a bad
   * number; ERR_KVM_CLOSED after close()
   */
  fill(value: number, offset: number | bigint = 0, length?: number | bigint): void {
    const buffer = this.#live();
    if (typeof value !== 'number') throw argTypeError(`The "value" argument must be a number; received ${describe(value)}`);
    if (!Number.isInteger(value) || value < 0 || value > 255) {
      throw argRangeError(`The "value" argument must be an integer in [0, 255]; received ${value}`);
    }
    const o = this.#offset(offset);
    const l = length === undefined ? this.length - o : this.#length(length, o);
    this.#check('fill', o, l, native.guardedFill(buffer, o, l, value));
  }

  /**
   * madvise(2) on [offset, offset + length) of the mapping (default: all of it). `advice` is a
   * {@link Madvise} value; the kernel decides what it means for this mapping.
   * @throws KvmError (syscall 'madvise'): EINVAL for an unaligned offset or an advice this
   * mapping does not support (e.g. COLLAPSE on guest_memfd), EFAULT from POPULATE_* where the
   * kernel will not fault the memory in, ENOMEM outside mapped memory; RangeError for a range
   * outside the mapping, or for an advice other than MADV_* 0-4, 8-25 and 103 (GUARD_REMOVE):
   * MADV_HWPOISON, MADV_SOFT_OFFLINE and MADV_GUARD_INSTALL damage the memory or make any
   * access fatal, and values this library does not know are refused as well; ERR_KVM_CLOSED
   * after close()
   */
  advise(advice: number, offset: number | bigint = 0, length?: number | bigint): void {
    const buffer = this.#live();
    const a = int32(advice, 'advice');
    const o = this.#offset(offset);
    const l = length === undefined ? this.length - o : this.#length(length, o);
    try {
      native.madvise(buffer, o, l, a);
    } catch (e) {
      throw explain(e, { call: 'madvise', offset: o, length: l });
    }
  }

  /**
   * Sets the NUMA memory policy of a range of the mapping: mbind(2). `mode` is a
   * {@link MemPolicy} value (optionally with MPOL_F_* mode flags), `nodemask` has bit n set for
   * node n. For a guest_memfd the policy belongs to the file and governs where its pages are
   * allocated (Linux 6.18).
   * @throws KvmError (syscall 'mbind'): EINVAL for an unknown mode, an empty or invalid nodemask
   * for the mode, or an unaligned offset; EIO with MPOL_MF_STRICT when pages are misplaced;
   * RangeError/TypeError for bad arguments; ERR_KVM_CLOSED after close()
   */
  mbind(mode: number, nodemask: number | bigint, opts: MbindOptions = {}): void {
    const buffer = this.#live();
    const o0 = options(opts, 'options');
    const m = u32(mode, 'mode');
    const mask = BigInt(checkU64Wide(nodemask, 'nodemask'));
    const o = this.#offset(o0.offset ?? 0);
    const l = o0.length === undefined ? this.length - o : this.#length(o0.length, o);
    const maxnode = u32(o0.maxnode ?? 64, 'maxnode');
    if (maxnode > native.limits.maxMaxnode) throw argRangeError(`The "maxnode" option must be at most ${native.limits.maxMaxnode}; received ${maxnode}`);
    const flags = u32(o0.flags ?? 0, 'flags');
    native.mbind(buffer, o, l, m, mask, maxnode, flags);
  }

  /**
   * The NUMA memory policy that applies to the page at `offset` (default 0): get_mempolicy(2)
   * with MPOL_F_ADDR.
   * @throws KvmError (syscall 'get_mempolicy'), e.g. EFAULT; RangeError for an offset outside
   * the mapping; ERR_KVM_CLOSED after close()
   */
  memPolicy(offset: number | bigint = 0): MemoryPolicy {
    const buffer = this.#live();
    const o = this.#offset(offset);
    if (o >= this.length) throw argRangeError(`The "offset" argument must be < ${this.length}; received ${o}`);
    return native.getMempolicy(buffer, o);
  }

  /**
   * Which NUMA node holds the page at each offset: move_pages(2) with no target nodes, which
   * moves nothing and reports. Each entry is a node id, or a negative errno: -ENOENT (-2) for a
   * page not present (never touched, punched, or private guest_memfd memory), -EFAULT (-14)...
   * @throws KvmError (syscall 'move_pages'); RangeError for an offset outside the mapping;
   * TypeError if offsets is not an array of numbers/bigints; ERR_KVM_CLOSED after close()
   */
  pageNodes(offsets: readonly (number | bigint)[]): number[] {
    const buffer = this.#live();
    if (!Array.isArray(offsets)) throw argTypeError(`The "offsets" argument must be an array; received ${describe(offsets)}`);
    const checked = offsets.map((v, i) => {
      const o = this.#offset(v, `offsets[${i}]`);
      if (o >= this.length) throw argRangeError(`The "offsets[${i}]" argument must be < ${this.length}; received ${o}`);
      return o;
    });
    return native.pageNodes(buffer, checked);
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

  /** The buffer of an open mapping. */
  #live(): ArrayBuffer {
    const buffer = this.#buffer;
    if (buffer === undefined) throw new KvmStateError('ERR_KVM_CLOSED', 'Mapping is closed (unmapped)');
    return buffer;
  }

  /** An offset within the mapping (<= length), as a number. */
  #offset(value: unknown, name = 'offset'): number {
    const v = checkU64(value, name);
    if (v > this.length) throw argRangeError(`The "${name}" argument must be <= ${this.length} (the mapping's length); received ${v}`);
    return Number(v);
  }

  /** A length that fits in the mapping after offset `o`, as a number. */
  #length(value: unknown, o: number, name = 'length'): number {
    const v = checkU64(value, name);
    if (v > this.length - o) {
      throw argRangeError(`The range [${o}, ${BigInt(o) + BigInt(v)}) extends past the mapping (length ${this.length})`);
    }
    return Number(v);
  }

  /**
   * Turns a guarded access's fault report into a GuestMemoryFaultError. A fault outside the
   * requested range of the mapping was in the caller's target/data buffer.
   */
  #check(operation: string, offset: number, length: number, fault: NativeFault | undefined): void {
    if (fault === undefined) return;
    const start = this.address + BigInt(offset);
    const inMapping = fault.address >= start && fault.address < start + BigInt(length);
    throw new GuestMemoryFaultError({
      operation, requestOffset: offset, requestLength: length, mappingOffset: this.offset,
      bytesDone: fault.bytesDone, address: fault.address, sigCode: fault.sigCode,
      side: inMapping ? 'mapping' : 'buffer',
    });
  }
}

/** Checks a byte-array argument of the guarded accessors (any realm's Uint8Array, Buffer included). */
function checkBytes(value: unknown, name: string): asserts value is Uint8Array {
  if (!types.isUint8Array(value)) throw argTypeError(`The "${name}" argument must be a Uint8Array; received ${describe(value)}`);
}

/** Checks a signed 32-bit integer argument (madvise advice). */
function int32(value: unknown, name: string): number {
  if (typeof value !== 'number') throw argTypeError(`The "${name}" argument must be an integer; received ${describe(value)}`);
  if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
    throw argRangeError(`The "${name}" argument must be a 32-bit integer; received ${value}`);
  }
  return value;
}

/** A nodemask: a non-negative safe integer, or a bigint of at most 1024 bits. */
function checkU64Wide(value: unknown, name: string): number | bigint {
  if (typeof value === 'bigint') {
    if (value < 0n || value >= 1n << 1024n) throw argRangeError(`The "${name}" argument must be in [0, 2^1024); received ${value}n`);
    return value;
  }
  return checkU64(value, name);
}

/** Checks a mapping length: > 0 and small enough for an ArrayBuffer. */
export function checkLength(length: unknown, name = 'length'): bigint {
  const len = u64(length, name);
  if (len === 0n || len > BigInt(MAX_MAPPING_LENGTH)) {
    throw argRangeError(
      `The "${name}" argument must be > 0 and <= 4 GiB (Node's largest ArrayBuffer); received ${len}`,
    );
  }
  return len;
}
