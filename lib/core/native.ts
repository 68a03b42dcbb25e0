/**
 * Loads the C++ addon and describes its functions. Internal: users go through the classes.
 *
 * The addon is found by node-gyp-build: a source build in build/Release/ (node-gyp, the default
 * build), else the package's prebuilt binary in prebuilds/linux-x64/; or it is the file named by
 * the KVM_GMEM_ADDON environment variable (used to test the cmake-js build of the same sources).
 * @module
 * @internal
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';
import { KvmStateError, addonError, errnoError, nativeArgError, type KvmStateCode } from './errors.js';

/** u64 as the addon accepts it: a non-negative safe integer or a bigint. */
export type U64In = number | bigint;

/** What mapShared/mapAnonymous return. */
export interface NativeMapping {
  buffer: ArrayBuffer;
  address: bigint;
}

/** Bits of mapShared's `flags` argument (native/mm/mapping.cc). */
export const MapSharedFlag = {
  /** Skip the end-of-file check: the range may extend past the end of the file. */
  BEYOND_END: 1 << 0,
} as const;

/** What a guarded access (guardedRead/Write/Fill) returns after a SIGBUS; undefined otherwise. */
export interface NativeFault {
  /** Bytes of the request done before the fault. */
  bytesDone: number;
  /** si_addr. */
  address: bigint;
  /** si_code. */
  sigCode: number;
}

/** get_mempolicy(MPOL_F_ADDR) as the addon returns it. */
export interface NativeMemPolicy {
  /** The policy mode, with any MPOL_F_* mode flags. */
  mode: number;
  /** The nodemask (asked with 1024 bits). */
  nodemask: bigint;
}

/** fstat(2) as the addon returns it. */
export interface NativeStat {
  /** st_size: the file's size in bytes. */
  size: bigint;
  /** st_blksize: the preferred I/O block size (the page size). */
  blksize: number;
  /** st_blocks: 512-byte blocks allocated. */
  blocks: bigint;
  /** st_ino: the inode number (distinct per guest_memfd). */
  ino: bigint;
  /** st_dev. */
  dev: bigint;
  /** st_mode (file type and permission bits). */
  mode: number;
  /** st_nlink. */
  nlink: number;
}

/** A vCPU's runner (native/kvm/vcpu_runner.cc): the kvm_run mapping, KVM_RUN, its thread, the kick. */
export interface NativeVcpuRunner {
  /** The kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE bytes). */
  readonly buffer: ArrayBuffer;
  /** Whether a runAsync() is in flight. */
  readonly running: boolean;
  /** The vCPU thread's Linux tid, once started. */
  readonly threadId: number | undefined;
  /** KVM_RUN on the calling thread: 0 or its errno. */
  run(): number;
  /** KVM_RUN on the vCPU's own thread: resolves to 0 or its errno. `polled`: the caller will poll(). */
  runAsync(polled?: boolean): Promise<number>;
  /** KVM_PRE_FAULT_MEMORY on the vCPU's own thread: resolves to 0 or its errno; shares the busy state and kick with runAsync. */
  preFaultAsync(gpa: U64In, size: U64In, flags: U64In): Promise<number>;
  /** Writes [gpa, size] as the last preFaultAsync() left them into out. */
  preFaultRange(out: BigUint64Array): void;
  /** Settles a polled run whose result is in; `giveUp` hands delivery back to the event loop. Whether to poll again. */
  poll(giveUp?: boolean): boolean;
  /** immediate_exit + signal; whether a runAsync() was in flight. */
  kick(): boolean;
  /** Stops the thread, unmaps kvm_run, closes the runner's own fd. */
  close(): void;
}

/** What recvMsg returns for a message (native/ipc/fdpass.cc). */
export interface NativeMessage {
  /** The payload bytes received (at most maxBytes). */
  bytes: Uint8Array;
  /** The fds received, in order, close-on-exec; empty when `closed` > 0. */
  fds: number[];
  /** msg_flags: MSG_TRUNC (0x20), MSG_CTRUNC (0x8). */
  flags: number;
  /** How many received fds the addon closed (truncation, or more than maxFds). */
  closed: number;
  /** A 0-byte result that is the peer's end of stream (RCV_SHUTDOWN), not an empty message. */
  eof: boolean;
  /** How many fds the control buffer had room for (maxFds, or one more after rounding). */
  room: number;
}

