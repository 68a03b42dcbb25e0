/**
 * Vm: a KVM virtual machine fd (KVM_CREATE_VM). Creates guest_memfds and owns memslots.
 * @module
 */
import type { CpuidEntry } from './cpuid.js';
import { Cap, Madvise, MemoryAttribute, MemslotFlag, VmType } from '../core/constants.js';
import { KvmStateError, argTypeError, argRangeError, explain } from '../core/errors.js';
import type { FdFacts } from '../core/fd-identity.js';
import type { ReceivedFd } from '../ipc/message.js';
import { dupOption, fdArgument, takeOver } from './adopt.js';
import { GuestMemfd, guestMemfdOfMapping } from './guest-memfd.js';
import { Kvm } from './kvm.js';
import { mappingRange, rangeHolders, type Mapping } from '../memory/mapping.js';
import { native } from '../core/native.js';
import { checkU64, describe, fdNumber, options, u32, u64 } from '../core/numbers.js';
import { claimFd, FdResource, ownFd, releaseFd } from '../core/resource.js';
import { Vcpu } from './vcpu.js';

/** Options for `vm.createGuestMemfd()` (struct kvm_create_guest_memfd). */
export interface GuestMemfdOptions {
  /** Size in bytes: a non-zero multiple of the page size. */
  size: number | bigint;
  /** GuestMemfdFlag bits (default 0). */
  flags?: number | bigint;
}

/** Options of `Vm.adopt()`: what the kernel does not say about a VM fd, and who owns it. */
export interface VmAdoptOptions {
  /**
   * An open Kvm of this process. It gives the size of the vCPUs' kvm_run mapping (ioctl
   * KVM_GET_VCPU_MMAP_SIZE, asked at adoption) and answers `vm.supportedCpuid()`, as the Kvm that
   * created a VM does.
   */
  kvm: Kvm;
  /**
   * The VmType the VM was created with (default VmType.DEFAULT). The kernel does not report a
   * VM's type: it is recorded as `vm.type`, not checked.
   */
  type?: number;
  /**
   * Own a duplicate of the fd (fcntl F_DUPFD_CLOEXEC) instead of the fd itself: the caller, the
   * received message or the library object that owns it keeps the original. Default false:
   * adopt() takes the fd over, and refuses one that a live library object owns.
   */
  dup?: boolean;
}

/** Options of `vm.adoptVcpu()`. */
export interface VcpuAdoptOptions {
  /** Own a duplicate of the fd instead of the fd itself, as {@link VmAdoptOptions.dup}. */
  dup?: boolean;
}

/** A vCPU fd whose Vcpu object could not be built: its owner entry and environment record. */
interface Parked {
  fd: number;
  ref: WeakRef<object>;
  owned: number;
}

/** A host address for a memslot: a number, a bigint, or a Mapping (its address is used). */
export type UserspaceAddr = number | bigint | Mapping;

/** A memslot for `vm.setUserMemoryRegion2()` (struct kvm_userspace_memory_region2). */
export interface MemoryRegion2 {
  /** Slot id (bits 16+ select the address space). */
  slot: number;
  /** MemslotFlag bits. Default: MemslotFlag.GUEST_MEMFD when guestMemfd is given, else 0. */
  flags?: number;
  /** Guest physical address of the slot's first byte (page-aligned). */
  guestPhysAddr: number | bigint;
  /** Size in bytes (page-aligned); use deleteMemoryRegion() to delete, not a size of 0. */
  memorySize: number | bigint;
  /** Host address backing the slot's shared memory; a Mapping of the guest_memfd works. Default 0. */
  userspaceAddr?: UserspaceAddr;
  /** The guest_memfd backing the slot's private memory, or a raw fd number (to test refusals). */
  guestMemfd?: GuestMemfd | number;
  /** Offset into the guest_memfd (page-aligned). Default 0. */
  guestMemfdOffset?: number | bigint;
}

/** A memslot for the legacy `vm.setUserMemoryRegion()` (struct kvm_userspace_memory_region). */
export interface MemoryRegion {
  /** Slot id. */
  slot: number;
  /** MemslotFlag bits (default 0). */
  flags?: number;
  /** Guest physical address (page-aligned). */
  guestPhysAddr: number | bigint;
  /** Size in bytes (page-aligned). */
  memorySize: number | bigint;
  /** Host address backing the slot, or a Mapping. */
  userspaceAddr: UserspaceAddr;
}

/** A memslot as this Vm set it. u64 fields are bigints. */
export interface Memslot {
  /** Slot id. */
  slot: number;
  /** MemslotFlag bits. */
  flags: number;
  /** Guest physical address. */
  guestPhysAddr: bigint;
  /** Size in bytes. */
  memorySize: bigint;
  /** Host address. */
  userspaceAddr: bigint;
  /**
   * The Mapping given as userspaceAddr, if one was (kept by a later call that changed only the
   * slot's flags or guest address). Whatever the address was given as, the slot holds every
   * library mapping its host range overlaps, so that the garbage collector cannot return that
   * range to the system while the kernel points at it.
   */
  mapping?: Mapping;
  /** The guest_memfd (object or fd number), for GUEST_MEMFD slots. */
  guestMemfd?: GuestMemfd | number;
  /** Offset into the guest_memfd. */
  guestMemfdOffset: bigint;
  /** Which ioctl set it: 'region2' (KVM_SET_USER_MEMORY_REGION2) or 'region' (the legacy one). */
  via: 'region' | 'region2';
}

