/**
 * Loads the C++ addon and describes its functions. Internal: users go through the classes.
 *
 * The addon is build/Release/kvm_gmem.node (node-gyp, the default build), or the file named by
 * the KVM_GMEM_ADDON environment variable (used to test the cmake-js build of the same sources).
 * @module
 * @internal
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';
import { KvmError } from './errors.js';

/** u64 as the addon accepts it: a non-negative safe integer or a bigint. */
export type U64In = number | bigint;

/** What mapShared/mapAnonymous return. */
export interface NativeMapping {
  buffer: ArrayBuffer;
  address: bigint;
}

/** fstat() as the addon returns it. */
export interface NativeStat {
  size: bigint;
  blksize: number;
  blocks: bigint;
  ino: bigint;
  dev: bigint;
  mode: number;
  nlink: number;
}

/** The addon's exports (native/*.cc). Each is one system call, no policy. */
export interface NativeAddon {
  setErrorFactory(
    f: (errno: number, syscall: string, request: string | undefined, detail: string, description: string) => Error,
  ): void;
  open(path: string): number;
  close(fd: number): void;
  setCloexec(fd: number): void;
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
  mapShared(fd: number, offset: U64In, length: U64In): NativeMapping;
  mapAnonymous(length: U64In): NativeMapping;
  unmap(buffer: ArrayBuffer): void;
  mincore(buffer: ArrayBuffer): Uint8Array;
}

function load(): NativeAddon {
  const require = createRequire(import.meta.url);
  const here = dirname(fileURLToPath(import.meta.url));
  const path = process.env.KVM_GMEM_ADDON
    ? resolve(process.env.KVM_GMEM_ADDON)
    : resolve(here, '..', 'build', 'Release', 'kvm_gmem.node');
  let addon: NativeAddon;
  try {
    addon = require(path) as NativeAddon;
  } catch (e) {
    const err = new Error(
      `kvm-gmem: cannot load the native addon at ${path}: ${(e as Error).message}. ` +
        'Build it with `npm install` (node-gyp) or `npm run build:cmake`.',
    );
    (err as Error & { cause: unknown }).cause = e;
    throw err;
  }
  addon.setErrorFactory(
    (errno, syscall, request, detail, description) =>
      new KvmError({ errno, syscall, detail, description, ...(request ? { request } : {}) }),
  );
  return addon;
}

/** The loaded addon. */
export const native: NativeAddon = load();
