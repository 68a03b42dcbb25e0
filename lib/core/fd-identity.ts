/**
 * What kernel object an fd is: the one check behind `ReceivedFd.kind`, `GuestMemfd.adopt()`, the
 * leak safety net and the selftests. It does not trust /proc link text alone: since Linux 7.2 a
 * guest_memfd lives on a filesystem of its own and its link reads `/[kvm-gmem] (deleted)`, text
 * that any deleted file named `/[kvm-gmem]` shows too. The filesystem's magic number (fstatfs)
 * decides: guest_memfd's own filesystem, or the anon-inode filesystem, where the kernel alone
 * names files (`anon_inode:[kvm-gmem]` before 7.2, `anon_inode:kvm-vm`, `anon_inode:kvm-vcpu:N`).
 * @module
 */
import { readlinkSync } from 'node:fs';
import { native } from './native.js';

/** What kind of kernel object an fd is. */
export type FdKind = 'guest_memfd' | 'vm' | 'vcpu' | 'kvm' | 'other';

/** statfs f_type of the anon-inode filesystem (include/uapi/linux/magic.h ANON_INODE_FS_MAGIC). */
export const ANON_INODE_FS_MAGIC = 0x09041934;
/** statfs f_type of guest_memfd's own filesystem, Linux 7.2 on (GUEST_MEMFD_MAGIC). */
export const GUEST_MEMFD_MAGIC = 0x474d454d;

const S_IFMT = 0o170000;
const S_IFCHR = 0o020000;

/** An fd's identity as the kernel shows it. */
export interface FdFacts {
  /** The kind decided from `link` and `fsMagic`. */
  kind: FdKind;
  /** readlink(/proc/self/fd/N), '' if unreadable. */
  link: string;
  /** fstatfs f_type. */
  fsMagic: number;
}

/** The kind that a /proc link and a filesystem magic number describe (see the module comment). */
export function classifyFd(link: string, fsMagic: number, isCharDevice = false): FdKind {
  if (fsMagic === GUEST_MEMFD_MAGIC) return 'guest_memfd';
  if (fsMagic === ANON_INODE_FS_MAGIC) {
    if (link === 'anon_inode:[kvm-gmem]') return 'guest_memfd';
    if (link === 'anon_inode:kvm-vm') return 'vm';
    if (/^anon_inode:kvm-vcpu:\d+$/.test(link)) return 'vcpu';
    return 'other';
  }
  return isCharDevice && link === '/dev/kvm' ? 'kvm' : 'other';
}

/**
 * Identifies an open fd (readlink of /proc/self/fd/N, fstatfs, fstat).
 * @throws KvmError (syscall 'fstatfs') EBADF for a closed fd
 */
export function fdFacts(fd: number): FdFacts {
  const fsMagic = native.fsMagic(fd);
  let link = '';
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // No /proc: only guest_memfd's own filesystem can still be recognised.
  }
  const isChar = (native.fstat(fd).mode & S_IFMT) === S_IFCHR;
  return { kind: classifyFd(link, fsMagic, isChar), link, fsMagic };
}

/**
 * What kernel object `fd` is: 'guest_memfd', 'vm', 'vcpu', 'kvm' (/dev/kvm) or 'other'.
 * @throws KvmError EBADF for a closed fd
 */
export function fdKind(fd: number): FdKind {
  return fdFacts(fd).kind;
}