/** A range of guest-physical addresses and the memory attributes this Vm set on it. */
export interface MemoryAttributeRange {
  /** First guest-physical address of the range. */
  start: bigint;
  /** One past the last address. */
  end: bigint;
  /** MemoryAttribute bits (0n: shared, the default). */
  attributes: bigint;
}

/** A piece of a guest-physical range that a guest_memfd memslot backs (see `vm.guestMemfdRanges()`). */
export interface GuestMemfdRange {
  /** The memslot's id. */
  slot: number;
  /** The memslot's guest_memfd. */
  guestMemfd: GuestMemfd;
  /** Where the piece starts in the guest_memfd (the slot's guestMemfdOffset plus the piece's offset in the slot). */
  offset: bigint;
  /** The piece's length in bytes. */
  length: bigint;
  /** The piece's first guest-physical address. */
  gpa: bigint;
}

/** Options of `vm.convertMemory()`. */
export interface ConvertMemoryOptions {
  /**
   * Free the backing of the side the range leaves (default true): the guest_memfd pages when it
   * becomes shared, the host memory of the memslot's userspace mapping when it becomes private.
   */
  discard?: boolean;
}

/**
 * A VM. Created by `kvm.createVm()`.
 *
 * Lifetime follows the kernel: close() releases this fd only. GuestMemfds created from the VM
 * stay open and keep the VM alive in the kernel until they are closed too. Close a Vm
 * explicitly (or with `using`): a Vm dropped without close() keeps its fd until the process
 * exits, because VM fds cannot be told apart safely after the number may have been reused.
 */
export class Vm extends FdResource {
  /** The VM type given to KVM_CREATE_VM (VmType). */
  readonly type: number;
  readonly #slots = new Map<number, Memslot>();
  // Per slot: the ArrayBuffers of the library mappings its host range overlaps. While they live
  // the range stays reserved, so the kernel never points at memory the process reused.
  readonly #holds = new Map<number, readonly ArrayBuffer[]>();
  readonly #runSize: number;
  readonly #supportedCpuid: () => CpuidEntry[];
  // vCPUs the kernel made whose Vcpu could not be built (EMFILE for the runner's fd, ENOMEM for
  // kvm_run's mapping): KVM cannot destroy a vCPU, so the fd waits here for the next
  // createVcpu() of that id instead of leaving the id taken for good.
  readonly #parked = new Map<number, Parked>();
  // What KVM_SET_MEMORY_ATTRIBUTES accepted, as sorted, disjoint, non-zero ranges. KVM has no
  // "get" call and keeps attributes per GFN independently of memslots, so this record is kept
  // through memslot deletion: https://docs.kernel.org/virt/kvm/api.html#kvm-set-memory-attributes
  #attributes: MemoryAttributeRange[] = [];
  // KVM_CAP_MEMORY_ATTRIBUTES asked on this VM (the answer depends on the VM type), for hints.
  #attributesCap: bigint | undefined;

  private constructor(fd: number, type: number, runSize: number, supportedCpuid: () => CpuidEntry[]) {
    super(fd, 'Vm');
    this.type = type;
    this.#runSize = runSize;
    this.#supportedCpuid = supportedCpuid;
  }

  /**
   * @internal The Vm of a VM fd KVM_CREATE_VM just made (`kvm.createVm()`). `runSize` is
   * KVM_GET_VCPU_MMAP_SIZE; `supportedCpuid` asks the Kvm that created this VM.
   */
  static fromCreated(fd: number, type: number, runSize: number, supportedCpuid: () => CpuidEntry[]): Vm {
    return new Vm(fd, type, runSize, supportedCpuid);
  }

