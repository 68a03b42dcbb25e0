/**
 * GuestMemfd: a guest_memfd file (KVM_CREATE_GUEST_MEMFD), guest memory that the host
 * allocates, punches and (with GuestMemfdFlag.MMAP) maps.
 * @module
 */
import { FallocMode, GuestMemfdFlag, PAGE_SIZE } from '../core/constants.js';
import { argTypeError, argRangeError, explain } from '../core/errors.js';
import type { ReceivedFd } from '../ipc/message.js';
import type { FdFacts } from '../core/fd-identity.js';
import { dupOption, fdArgument, takeOver } from './adopt.js';
import { Mapping, checkLength, checkMappingRoom } from '../memory/mapping.js';
import { MapSharedFlag, native, type NativeStat } from '../core/native.js';
import { checkU64, describe, off, options, u64 } from '../core/numbers.js';
import { FdResource, identityOf } from '../core/resource.js';

/** What `GuestMemfd.stat()` reports (fstat(2)). */
export type GuestMemfdStat = NativeStat;

/** Options of `GuestMemfd.map()`. */
export interface MapOptions {
  /**
   * Allow a range that extends past the end of the file (refused by default). The kernel maps
   * it, but a host access there raises SIGBUS: such a Mapping refuses `bytes`
   * (KvmStateError ERR_KVM_PAST_EOF), and its guarded accessors (read, write, fill) throw a
   * GuestMemoryFaultError where the file ends. For tests of exactly that behaviour.
   */
  beyondEnd?: boolean;
  /**
   * Place the mapping at an address that is a multiple of this: a power of two from the page
   * size to 1 GiB, e.g. the PMD size (2 MiB) so that the range can hold transparent huge pages.
   */
  align?: number | bigint;
}

/** What `GuestMemfd.adopt()` is told about the file: what its creator gave KVM_CREATE_GUEST_MEMFD. */
export interface AdoptOptions {
  /** The size in bytes; must equal the file's size (fstat). */
  size: number | bigint;
  /**
   * The GuestMemfdFlag bits it was created with. The kernel does not report them, so adopt()
   * checks them: the MMAP bit with an mmap probe (mapped and unmapped at once, nothing
   * touched), and for a mappable file the INIT_SHARED bit, which decides whether `Mapping.bytes`
   * is allowed, with a SIGBUS-guarded one-byte read of its first page (the kernel faults in
   * shared memory, allocating that page if it was a hole, and refuses private memory).
   */
  flags: number | bigint;
  /**
   * Own a duplicate of the fd (fcntl F_DUPFD_CLOEXEC) instead of the fd itself: the caller, the
   * received message or the library object that owns it keeps the original. Default false:
   * adopt() takes the fd over, and refuses one that a live library object owns.
   */
  dup?: boolean;
}

/** mmap(2) constants for the MMAP probe. */
const PROT_READ_WRITE = 3;
const MAP_SHARED = 1;
const ENODEV = 19;

/** The largest `align` map() accepts. */
const MAX_ALIGN = BigInt(native.limits.maxMapAlign);

/**
 * A guest_memfd. Created by `vm.createGuestMemfd()`; bound into a VM with
 * `vm.setUserMemoryRegion2({ guestMemfd })`.
 *
 * Lifetime follows the kernel: the file keeps its VM alive, so closing the Vm first leaves this
 * object fully usable. The fd is FD_CLOEXEC (the kernel creates it without), so spawned children
 * never inherit guest memory.
 */
export class GuestMemfd extends FdResource {
  /** The size given at creation, in bytes. */
  readonly size: bigint;
  /** The GuestMemfdFlag bits given at creation. */
  readonly flags: bigint;

  private constructor(fd: number, size: bigint, flags: bigint) {
    super(fd, 'GuestMemfd', identityOf(fd));
    this.size = size;
    this.flags = flags;
  }