/** getsockopt SO_DOMAIN / SO_TYPE / SO_ACCEPTCONN. */
export interface NativeSocketType {
  domain: number;
  type: number;
  listening: boolean;
}

/** Waits for an fd (its own dup of it) to become readable on a thread of its own (native/ipc/fd_watch.cc). */
export interface NativeFdWatch {
  /** Resolves 1 readable (or hung up), 0 timeout, 2 closed, or -errno; timeoutMs -1 = no limit. One at a time. */
  wait(timeoutMs: number): Promise<number>;
  /** Stops the thread (a wait in flight resolves 2) and closes the dup. Idempotent. */
  close(): void;
}

/** Byte offsets and sizes of the uapi structs, from native/uapi/kvm.h. */
export type NativeLayout = Record<string, Record<string, number>>;

/** The limits the addon enforces (native/util/limits.h); lib reads its own from here. */
export interface NativeLimits {
  /** Payload bytes of one sendMsg/recvMsg message. */
  readonly maxPayload: number;
  /** Fds in one SCM_RIGHTS message (the kernel's SCM_MAX_FD). */
  readonly maxFdsPerMessage: number;
  /** Bytes of a Unix socket path, without its NUL. */
  readonly maxSocketPathBytes: number;
  /** The longest mapping mapShared/mapAnonymous expose (and mmapProbe tries). */
  readonly maxMappingLength: number;
  /** The largest `align` of mapShared. */
  readonly maxMapAlign: number;
  /** The largest mbind `maxnode`. */
  readonly maxMaxnode: number;
  /** Offsets in one pageNodes query. */
  readonly maxPageQueries: number;
  /** Threads inside guarded accesses at once. */
  readonly maxGuardedThreads: number;
  /** Entries in one CPUID table (KVM_MAX_CPUID_ENTRIES). */
  readonly maxCpuidEntries: number;
}

