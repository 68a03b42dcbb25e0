/**
 * How the tests meet the host: on a machine without a usable /dev/kvm each KVM test is skipped
 * with the reason, unless KVM_GMEM_REQUIRE_KVM=1 (CI), where that is a failure instead.
 */
import { accessSync, constants, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { release } from 'node:os';
import { expect, type TestContext } from 'vitest';
import { Cap, Kvm, KVM_DEVICE, KvmError, type Vm } from '../lib/index.js';

/**
 * How much longer than on real hardware a run may take before it counts as hung: 1, or what
 * KVM_GMEM_HANG_SCALE says (`kvm-gmem exec` sets 5 under QEMU's CPU emulation, where everything
 * runs about ten times slower). It stretches hang bounds only, never a measured quantity.
 */
export const HANG_SCALE = Math.max(1, Number(process.env.KVM_GMEM_HANG_SCALE ?? 1) || 1);

/** A hang bound of `ms` milliseconds on real hardware, stretched by {@link HANG_SCALE}. */
export function hangBound(ms: number): number {
  return ms * HANG_SCALE;
}

/** True when KVM_GMEM_REQUIRE_KVM=1: a missing device or capability fails instead of skipping. */
export const REQUIRE_KVM = process.env.KVM_GMEM_REQUIRE_KVM === '1';

/**
 * True in CI (CI set, and not '', '0' or 'false') or under KVM_GMEM_REQUIRE_KVM=1: a tool a test
 * needs (python3, a C compiler) missing there is a failure, never a skip.
 */
export const REQUIRE_TOOLS = REQUIRE_KVM || !['', '0', 'false'].includes((process.env.CI ?? '').toLowerCase());

function unavailable(): string | undefined {
  try {
    accessSync(KVM_DEVICE, constants.R_OK | constants.W_OK);
    return undefined;
  } catch (e) {
    return `${KVM_DEVICE} is not usable here (${(e as NodeJS.ErrnoException).code}): no KVM on this host`;
  }
}

const missing = unavailable();

/** Skips (or, with KVM_GMEM_REQUIRE_KVM=1, fails) the test when `reason` is set. */
export function skipOrFail(ctx: TestContext, reason: string | undefined): void {
  if (reason === undefined) return;
  if (REQUIRE_KVM) throw new Error(`KVM_GMEM_REQUIRE_KVM=1 but ${reason}`);
  ctx.skip(reason);
}

/** Opens /dev/kvm for a test, or skips/fails it with the reason. */
export function openKvm(ctx: TestContext): Kvm {
  skipOrFail(ctx, missing);
  return Kvm.open();
}

/** Requires a capability of the host (asked on `on`), or skips/fails with the reason. */
export function needCap(ctx: TestContext, on: { checkExtension(cap: number): number }, cap: number, name: string): number {
  const v = on.checkExtension(cap);
  skipOrFail(ctx, v === 0 ? `the host does not offer KVM_CAP_${name}` : undefined);
  return v;
}

/** A default VM whose guest_memfds accept `flags`, or a skip (a failure with KVM_GMEM_REQUIRE_KVM=1). */
export function gmemVm(ctx: TestContext, flags: bigint): Vm {
  using kvm = openKvm(ctx);
  needCap(ctx, kvm, Cap.GUEST_MEMFD, 'GUEST_MEMFD');
  const vm = kvm.createVm();
  if ((BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS)) & flags) !== flags) {
    vm.close();
    needCap(ctx, { checkExtension: () => 0 }, Cap.GUEST_MEMFD_FLAGS, `GUEST_MEMFD_FLAGS with 0x${flags.toString(16)}`);
  }
  return vm;
}

/** Whether fd is close-on-exec, read from /proc/self/fdinfo (flags are octal; O_CLOEXEC = 02000000). */
export function isCloexec(fd: number): boolean {
  const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`no flags line in /proc/self/fdinfo/${fd}`);
  return (parseInt(m[1]!, 8) & 0o2000000) !== 0;
}

/** What /proc/self/fd/N names. */
export function fdLink(fd: number): string {
  return readlinkSync(`/proc/self/fd/${fd}`);
}