  /** @internal The GuestMemfd of a fd KVM_CREATE_GUEST_MEMFD just made (`vm.createGuestMemfd()`). */
  static fromCreated(fd: number, size: bigint, flags: bigint): GuestMemfd {
    return new GuestMemfd(fd, size, flags);
  }

  /**
   * Adopts a guest_memfd fd that came from elsewhere: another process (through an FdChannel),
   * a parent, a C program. The result maps, allocates and punches like one created by
   * `vm.createGuestMemfd()`, and owns the fd: close() closes it.
   *
   * Takes every argument first (the options' getters run before the fd is looked at). Checks
   * before taking the fd: fstat(2) works (the fd is open), `fdKind()` says guest_memfd (its
   * filesystem's magic number, and on kernels before 7.2 its anon-inode name), st_size equals
   * `opts.size`, an mmap probe (MAP_SHARED, one page, unmapped at once) agrees with the MMAP bit
   * of `opts.flags`, no live object of this library owns the fd (unless `opts.dup`), and for a
   * mappable file a guarded one-byte read agrees with the INIT_SHARED bit (see
   * {@link AdoptOptions.flags}). Then it sets FD_CLOEXEC (fcntl), or with `opts.dup` owns a
   * close-on-exec duplicate. `fd` may be a {@link ReceivedFd}: it is taken from its message only
   * once every check passed (with `dup`, never). On any failure the fd stays the caller's (or
   * the message's).
   *
   * Binding the adopted file to a VM of this process fails (EINVAL): a guest_memfd belongs to
   * the VM it was created for, for life.
   * @throws TypeError (code 'ERR_KVM_NOT_GUEST_MEMFD') for an fd that is not a guest_memfd;
   * RangeError (code 'ERR_KVM_SIZE_MISMATCH') when the size differs, (code
   * 'ERR_KVM_FLAGS_MISMATCH') when the MMAP or INIT_SHARED bit is wrong; KvmStateError
   * ERR_KVM_FD_OWNED for an fd number that a live library object owns (a GuestMemfd, an
   * FdChannel, a received message's fd not taken), ERR_KVM_CLOSED for a ReceivedFd already
   * taken or closed; KvmError (syscall 'fstat') EBADF for a closed fd, (syscall 'fcntl') EMFILE
   * when no fd is left for the duplicate, (syscall 'mmap') when the INIT_SHARED check cannot map
   * a page; TypeError/RangeError for bad numbers or options, or an `fd` object that is not a
   * ReceivedFd of this library
   */
  static adopt(fd: number | ReceivedFd, opts: AdoptOptions): GuestMemfd {
    // Take every argument before looking at the fd: a getter could close or reuse it.
    const arg = fdArgument(fd);
    const o = options(opts, 'options');
    const size = u64(o.size, 'options.size');
    const flags = u64(o.flags, 'options.flags');
    const dup = dupOption(o.dup);
    // No user code runs from here on.
    let mappable: boolean | undefined;
    const before = (n: number, _facts: FdFacts, st: NativeStat): void => {
      if (st.size !== size) {
        throw argRangeError(`guest_memfd fd ${n} has ${st.size} bytes (fstat), not the ${size} claimed`, 'ERR_KVM_SIZE_MISMATCH');
      }
      if (size === 0n) return;
      const probe = native.mmapProbe(n, 0, PAGE_SIZE, PROT_READ_WRITE, MAP_SHARED);
      mappable = probe === 0 ? true : probe === ENODEV ? false : undefined;
      const claimed = (flags & GuestMemfdFlag.MMAP) !== 0n;
      if (mappable !== undefined && mappable !== claimed) {
        throw argRangeError(
          `guest_memfd fd ${n} ${mappable ? 'can' : 'cannot'} be mapped, but the flags claimed (0x${flags.toString(16)}) say ` +
            `it was created ${claimed ? 'with' : 'without'} GuestMemfdFlag.MMAP`,
          'ERR_KVM_FLAGS_MISMATCH',
        );
      }
    };
    // INIT_SHARED decides whether `bytes` is handed out: a false claim would let the first host
    // access kill the process with SIGBUS, so ask the kernel with a guarded read.
    const after = (n: number): void => {
      if (mappable !== true) return;
      const claimed = (flags & GuestMemfdFlag.INIT_SHARED) !== 0n;
      const shared = hostCanRead(n);
      if (shared !== claimed) {
        throw argRangeError(
          `guest_memfd fd ${n} holds ${shared ? 'shared' : 'private'} memory (a guarded read of its first page ` +
            `${shared ? 'worked' : 'faulted'}), but the flags claimed (0x${flags.toString(16)}) say it was created ` +
            `${claimed ? 'with' : 'without'} GuestMemfdFlag.INIT_SHARED`,
          'ERR_KVM_FLAGS_MISMATCH',
        );
      }
    };
    return takeOver(arg, dup, 'guest_memfd', { before, after }, (n) => new GuestMemfd(n, size, flags));
  }