  /**
   * Adopts a VM fd that came from elsewhere: another process (through an FdChannel), a parent, a
   * C program, or a duplicate of one of this process's own. The result owns the fd (close()
   * closes it) and works like a Vm from `kvm.createVm()`, as far as the kernel lets it: KVM ties a
   * VM to the memory map of the process that created it, so on a VM from another process every
   * VM ioctl (checkExtension, createGuestMemfd, createVcpu, memslots) fails with EIO; closing it,
   * passing it on and `adoptVcpu()` work.
   *
   * Takes every argument first (the options' getters run before the fd is looked at). Checks
   * before taking the fd: `fdKind()` says 'vm' (the anon-inode filesystem's magic number and the
   * kernel's name for the file, `anon_inode:kvm-vm`), and no live object of this library owns the
   * fd (unless `opts.dup`). Then it sets FD_CLOEXEC (fcntl), or with `opts.dup` owns a
   * close-on-exec duplicate. `fd` may be a {@link ReceivedFd}: it is taken from its message only
   * once every check passed (with `dup`, never). On any failure the fd stays the caller's (or
   * the message's).
   * @throws TypeError (code 'ERR_KVM_NOT_VM') for an fd that is not a VM; KvmStateError
   * ERR_KVM_FD_OWNED for an fd number that a live library object owns (a Vm, a received message's
   * fd not taken), ERR_KVM_CLOSED for a ReceivedFd already taken or closed, or a closed
   * `opts.kvm`; KvmError (syscall 'fstatfs') EBADF for a closed fd, (syscall 'fcntl') EMFILE when
   * no fd is left for the duplicate, (ioctl KVM_GET_VCPU_MMAP_SIZE) from `opts.kvm`;
   * TypeError/RangeError for bad numbers or options, or an `fd` object that is not a ReceivedFd
   * of this library
   */
  static adopt(fd: number | ReceivedFd, opts: VmAdoptOptions): Vm {
    // Take every argument before looking at the fd: a getter could close or reuse it.
    const arg = fdArgument(fd);
    const o = options(opts, 'options');
    const kvmIn = o.kvm;
    const type = u32(o.type ?? VmType.DEFAULT, 'options.type');
    const dup = dupOption(o.dup);
    if (!(kvmIn instanceof Kvm)) {
      throw argTypeError(`The "options.kvm" option must be a Kvm of this library; received ${describe(kvmIn)}`);
    }
    const kvmFd = ownFd(kvmIn, 'options.kvm') as number; // ERR_KVM_CLOSED if it was closed
    // No user code runs from here on.
    const runSize = native.getVcpuMmapSize(kvmFd);
    return takeOver(arg, dup, 'vm', {}, (n) => new Vm(n, type, runSize, supportedCpuidOf(kvmIn)));
  }