/** The addon's exports (native/, one Init per file). Each is one system call, no policy. */
export interface NativeAddon {
  /** Installs the builder of the addon's system-call errors (errno positive). */
  setErrorFactory(
    f: (errno: number, syscall: string, request: string | undefined, detail: string, description: string) => Error,
  ): void;
  /** Installs the builder of the addon's state errors (code: a KvmStateCode). */
  setStateErrorFactory(f: (code: KvmStateCode, message: string) => Error): void;
  /** Installs the builder of the addon's argument errors (kind: 0 type, 1 range, 2 value, 3 missing). */
  setArgErrorFactory(f: (kind: number, message: string) => Error): void;
  /** The limits the addon enforces. */
  readonly limits: NativeLimits;
  open(path: string): number;
  close(fd: number): void;
  /** Records an fd a library object owns, for this environment's teardown: a token for disownFd. */
  ownFd(fd: number, ownInode: boolean): number;
  /** Forgets what ownFd recorded (the fd was closed or given up). */
  disownFd(token: number): void;
  setCloexec(fd: number): void;
  /** fcntl(fd, F_DUPFD_CLOEXEC, 0): a close-on-exec duplicate (native/core/fd.cc). */
  dupCloexec(fd: number): number;
  memfdCreate(name: string): number;
  getApiVersion(fd: number): number;
  checkExtension(fd: number, cap: number): number;
  createVm(fd: number, type: number): number;
  getVcpuMmapSize(fd: number): number;
  createGuestMemfd(vmFd: number, size: U64In, flags: U64In): number;
  setUserMemoryRegion2(
    vmFd: number, slot: number, flags: number, guestPhysAddr: U64In, memorySize: U64In,
    userspaceAddr: U64In, guestMemfdOffset: U64In, guestMemfd: number,
  ): void;
  setUserMemoryRegion(
    vmFd: number, slot: number, flags: number, guestPhysAddr: U64In, memorySize: U64In, userspaceAddr: U64In,
  ): void;
  fstat(fd: number): NativeStat;
  inodeOf(fd: number): number | bigint;
  fallocate(fd: number, mode: number, offset: U64In, length: U64In): void;
  /** `flags`: MapSharedFlag bits (default 0); `align`: 0 (default) or a power of two in [page, 1 GiB]. */
  mapShared(fd: number, offset: U64In, length: U64In, flags?: number, align?: U64In): NativeMapping;
  mapAnonymous(length: U64In): NativeMapping;
  unmap(buffer: ArrayBuffer): void;
  mincore(buffer: ArrayBuffer): Uint8Array;
  /** Copies [offset, offset + target.length) of a live mapping into target, SIGBUS-guarded. */
  guardedRead(buffer: ArrayBuffer, offset: U64In, target: Uint8Array): NativeFault | undefined;
  /** Copies source into [offset, offset + source.length) of a live mapping, SIGBUS-guarded. */
  guardedWrite(buffer: ArrayBuffer, offset: U64In, source: Uint8Array): NativeFault | undefined;
  /** Sets [offset, offset + length) of a live mapping to byte (0..255), SIGBUS-guarded. */
  guardedFill(buffer: ArrayBuffer, offset: U64In, length: U64In, byte: number): NativeFault | undefined;
  /** madvise(2) on [offset, offset + length) of a live mapping. */
  madvise(buffer: ArrayBuffer, offset: U64In, length: U64In, advice: number): void;
  /** mbind(2) on [offset, offset + length) of a live mapping; maxnode <= 1025. */
  mbind(
    buffer: ArrayBuffer, offset: U64In, length: U64In, mode: number, nodemask: U64In, maxnode: number, flags: number,
  ): void;
  /** get_mempolicy(2) with MPOL_F_ADDR for the page at offset of a live mapping. */
  getMempolicy(buffer: ArrayBuffer, offset: U64In): NativeMemPolicy;
  /** move_pages(0, n, pages, NULL, status, 0): per offset, the node holding the page or a negative errno. */
  pageNodes(buffer: ArrayBuffer, offsets: readonly U64In[]): number[];
  /** mmap(NULL, length, prot, flags, fd, offset) as given (MAP_FIXED refused): 0 if it mapped (unmapped at once), else the errno. */
  mmapProbe(fd: number, offset: U64In, length: U64In, prot: number, flags: number): number;
  createVcpu(vmFd: number, id: number): number;
  getRegs(fd: number, bytes: Uint8Array): void;
  setRegs(fd: number, bytes: Uint8Array): void;
  getSregs(fd: number, bytes: Uint8Array): void;
  setSregs(fd: number, bytes: Uint8Array): void;
  getFpu(fd: number, bytes: Uint8Array): void;
  setFpu(fd: number, bytes: Uint8Array): void;
  uapiLayout(): NativeLayout;
  /** KVM_PRE_FAULT_MEMORY on a vCPU: 0 or the errno; out always gets the remaining [gpa, size]. */
  preFaultMemory(vcpuFd: number, gpa: U64In, size: U64In, flags: U64In, out: BigUint64Array): number;
  /** KVM_SET_MEMORY_ATTRIBUTES on a VM. */
  setMemoryAttributes(vmFd: number, gpa: U64In, size: U64In, attributes: U64In, flags: U64In): void;
  /** KVM_ENABLE_CAP on a VM or vCPU fd, four u64 arguments. */
  enableCap(fd: number, cap: number, flags: number, a0: U64In, a1: U64In, a2: U64In, a3: U64In): void;
  /** The CPUID instruction on the calling thread's CPU: [eax, ebx, ecx, edx]. */
  hostCpuid(leaf: number, subleaf: number): Uint32Array;
  /** KVM_GET_SUPPORTED_CPUID on /dev/kvm: struct kvm_cpuid_entry2 bytes, 40 per entry. */
  getSupportedCpuid(kvmFd: number): Uint8Array;
  /** KVM_GET_CPUID2 on a vCPU: entry bytes (none before KVM_SET_CPUID2). */
  getCpuid2(vcpuFd: number): Uint8Array;
  /** KVM_SET_CPUID2 on a vCPU: a whole number of 40-byte entries, at most 256. */
  setCpuid2(vcpuFd: number, entries: Uint8Array): void;
  /** fstatfs(fd).f_type: the magic number of the file's filesystem. */
  fsMagic(fd: number): number;
  /** socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC). */
  socketPair(): [number, number];
  /** socket + bind + listen: SOCK_SEQPACKET, CLOEXEC, NONBLOCK. */
  unixListen(path: string, backlog: number): number;
  /** socket + connect: SOCK_SEQPACKET, CLOEXEC (EAGAIN when the backlog is full). */
  unixConnect(path: string): number;
  /** accept4(SOCK_CLOEXEC) on a non-blocking listener: the fd, or -1 when none is waiting. */
  unixAccept(fd: number): number;
  /** getsockopt SO_DOMAIN / SO_TYPE / SO_ACCEPTCONN. */
  socketType(fd: number): NativeSocketType;
  /** sendmsg with SCM_RIGHTS; waits for room up to timeoutMs (-1 = no limit): bytes sent, or -1 on timeout. */
  sendMsg(fd: number, bytes: Uint8Array, fds: readonly number[], timeoutMs: number): number;
  /** recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC): undefined when nothing is waiting. */
  recvMsg(fd: number, maxBytes: number, maxFds: number): NativeMessage | undefined;
  VcpuRunner: new (vcpuFd: number, mmapSize: number) => NativeVcpuRunner;
  FdWatch: new (fd: number) => NativeFdWatch;
}