  /**
   * fstat(2) on the file: size, block size, blocks allocated, inode.
   * @throws KvmError (syscall 'fstat'); KvmStateError ERR_KVM_CLOSED after close()
   */
  stat(): GuestMemfdStat {
    return native.fstat(this.open());
  }

  /**
   * Allocates backing memory for [offset, offset + length): fallocate(FALLOC_FL_KEEP_SIZE).
   * Offset and length must be page-aligned and within the file.
   * @throws KvmError (syscall 'fallocate'): EINVAL when unaligned or outside the file, ENOMEM,
   * ENOSPC; TypeError/RangeError for a bad number; ERR_KVM_CLOSED after close()
   */
  allocate(offset: number | bigint, length: number | bigint): void {
    const o = off(offset, 'offset');
    const l = off(length, 'length');
    this.#fallocate(FallocMode.KEEP_SIZE, o, l, false);
  }

  /**
   * Frees [offset, offset + length): fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
   * The range reads as zeros afterwards, from the host mapping and from the guest.
   * @throws KvmError (syscall 'fallocate'): EINVAL when unaligned; TypeError/RangeError for a
   * bad number; ERR_KVM_CLOSED after close()
   */
  punchHole(offset: number | bigint, length: number | bigint): void {
    const o = off(offset, 'offset');
    const l = off(length, 'length');
    this.#fallocate(FallocMode.KEEP_SIZE | FallocMode.PUNCH_HOLE, o, l, true);
  }