  /**
   * Adopts a vCPU fd of this VM that came from elsewhere (another process through an FdChannel,
   * a parent, a C program), as {@link Vm.adopt} does a VM fd, and maps its kvm_run area. KVM does
   * not say which VM a vCPU fd belongs to: the caller vouches that it is one of this VM's (the
   * Vcpu reads guest memory and the supported CPUID through this Vm). On a vCPU of a VM from
   * another process every vCPU ioctl (getRegs, run...) fails with EIO; mapping it works.
   *
   * Checks before taking the fd: `fdKind()` says 'vcpu', the kernel's name for the file
   * (`anon_inode:kvm-vcpu:N`) carries `id`, and no live object of this library owns the fd
   * (unless `opts.dup`). Then FD_CLOEXEC or a duplicate, as Vm.adopt(); a ReceivedFd is taken
   * only once the Vcpu exists. On any failure the fd stays the caller's (or the message's).
   * @param id the vCPU id it was created with (KVM_CREATE_VCPU)
   * @throws TypeError (code 'ERR_KVM_NOT_VCPU') for an fd that is not a vCPU; RangeError (code
   * 'ERR_KVM_VCPU_ID_MISMATCH') for a vCPU whose id is not `id`; KvmStateError ERR_KVM_FD_OWNED
   * for an fd number that a live library object owns, ERR_KVM_VCPU_HAS_RUNNER for another fd of
   * a vCPU that has a live Vcpu in this process, ERR_KVM_CLOSED for a ReceivedFd already taken or
   * closed, or after this Vm's close(); KvmError (syscall 'fstatfs') EBADF for a closed fd,
   * (syscall 'mmap') when kvm_run cannot be mapped, (syscall 'fcntl') EMFILE;
   * TypeError/RangeError for bad numbers or options
   */
  adoptVcpu(fd: number | ReceivedFd, id: number, opts: VcpuAdoptOptions = {}): Vcpu {
    const arg = fdArgument(fd);
    const vcpuId = u32(id, 'id');
    const dup = dupOption(options(opts, 'options').dup);
    this.open();
    // No user code runs from here on.
    const name = `anon_inode:kvm-vcpu:${vcpuId}`;
    const checkId = (n: number, { link }: FdFacts): void => {
      if (link === name) return;
      throw argRangeError(`fd ${n} is vCPU '${link.slice('anon_inode:'.length)}', not vCPU ${vcpuId}`, 'ERR_KVM_VCPU_ID_MISMATCH');
    };
    return takeOver(arg, dup, 'vcpu', { before: checkId }, (n) => Vcpu.fromCreated(n, vcpuId, this, this.#runSize));
  }

  /**
   * The CPUID KVM supports, from the Kvm that created (or adopted) this VM (`kvm.getSupportedCpuid()`): what
   * the x86 boot helpers give a vCPU that has no CPUID yet. If that Kvm was closed, the device is
   * opened again to ask.
   * @throws KvmError from open or KVM_GET_SUPPORTED_CPUID
   */
  supportedCpuid(): CpuidEntry[] {
    return this.#supportedCpuid();
  }

  /**
   * Creates vCPU `id` (ioctl KVM_CREATE_VCPU) and maps its kvm_run area. The fd is O_CLOEXEC.
   * Like a GuestMemfd, a Vcpu keeps the VM alive in the kernel after this Vm is closed.
   * @param id the vCPU id (the APIC id on x86), below Cap.MAX_VCPU_ID
   * @throws KvmError: EEXIST if the id is taken, EINVAL if it is too large; ERR_KVM_CLOSED
   * after close()
   */
  createVcpu(id: number): Vcpu {
    const vcpuId = u32(id, 'id');
    const vmFd = this.open();
    const parked = this.#parked.get(vcpuId);
    let fd: number;
    try {
      fd = parked?.fd ?? native.createVcpu(vmFd, vcpuId);
    } catch (e) {
      throw explain(e, { call: 'create-vcpu', id: vcpuId, maxVcpuId: () => native.checkExtension(vmFd, Cap.MAX_VCPU_ID) });
    }
    let vcpu: Vcpu;
    try {
      vcpu = Vcpu.fromCreated(fd, vcpuId, this, this.#runSize);
    } catch (e) {
      if (!parked) this.#parked.set(vcpuId, { fd, ref: claimFd(fd, this), owned: native.ownFd(fd, false) });
      throw e;
    }
    if (parked) {
      this.#parked.delete(vcpuId);
      native.disownFd(parked.owned); // the Vcpu owns the fd now (it claimed it in its constructor)
    }
    return vcpu;
  }

  /** Closes the VM fd and the fds of vCPUs parked by a failed createVcpu(). */
  override close(): void {
    for (const [id, p] of this.#parked) {
      this.#parked.delete(id);
      releaseFd(p.fd, p.ref);
      native.disownFd(p.owned);
      try {
        native.close(p.fd);
      } catch {
        // Closed behind the library's back: nothing left to release.
      }
    }
    super.close();
  }

  /**
   * Asks this VM about a capability (ioctl KVM_CHECK_EXTENSION on the VM fd); some answers,
   * e.g. Cap.GUEST_MEMFD_FLAGS, depend on the VM type.
   * @param cap a Cap value
   * @returns 0 if unsupported, else 1 or a capability-specific count or bitmask
   * @throws KvmError; ERR_KVM_CLOSED after close()
   */
  checkExtension(cap: number): number {
    return native.checkExtension(this.open(), u32(cap, 'cap'));
  }

  /**
   * Enables a capability on this VM (ioctl KVM_ENABLE_CAP), e.g.
   * `vm.enableCap(Cap.EXIT_HYPERCALL, [1n << BigInt(Hypercall.MAP_GPA_RANGE)])` to have
   * MAP_GPA_RANGE hypercalls exit to userspace as `{ reason: 'hypercall' }`.
   * @param cap a Cap value
   * @param args up to four u64 arguments (struct kvm_enable_cap.args; missing ones are 0)
   * @param flags struct kvm_enable_cap.flags (x86 takes 0)
   * @throws KvmError: EINVAL for a capability the VM cannot enable or arguments it refuses (the
   * `hint` gives what `checkExtension(cap)` offers); TypeError/RangeError for bad numbers or more
   * than four args; ERR_KVM_CLOSED after close()
   */
  enableCap(cap: number, args: readonly (number | bigint)[] = [], flags = 0): void {
    const c = u32(cap, 'cap');
    if (!Array.isArray(args)) throw argTypeError(`The "args" argument must be an array; received ${describe(args)}`);
    if (args.length > 4) throw argRangeError(`The "args" argument must have at most 4 elements; received ${args.length}`);
    const a = [0, 1, 2, 3].map((i) => (i < args.length ? u64(args[i], `args[${i}]`) : 0n)) as [bigint, bigint, bigint, bigint];
    const f = u32(flags, 'flags');
    const fd = this.open();
    try {
      native.enableCap(fd, c, f, ...a);
    } catch (e) {
      throw explain(e, {
        call: 'enable-cap', cap: c, capName: Object.entries(Cap).find(([, v]) => v === c)?.[0], flags: f, args: a,
        offered: () => native.checkExtension(fd, c),
      });
    }
  }

  /**
   * Sets the memory attributes of [gpa, gpa + size) (ioctl KVM_SET_MEMORY_ATTRIBUTES, flags 0):
   * every attribute of the range is overwritten, so 0n makes it shared again. With
   * MemoryAttribute.PRIVATE the guest's accesses go to the guest_memfd of the range's memslot;
   * KVM does not look at memslots here, so a range with no guest_memfd slot, or no slot at all,
   * may be made private (the guest's access then exits as a memory fault). A VM accepts the bits
   * its own `checkExtension(Cap.MEMORY_ATTRIBUTES)` reports (PRIVATE only on VM types with private
   * memory, e.g. VmType.SW_PROTECTED). Successful calls are recorded: see {@link memoryAttributes}.
   * @throws KvmError: EINVAL for attributes this VM does not offer, a range that is empty,
   * unaligned or wraps (the `hint` names which, with the VM's KVM_CAP_MEMORY_ATTRIBUTES); ENOTTY
   * on kernels without the call; ENOMEM; TypeError/RangeError for bad numbers; ERR_KVM_CLOSED
   * after close()
   */
  setMemoryAttributes(gpa: number | bigint, size: number | bigint, attributes: number | bigint): void {
    const g = u64(gpa, 'gpa');
    const sz = u64(size, 'size');
    const at = u64(attributes, 'attributes');
    const fd = this.open();
    try {
      native.setMemoryAttributes(fd, g, sz, at, 0);
    } catch (e) {
      throw explain(e, {
        call: 'set-memory-attributes', gpa: g, size: sz, attributes: at,
        offered: () => (this.#attributesCap ??= BigInt(native.checkExtension(fd, Cap.MEMORY_ATTRIBUTES))),
      });
    }
    this.#recordAttributes(g, g + sz, at);
  }

  /**
   * The memory attributes this Vm object has set with setMemoryAttributes() (and convertMemory()):
   * the library's own record, not the kernel's, since KVM has no call to read them back
   * (https://docs.kernel.org/virt/kvm/api.html#kvm-set-memory-attributes: "userspace is
   * responsible for explicitly tracking the state"). Attributes belong to guest frames, not to
   * memslots, so deleting a memslot keeps them. Another Vm object on the same VM (an adopted
   * duplicate) has its own record.
   * @param gpa with `size`, the window to report; without, every range whose attributes are not 0
   * @param size the window's length
   * @returns sorted, disjoint, non-empty ranges; for a window, ranges covering all of it
   * (attributes 0n where nothing was set), [] for an empty one
   * @throws TypeError/RangeError for bad numbers, a `gpa` without `size`, or a window ending past 2^64
   */
  memoryAttributes(gpa?: number | bigint, size?: number | bigint): readonly MemoryAttributeRange[] {
    if (gpa === undefined && size === undefined) return this.#attributes.map((r) => ({ ...r }));
    if (gpa === undefined || size === undefined) throw argTypeError('The "gpa" and "size" arguments must be given together');
    const [start, end] = gpaRange(gpa, size);
    const out: MemoryAttributeRange[] = [];
    if (start === end) return out;
    let at = start;
    for (const r of this.#attributes) {
      if (r.end <= at) continue;
      if (r.start >= end) break;
      if (r.start > at) out.push({ start: at, end: r.start, attributes: 0n });
      const e = r.end < end ? r.end : end;
      out.push({ start: r.start > at ? r.start : at, end: e, attributes: r.attributes });
      at = e;
    }
    if (at < end) out.push({ start: at, end, attributes: 0n });
    return out;
  }

  /**
   * Where [gpa, gpa + size) lives in guest_memfd: one piece per memslot it crosses, walking this
   * Vm's memslots the way the kernel selftests' vm_guest_mem_fallocate() does. For fallocate or
   * punch-hole on the guest_memfd behind a guest-physical range.
   * @throws RangeError (code 'ERR_KVM_NOT_GUEST_MEMFD') if some address of the range is in no
   * memslot set by this Vm, in one without a guest_memfd, or in one whose guest_memfd was given
   * as a bare fd number; TypeError/RangeError for bad numbers or a range ending past 2^64
   */
  guestMemfdRanges(gpa: number | bigint, size: number | bigint): GuestMemfdRange[] {
    const [start, end] = gpaRange(gpa, size);
    const out: GuestMemfdRange[] = [];
    for (let at = start; at < end;) {
      const s = [...this.#slots.values()].find((m) => m.guestPhysAddr <= at && at < m.guestPhysAddr + m.memorySize);
      const why = s === undefined ? 'is in no memslot of this Vm'
        : !(s.flags & MemslotFlag.GUEST_MEMFD) || s.guestMemfd === undefined ? `is in memslot ${s.slot}, which has no guest_memfd`
        : !(s.guestMemfd instanceof GuestMemfd) ? `is in memslot ${s.slot}, whose guest_memfd was given as fd number ${s.guestMemfd}`
        : undefined;
      if (why !== undefined || s === undefined || !(s.guestMemfd instanceof GuestMemfd)) {
        throw argRangeError(`guest-physical address 0x${at.toString(16)} of [0x${start.toString(16)}, 0x${end.toString(16)}) ${why ?? ''}`, 'ERR_KVM_NOT_GUEST_MEMFD');
      }
      const inSlot = at - s.guestPhysAddr;
      const slotEnd = s.guestPhysAddr + s.memorySize;
      const length = (end < slotEnd ? end : slotEnd) - at;
      out.push({ slot: s.slot, guestMemfd: s.guestMemfd, offset: s.guestMemfdOffset + inSlot, length, gpa: at });
      at += length;
    }
    return out;
  }

  /**
   * Converts [gpa, gpa + size) to private or shared memory, as a VMM does on a memory-fault exit
   * or a MAP_GPA_RANGE hypercall: sets the attributes (setMemoryAttributes), then, with
   * `discard` (the default), frees the backing of the side the range left: to shared, the
   * guest_memfd pages are punched out (GuestMemfd.punchHole); to private, the memslot's host
   * memory is dropped (MADV_DONTNEED on anonymous memory, MADV_REMOVE on a mapping of another
   * guest_memfd). Host memory is dropped only where the memslot was given a Mapping of this
   * library: a bare address is left alone (the library does not know what it is). Nothing is
   * discarded for a memslot whose host memory maps its own guest_memfd (both sides are one file).
   * Every address must be in a guest_memfd memslot of this Vm ({@link guestMemfdRanges}),
   * checked before anything changes.
   * @throws RangeError (code 'ERR_KVM_NOT_GUEST_MEMFD') for a range not all in guest_memfd
   * memslots; TypeError/RangeError for bad arguments or a range ending past 2^64; KvmError from
   * KVM_SET_MEMORY_ATTRIBUTES, fallocate or madvise (the attributes are set once a discard
   * fails); KvmStateError ERR_KVM_CLOSED if this Vm, or a GuestMemfd or Mapping the discard
   * needs (or needs to tell apart), is closed: all checked before the attributes change
   */
  convertMemory(gpa: number | bigint, size: number | bigint, to: 'private' | 'shared', opts: ConvertMemoryOptions = {}): void {
    const g = u64(gpa, 'gpa');
    const sz = u64(size, 'size');
    if (to !== 'private' && to !== 'shared') throw argTypeError(`The "to" argument must be 'private' or 'shared'; received ${describe(to)}`);
    const discard = options(opts, 'options').discard ?? true;
    if (typeof discard !== 'boolean') throw argTypeError(`The "options.discard" option must be a boolean; received ${describe(discard)}`);
    this.open(); // ERR_KVM_CLOSED before anything else is looked at
    const pieces = this.guestMemfdRanges(g, sz);
    // Every discard target is checked before the attributes change, so a closed object leaves nothing half done.
    const discards = discard ? pieces.map((p) => this.#discardOf(p, to)) : [];
    this.setMemoryAttributes(g, sz, to === 'private' ? MemoryAttribute.PRIVATE : 0n);
    // Attributes first, then the discard, as QEMU's kvm_convert_memory() does: once the guest's
    // accesses go to the new side, the old side's pages are unreachable and can be freed.
    for (const d of discards) d?.();
  }

  /**
   * What discarding the side a piece leaves takes (undefined: nothing), with every object it
   * needs checked open now.
   */
  #discardOf(p: GuestMemfdRange, to: 'private' | 'shared'): (() => void) | undefined {
    const slot = this.#slots.get(p.slot);
    const m = slot?.mapping;
    const file = m === undefined ? undefined : guestMemfdOfMapping(m);
    // One file on both sides (the slot's host memory maps its own guest_memfd): nothing to free.
    if (file !== undefined && sameFile(file, p.guestMemfd)) return undefined;
    if (to === 'shared') {
      void p.guestMemfd.fd; // ERR_KVM_CLOSED for a closed GuestMemfd
      return () => p.guestMemfd.punchHole(p.offset, p.length);
    }
    if (slot === undefined || m === undefined) return undefined;
    if (m.closed) throw new KvmStateError('ERR_KVM_CLOSED', `The Mapping of memslot ${slot.slot} is closed`);
    const offset = slot.userspaceAddr - m.address + (p.gpa - slot.guestPhysAddr);
    return () => m.advise(file !== undefined ? Madvise.REMOVE : Madvise.DONTNEED, offset, p.length);
  }

  #recordAttributes(start: bigint, end: bigint, attributes: bigint): void {
    const out: MemoryAttributeRange[] = [];
    for (const r of this.#attributes) {
      if (r.end <= start || r.start >= end) {
        out.push(r);
        continue;
      }
      if (r.start < start) out.push({ start: r.start, end: start, attributes: r.attributes });
      if (r.end > end) out.push({ start: end, end: r.end, attributes: r.attributes });
    }
    if (attributes !== 0n && end > start) out.push({ start, end, attributes });
    out.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    const merged: MemoryAttributeRange[] = [];
    for (const r of out) {
      const last = merged[merged.length - 1];
      if (last && last.end === r.start && last.attributes === r.attributes) last.end = r.end;
      else merged.push({ ...r });
    }
    this.#attributes = merged;
  }

  /**
   * Creates a guest_memfd bound to this VM for life (ioctl KVM_CREATE_GUEST_MEMFD), close-on-exec
   * from its first moment in the process (made on a short-lived thread with a private fd table),
   * so no child spawned from any thread can inherit it.
   * @throws KvmError: EINVAL for a size that is 0 or not page-aligned, or an unsupported flag;
   * (syscall 'pthread_create') EAGAIN when no thread can be created; TypeError/RangeError for bad
   * numbers; ERR_KVM_CLOSED after close()
   */
  createGuestMemfd(opts: GuestMemfdOptions): GuestMemfd {
    const o = options(opts, 'options');
    const size = checkU64(o.size, 'size');
    const flags = checkU64(o.flags ?? 0, 'flags');
    const vmFd = this.open();
    let fd: number;
    try {
      fd = native.createGuestMemfd(vmFd, size, flags);
    } catch (e) {
      throw explain(e, {
        call: 'create-guest-memfd', size: BigInt(size), flags: BigInt(flags),
        supportedFlags: () => BigInt(native.checkExtension(vmFd, Cap.GUEST_MEMFD_FLAGS)),
        guestMemfdCap: () => native.checkExtension(vmFd, Cap.GUEST_MEMFD),
      });
    }
    return GuestMemfd.fromCreated(fd, BigInt(size), BigInt(flags));
  }

  /**
   * Creates or changes a memslot (ioctl KVM_SET_USER_MEMORY_REGION2). Pass `guestMemfd` to
   * back the slot with a guest_memfd; `userspaceAddr` may be a Mapping of that guest_memfd.
   * Each field of `region` is read once, all of them before the GuestMemfd's fd or the Mapping's
   * address is, so a getter that closes either is seen. The slot holds every mapping of this
   * library that its host range overlaps (however `userspaceAddr` was given) until it is deleted.
   * @throws KvmError: EEXIST when the guest range overlaps another slot; EINVAL for unaligned
   * values, an fd that is not a guest_memfd of this VM, a range past the file's end, a
   * guest_memfd range already bound, GUEST_MEMFD with READONLY or LOG_DIRTY_PAGES, or moving a
   * guest_memfd slot; EBADF for a closed fd. The error's `hint` names the cause it finds in the
   * arguments and this Vm's memslots (e.g. the slot overlapped, the misaligned field). KvmStateError ERR_KVM_CLOSED if this Vm, the
   * GuestMemfd ("guestMemfd") or the Mapping ("userspaceAddr") is closed. TypeError/RangeError
   * for bad numbers, or a Mapping shorter than the slot.
   */
  setUserMemoryRegion2(region: MemoryRegion2): void {
    this.#setRegion(region, 'region2');
  }

  /**
   * Creates or changes a memslot with the legacy call (ioctl KVM_SET_USER_MEMORY_REGION), which
   * cannot carry a guest_memfd (the kernel refuses MemslotFlag.GUEST_MEMFD here with EINVAL).
   * @throws KvmError: EEXIST on overlap, EINVAL for unaligned values or unsupported flags;
   * KvmStateError if this Vm or the Mapping is closed; TypeError/RangeError for bad numbers
   */
  setUserMemoryRegion(region: MemoryRegion): void {
    this.#setRegion(region, 'region');
  }

  #setRegion(region: MemoryRegion2, via: Memslot['via']): void {
    // Take every field once, first: a getter could close the GuestMemfd or the Mapping and reuse
    // the fd number or the address range, so neither is read before all getters have run.
    const r = options(region, 'region');
    const slotIn = r.slot;
    const gmIn = via === 'region2' ? r.guestMemfd : undefined;
    const flagsIn = r.flags;
    const gpaIn = r.guestPhysAddr;
    const sizeIn = r.memorySize;
    const uaddrIn = via === 'region2' ? r.userspaceAddr ?? 0 : r.userspaceAddr;
    const offsetIn = via === 'region2' ? r.guestMemfdOffset : undefined;
    const slot = u32(slotIn, 'slot');
    if (gmIn !== undefined && !(gmIn instanceof GuestMemfd)) fdNumber(gmIn, 'guestMemfd');
    const flags = u32(flagsIn ?? (gmIn !== undefined ? MemslotFlag.GUEST_MEMFD : 0), 'flags');
    const gpa = u64(gpaIn, 'guestPhysAddr');
    const size = u64(sizeIn, 'memorySize');
    const gmemOffset = u64(offsetIn ?? 0, 'guestMemfdOffset');
    // No user code runs from here on.
    const [uaddr, mapping] = userspaceAddr(uaddrIn, size);
    let gm: GuestMemfd | number | undefined;
    let gmemFd = 0;
    if (gmIn !== undefined) {
      const own = ownFd(gmIn, 'guestMemfd'); // ERR_KVM_CLOSED if it was closed
      if (own === undefined) {
        if (typeof gmIn !== 'number') throw argTypeError(`The "guestMemfd" argument must be a GuestMemfd or an fd number; received ${describe(gmIn)}`);
        gm = gmemFd = gmIn;
      } else {
        gm = gmIn as GuestMemfd;
        gmemFd = own;
      }
    }
    const holds = rangeHolders(uaddr, size);
    const vmFd = this.open();
    try {
      if (via === 'region2') native.setUserMemoryRegion2(vmFd, slot, flags, gpa, size, uaddr, gmemOffset, gmemFd);
      else native.setUserMemoryRegion(vmFd, slot, flags, gpa, size, uaddr);
    } catch (e) {
      throw explain(e, {
        call: 'set-memslot', via, slots: this.#slots,
        region: { slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: uaddr, guestMemfdOffset: gmemOffset, ...(gm !== undefined ? { guestMemfd: gm } : {}) },
        ...(gm instanceof GuestMemfd ? { guestMemfdSize: gm.size } : {}),
        caps: () => ({
          memslots: native.checkExtension(vmFd, Cap.NR_MEMSLOTS),
          addressSpaces: native.checkExtension(vmFd, Cap.MULTI_ADDRESS_SPACE),
          guestMemfd: native.checkExtension(vmFd, Cap.GUEST_MEMFD),
        }),
      });
    }
    this.#record({
      slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: uaddr, guestMemfdOffset: gmemOffset, via,
      ...(gm !== undefined ? { guestMemfd: gm } : {}), ...(mapping ? { mapping } : {}),
    }, holds);
  }


  /**
   * Deletes a memslot: the same ioctl that created it, with memory_size 0. The guest_memfd and
   * its data are untouched.
   * @throws KvmError EINVAL if the slot does not exist; ERR_KVM_CLOSED after close()
   */
  deleteMemoryRegion(slot: number): void {
    const s = u32(slot, 'slot');
    const fd = this.open();
    try {
      if (this.#slots.get(s)?.via === 'region2') native.setUserMemoryRegion2(fd, s, 0, 0n, 0n, 0n, 0n, 0);
      else native.setUserMemoryRegion(fd, s, 0, 0n, 0n, 0n);
    } catch (e) {
      throw explain(e, { call: 'delete-memslot', slot: s, slots: this.#slots });
    }
    this.#slots.delete(s);
    this.#holds.delete(s);
  }

  /** The memslots this object has set and not deleted, by slot id. */
  get memslots(): ReadonlyMap<number, Readonly<Memslot>> {
    return this.#slots;
  }

  /** Records what the kernel accepted; `holds` are the mappings the slot's host range overlaps. */
  #record(m: Memslot, holds: readonly ArrayBuffer[]): void {
    if (m.memorySize === 0n) {
      this.#slots.delete(m.slot);
      this.#holds.delete(m.slot);
      return;
    }
    const old = this.#slots.get(m.slot);
    if (old && old.userspaceAddr === m.userspaceAddr && old.memorySize === m.memorySize) {
      // A change of flags or guest address: the kernel keeps pointing at the same host range,
      // so keep holding all that the slot held, and the Mapping it was given.
      holds = [...new Set([...(this.#holds.get(m.slot) ?? []), ...holds])];
      if (m.mapping === undefined && old.mapping !== undefined) m.mapping = old.mapping;
    }
    this.#slots.set(m.slot, m);
    this.#holds.set(m.slot, holds);
  }
}

/**
 * What `vm.supportedCpuid()` asks: `kvm`, or once it is closed the device at its path, opened
 * again (a VM outlives the Kvm that created or adopted it).
 * @internal
 */
export function supportedCpuidOf(kvm: Kvm): () => CpuidEntry[] {
  return () => {
    if (!kvm.closed) return kvm.getSupportedCpuid();
    using again = Kvm.open(kvm.path);
    return again.getSupportedCpuid();
  };
}

/**
 * Whether two GuestMemfd objects are the same file (an adopted duplicate is another object).
 * @throws KvmStateError ERR_KVM_CLOSED if either is closed and they are not one object: a closed
 * one cannot be told apart, and guessing "different" would discard the memory just converted to
 */
function sameFile(a: GuestMemfd, b: GuestMemfd): boolean {
  if (a === b) return true;
  const sa = a.stat();
  const sb = b.stat();
  return sa.ino === sb.ino && sa.dev === sb.dev;
}

/** [start, end) of a guest-physical range, refused when it ends past 2^64. */
function gpaRange(gpa: unknown, size: unknown): [bigint, bigint] {
  const start = u64(gpa, 'gpa');
  const end = start + u64(size, 'size');
  if (end > 1n << 64n) {
    throw argRangeError(`The range [0x${start.toString(16)}, +0x${(end - start).toString(16)}) ends past 2^64`);
  }
  return [start, end];
}

/**
 * A memslot's host address, and the Mapping if it was given as one (its address and length read
 * from its private fields).
 */
function userspaceAddr(value: unknown, size: bigint): [bigint, Mapping | undefined] {
  const m = mappingRange(value, 'userspaceAddr'); // ERR_KVM_CLOSED for a closed Mapping
  if (m !== undefined) {
    if (BigInt(m.length) < size) {
      throw argRangeError(`The "userspaceAddr" Mapping is ${m.length} bytes, shorter than memorySize ${size}`);
    }
    return [m.address, value as Mapping];
  }
  return [u64(value, 'userspaceAddr'), undefined];
}