/** The open fds of this process with their links. */
export function openFds(): Map<number, string> {
  const fds = new Map<number, string>();
  for (const n of readdirSync('/proc/self/fd')) {
    try {
      fds.set(Number(n), readlinkSync(`/proc/self/fd/${n}`));
    } catch {
      // the fd of the readdir itself is gone by now
    }
  }
  return fds;
}

/** The number of open fds whose link contains `needle`. */
export function countFds(needle: string): number {
  let n = 0;
  for (const link of openFds().values()) if (link.includes(needle)) n++;
  return n;
}

/**
 * Makes objects with `make` until one gets fd number `n` (the kernel hands out the lowest free
 * number, so within a bounded number of tries once `n` is free); closes the others.
 */
export function onNumber<T extends { fd: number; close(): void }>(n: number, make: () => T): T {
  const extra: T[] = [];
  try {
    for (let i = 0; i < 256; i++) {
      const o = make();
      if (o.fd === n) return o;
      extra.push(o);
    }
    throw new Error(`fd ${n} was not handed out again in 256 tries`);
  } finally {
    for (const o of extra) o.close();
  }
}

/** One mapping (VMA) of this process, as /proc/self/smaps shows it. */
export interface Vma {
  start: bigint;
  end: bigint;
  /** Bytes of it mapped in this process's page tables. */
  rss: number;
  /** Its VmFlags: 'rr' (MADV_RANDOM), 'sr' (SEQUENTIAL), 'hg'/'nh' (HUGEPAGE/NOHUGEPAGE), 'dc' (DONTFORK)... */
  flags: string[];
}

/** The VMAs of this process that overlap [address, address + length), in order. */
export function vmasOf(address: bigint, length: number): Vma[] {
  const end = address + BigInt(length);
  const vmas: Vma[] = [];
  for (const block of readFileSync('/proc/self/smaps', 'utf8').split(/^(?=[0-9a-f]+-[0-9a-f]+ )/m)) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(block);
    if (!range) continue;
    const v = { start: BigInt(`0x${range[1]}`), end: BigInt(`0x${range[2]}`) };
    if (v.end <= address || v.start >= end) continue;
    const rss = /^Rss:\s+(\d+) kB$/m.exec(block);
    const flags = /^VmFlags:(.*)$/m.exec(block);
    if (!rss || !flags) throw new Error(`no Rss or VmFlags in /proc/self/smaps for ${range[0]}`);
    vmas.push({ ...v, rss: Number(rss[1]) * 1024, flags: flags[1]!.trim().split(/\s+/) });
  }
  return vmas;
}

/** Runs f and returns what it threw (fails if it did not throw). */
export function thrown(f: () => unknown): Error & { code?: string; errno?: number; syscall?: string; request?: string } {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected the call to throw');
}

/**
 * Runs f and expects a KvmError with `code`, from `syscall` and for ioctl `request` where those
 * are given; returns it.
 */
export function expectKvmError(f: () => unknown, code: string, where: { syscall?: string; request?: string } = {}): KvmError {
  const e = thrown(f);
  expect(e, e.message).toBeInstanceOf(KvmError);
  expect(e.code).toBe(code);
  if (where.syscall !== undefined) expect(e.syscall).toBe(where.syscall);
  if (where.request !== undefined) expect(e.request).toBe(where.request);
  if (!(e instanceof KvmError)) throw e;
  return e;
}

/**
 * Whether the running kernel is Linux `major`.`minor` or newer, from uname's release (a
 * distribution kernel with a change backported reads as older).
 */
export function kernelAtLeast(major: number, minor: number, rel: string = release()): boolean {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}

/**
 * The errno KVM_SET_USER_MEMORY_REGION2 gives for a guest_memfd range that another memslot
 * already binds: kvm_gmem_bind() said EINVAL until Linux 7.2 made it EEXIST (the same answer as
 * for overlapping guest-physical ranges), and upstream's set_memory_region_test follows it.
 */
export function fileOverlapErrno(rel: string = release()): 'EEXIST' | 'EINVAL' {
  return kernelAtLeast(7, 2, rel) ? 'EEXIST' : 'EINVAL';
}