  #fallocate(mode: number, offset: bigint, length: bigint, punch: boolean): void {
    const fd = this.open();
    try {
      native.fallocate(fd, mode, offset, length);
    } catch (e) {
      throw explain(e, { call: 'fallocate', punch, offset, length, size: this.size });
    }
  }

  /**
   * Maps [offset, offset + length) of the file into the host (mmap PROT_READ|PROT_WRITE,
   * MAP_SHARED). Needs GuestMemfdFlag.MMAP. `length` defaults to the rest of the file.
   * The mapping outlives close() of this object; close the Mapping to unmap.
   *
   * A guest_memfd created without GuestMemfdFlag.INIT_SHARED can be mapped (for its address),
   * but its memory is private to the guest: the host's first touch would raise SIGBUS, so the
   * Mapping's `bytes` is refused (KvmStateError ERR_KVM_PRIVATE_MEMORY); its guarded accessors
   * (read, write, fill) throw GuestMemoryFaultError instead.
   *
   * With `options.align`, the address is a multiple of it (a PROT_NONE reservation of
   * length + align is made, the file mapped inside it with MAP_FIXED, the slack unmapped).
   * @throws KvmError (syscall 'mmap'): ENODEV without GuestMemfdFlag.MMAP (its `hint` says so),
   * EINVAL when unaligned, ENOMEM; RangeError for a length of 0, over 4 GiB, past the end of the file
   * (unless `beyondEnd`; a host access there would raise SIGBUS), or a bad `align`;
   * TypeError for bad options; ERR_KVM_CLOSED after close()
   */
  map(offset: number | bigint = 0, length?: number | bigint, opts: MapOptions = {}): Mapping {
    const o = off(offset, 'offset');
    const l = checkLength(length ?? (this.size > o ? this.size - o : 0n));
    const { beyondEnd, align } = checkMapOptions(opts);
    if (o + l > this.size && !beyondEnd) {
      throw argRangeError(
        `The range [${o}, ${o + l}) extends past the end of the guest_memfd (size ${this.size}); ` +
          'a host access there would raise SIGBUS (pass { beyondEnd: true } to map it anyway)',
      );
    }
    const privateReason =
      this.flags & GuestMemfdFlag.INIT_SHARED
        ? undefined
        : 'this guest_memfd was created without GuestMemfdFlag.INIT_SHARED: its memory is private ' +
          'to the guest and a host access would raise SIGBUS (use the guarded read/write/fill)';
    const pastEofReason =
      o + l > this.size
        ? `the mapping [${o}, ${o + l}) extends past the end of the guest_memfd (size ${this.size}): ` +
          'a host access there would raise SIGBUS (use the guarded read/write/fill)'
        : undefined;
    const flags = beyondEnd ? MapSharedFlag.BEYOND_END : 0;
    checkMappingRoom();
    const fd = this.open();
    let mapped: ReturnType<typeof native.mapShared>;
    try {
      mapped = native.mapShared(fd, o, l, flags, align);
    } catch (e) {
      throw explain(e, { call: 'map-guest-memfd', flags: this.flags, offset: o });
    }
    const m = Mapping.fromNative(mapped, o, privateReason, pastEofReason);
    mappedFrom.set(m, this);
    return m;
  }
}

// Which GuestMemfd each guest_memfd Mapping maps: vm.convertMemory() must not discard the
// "shared side" of a memslot whose host memory is the slot's own guest_memfd (that would punch
// the private memory it just converted to), and drops other file-backed memory with MADV_REMOVE.
const mappedFrom = new WeakMap<Mapping, GuestMemfd>();

/**
 * The GuestMemfd a Mapping was made from by `GuestMemfd.map()`, or undefined (anonymous memory).
 * @internal
 */
export function guestMemfdOfMapping(m: Mapping): GuestMemfd | undefined {
  return mappedFrom.get(m);
}

/**
 * Whether the host may touch the file's memory: a SIGBUS-guarded read of the first byte through
 * a one-page mapping (unmapped at once). The kernel refuses private guest_memfd memory (SIGBUS)
 * and faults shared memory in.
 */
function hostCanRead(fd: number): boolean {
  const m = native.mapShared(fd, 0, PAGE_SIZE);
  try {
    return native.guardedRead(m.buffer, 0, new Uint8Array(1)) === undefined;
  } finally {
    native.unmap(m.buffer);
  }
}

/** Checks map()'s options. */
function checkMapOptions(value: unknown): { beyondEnd: boolean; align: bigint } {
  const opts = options(value, 'options');
  const beyondEnd = opts.beyondEnd ?? false;
  if (typeof beyondEnd !== 'boolean') {
    throw argTypeError(`The "options.beyondEnd" option must be a boolean; received ${describe(beyondEnd)}`);
  }
  if (opts.align === undefined) return { beyondEnd, align: 0n };
  const align = BigInt(checkU64(opts.align, 'options.align'));
  if (align < BigInt(PAGE_SIZE) || align > MAX_ALIGN || (align & (align - 1n)) !== 0n) {
    throw argRangeError(
      `The "options.align" option must be a power of two in [${PAGE_SIZE}, 2^30]; received ${align}`,
    );
  }
  return { beyondEnd, align };
}