/** The package's root directory (this file is dist/core/native.js). */
const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** What makes a loadable addon: the file $KVM_GMEM_ADDON names, a checkout's own build, or a rebuild of the install. */
const fixCommand = process.env.KVM_GMEM_ADDON
  ? 'unset KVM_GMEM_ADDON, or point it at a built kvm_gmem.node'
  : existsSync(resolve(packageRoot, '.git'))
    ? 'npm run build:native'
    : 'npm rebuild kvm-gmem';

/**
 * The addon file this process loads: $KVM_GMEM_ADDON, else what node-gyp-build picks: a source
 * build in build/Release/ when there is one, else the package's prebuilt binary for this platform
 * (prebuilds/linux-x64/, one Node-API 8 binary for every Node version).
 */
function findAddon(require: NodeJS.Require): string {
  if (process.env.KVM_GMEM_ADDON) return resolve(process.env.KVM_GMEM_ADDON);
  try {
    return (require('node-gyp-build') as { resolve(dir: string): string }).resolve(packageRoot);
  } catch (e) {
    throw addonError(
      `no kvm-gmem native addon for ${process.platform}-${process.arch} in ${packageRoot} ` +
        `(no prebuilt binary, no build). Fix: ${fixCommand}`,
      e,
    );
  }
}

const require = createRequire(import.meta.url);

/** The addon file this process loads. */
export const addonPath: string = findAddon(require);

/** The directory holding the addon; the guest images are beside it (guest/). */
export const addonDir: string = dirname(addonPath);

function load(): NativeAddon {
  const path = addonPath;
  let addon: NativeAddon;
  try {
    addon = require(path) as NativeAddon;
  } catch (e) {
    throw addonError(`cannot load kvm-gmem's native addon ${path}: ${firstLine(e)}. Fix: ${fixCommand}`, e);
  }
  addon.setErrorFactory((errno, syscall, request, detail, description) =>
    errnoError(errno, syscall, detail, request || undefined, undefined, description),
  );
  addon.setStateErrorFactory((code, message) => new KvmStateError(code, message));
  addon.setArgErrorFactory(nativeArgError);
  return addon;
}

/** The loaded addon. */
export const native: NativeAddon = load();

/** The first line of a loader error (dlopen's reason, without require's stack of callers). */
function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
}

