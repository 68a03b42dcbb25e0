/**
 * What the lifecycle cases share: the memory layout, the design-thread messages they cite, the
 * slot helpers, the unbacked-address probe and the launcher of the second-process script.
 *
 * Every data slot is bound with the guest_memfd's own mapping as userspace_addr
 * (GUEST_MEMFD_FLAG_MMAP|INIT_SHARED): on a shadow-paging host that is the only binding the guest
 * can reach (a guest_memfd-only slot exits as MMIO there), and on a TDP host it is the usual one.
 * Slot 0 of selftestGuest() is anonymous code memory; data slots sit at 256, 512 and 768 MiB,
 * inside the guest's 1 GiB identity map.
 * @module
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GuestMemfdFlag, MemoryAttribute, VmType } from '../../core/constants.js';
import type { MmioExit, VcpuExit } from '../../kvm/exits.js';
import type { GuestMemfd } from '../../kvm/guest-memfd.js';
import type { Vm } from '../../kvm/vm.js';
import type { Mapping } from '../../memory/mapping.js';
import { GuestAssertionError } from '../../guest/ucall.js';
import type { ChildRequest } from '../child.js';
import { MiB, selftestGuest, type Memtest, type SelftestGuest } from '../guest.js';
import { check, checkEq, SelftestFailure, type CaseContext, type SelftestCase } from '../harness.js';
import type { HostFacts } from '../host.js';

/** A lifecycle case as its file defines it; index.ts adds the group and the host's skip reason. */
export type LifecycleCase = Omit<SelftestCase, 'group' | 'skipReason'>;

/** The guest_memfd flags every case uses: mappable, and shared with the host from the start. */
export const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
/** Guest-physical addresses of data slots: inside the identity map, clear of slot 0. */
export const GPA_A = 256 * MiB;
export const GPA_B = 512 * MiB;
export const GPA_C = 768 * MiB;
/**
 * The unit of guest_memfd sizes and ranges here (256 KiB). Small on purpose: the guest checks and
 * fills every page of every range it is given, and what is checked does not depend on the size.
 */
export const U = 256 * 1024;
const KiB = 1024;

/** The design-thread messages the cases pin down (each case's `source`), on lore.kernel.org. */
export const THREAD = {
  /** Sean Christopherson, 8 Aug 2023: a guest_memfd pins its VM; memslots are like page tables. */
  gmemPinsVm: 'https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com',
  /** Ackerley Tng, 13 Jul 2023: files that outlive their VM (VMM upgrade); PUNCH_HOLE drops memory. */
  gmemOutlivesVm: 'https://lore.kernel.org/r/diqzr0pb2zws.fsf@ackerleytng-ctop.c.googlers.com',
  /** Sean Christopherson, 20 Jun 2024: any host mapping of guest_memfd for ordinary VMs. */
  hostMappings: 'https://lore.kernel.org/r/ZnTBGCeSN1u6wzLb@google.com',
  /** Jann Horn, 2 Jul 2021: /dev/kvm as page tables mirrored from one mm. */
  vmOfOneMm: 'https://lore.kernel.org/r/CAG48ez2vLKGTBOmc-5AJQE=j4Uy=HprSJVmJnOR-4Exb5rbMdA@mail.gmail.com',
  /** Ackerley Tng, 7 Aug 2023, quoting kvm_gmem_release() and kvm_gmem_bind(). */
  gmemReleaseAndBind: 'https://lore.kernel.org/r/diqzv8dq3116.fsf@ackerleytng-ctop.c.googlers.com',
} as const;

/**
 * Why the private-memory cases cannot run here, naming the missing capability; undefined when
 * they can (or when the host has no usable KVM at all, which the harness reports itself). They
 * need a SW_PROTECTED VM (x86) whose KVM_CAP_MEMORY_ATTRIBUTES, asked on such a VM, has PRIVATE
 * (/dev/kvm reports PRIVATE whatever the type) and which accepts guest_memfd memslots; with
 * `needMmap`, also GUEST_MEMFD_FLAG_MMAP there.
 */
export function privateMemoryMissing(host: HostFacts, needMmap: boolean): string | undefined {
  if (!host.available) return undefined;
  if (process.arch !== 'x64') return `KVM_X86_SW_PROTECTED_VM is an x86 VM type; this is ${process.arch}`;
  const t = host.vmTypes.find((v) => v.type === VmType.SW_PROTECTED);
  if (t === undefined) {
    return `KVM_CAP_VM_TYPES ${hex(host.vmTypesCap)} lacks KVM_X86_SW_PROTECTED_VM (bit 1): these cases need a VM type with private memory (CONFIG_KVM_SW_PROTECTED_VM and the TDP MMU)`;
  }
  if (t.createError !== undefined) return `no SW_PROTECTED VM can be created: ${t.createError}`;
  if ((t.memoryAttributes & MemoryAttribute.PRIVATE) === 0n) {
    return `KVM_CAP_MEMORY_ATTRIBUTES on a SW_PROTECTED VM is ${hex(t.memoryAttributes)}, without KVM_MEMORY_ATTRIBUTE_PRIVATE (0x8)`;
  }
  if (!t.gmemMemslots) return 'KVM_CAP_GUEST_MEMFD is 0 on a SW_PROTECTED VM: it accepts no guest_memfd memslots';
  if (needMmap && (t.gmemFlags & GuestMemfdFlag.MMAP) === 0n) {
    return `KVM_CAP_GUEST_MEMFD_FLAGS on a SW_PROTECTED VM is ${hex(t.gmemFlags)}, without GUEST_MEMFD_FLAG_MMAP (0x1): this case maps (or binds alone) a mappable guest_memfd`;
  }
  return undefined;
}

/** Where debugfs shows KVM's per-VM directories (mounted by root; absent on many hosts). */
export const KVM_DEBUGFS = '/sys/kernel/debug/kvm';

/**
 * The VM's own debugfs directory, `<pid>-<vm fd>` under {@link KVM_DEBUGFS}, if it exists now
 * (call it while the VM fd is open). KVM removes it when it destroys the VM, i.e. when the last
 * reference to the VM goes (kvm_destroy_vm), not when the VM fd is closed.
 */
export function vmDebugfsDir(vm: Vm): string | undefined {
  const dir = join(KVM_DEBUGFS, `${process.pid}-${vm.fd}`);
  return existsSync(dir) ? dir : undefined;
}

/** A field of /proc/meminfo in bytes (its kB values times 1024), or undefined if it is not there. */
export function meminfo(field: string): number | undefined {
  const line = readFileSync('/proc/meminfo', 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
  const kb = line === undefined ? NaN : Number(/(\d+)\s*kB/.exec(line)?.[1]);
  return Number.isSafeInteger(kb) ? kb * 1024 : undefined;
}

/** `0x...` for messages. */
export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

/** [start, end) in KiB, for messages. */
export function range(offset: number, length: number): string {
  return `[${offset / KiB} KiB, ${(offset + length) / KiB} KiB)`;
}

/** A guest_memfd of the shared kind, closed with the case. */
export function sharedGmem(ctx: CaseContext, vm: Vm, size: number): GuestMemfd {
  return ctx.use(vm.createGuestMemfd({ size, flags: SHARED }));
}

/** A selftest guest and a shared guest_memfd of `size` bytes in its VM, all closed with the case. */
export function guestWithGmem(ctx: CaseContext, size: number): { guest: SelftestGuest; vm: Vm; gmem: GuestMemfd } {
  const guest = selftestGuest(ctx);
  return { guest, vm: guest.vm, gmem: sharedGmem(ctx, guest.vm, size) };
}

/**
 * Binds [offset, offset + length) of `gmem` at `gpa` with a mapping of that same range as
 * userspace_addr; returns the mapping (closed with the case).
 */
export function bindRange(
  ctx: CaseContext, vm: Vm, slot: number, gpa: number, gmem: GuestMemfd, offset: number, length: number,
): Mapping {
  const m = ctx.use(gmem.map(offset, length));
  vm.setUserMemoryRegion2({
    slot, guestPhysAddr: gpa, memorySize: length, userspaceAddr: m, guestMemfd: gmem, guestMemfdOffset: offset,
  });
  return m;
}

/**
 * Runs one memtest job on a guest-physical range that no memslot backs: the guest's first access
 * must be an MMIO read exit at exactly `gpa` (and every exit must stay inside the 8 bytes probed).
 * Reads are answered with the byte the job expects, so the guest goes on to its next SYNC.
 */
export async function checkUnbacked(ctx: CaseContext, mt: Memtest, gpa: number, what: string): Promise<void> {
  const probe = 0xee;
  const exits: { address: bigint; isWrite: boolean; length: number }[] = [];
  try {
    await mt.run({ start: gpa, length: 8, expect: probe, fill: probe }, {
      onMmio(e: MmioExit) {
        exits.push({ address: e.address, isWrite: e.isWrite, length: e.length });
        if (e.address < BigInt(gpa) || e.address + BigInt(e.length) > BigInt(gpa + 8)) {
          throw new SelftestFailure(`${what}: MMIO exit at ${hex(e.address)} (${e.length} bytes), outside the 8 bytes probed at ${hex(gpa)}`);
        }
        if (!e.isWrite) e.data.fill(probe);
      },
    });
  } catch (e) {
    if (e instanceof GuestAssertionError) {
      const [addr, value] = e.ucall.args;
      throw new SelftestFailure(
        `${what}: the guest read ${hex(value ?? 0n)} at ${hex(addr ?? 0n)} from memory; no memslot should back ${hex(gpa)}`,
      );
    }
    throw e;
  }
  const first = exits[0];
  check(first !== undefined, `${what}: the guest accessed ${hex(gpa)} without an MMIO exit; no memslot should back it`);
  checkEq(first.address, BigInt(gpa), `${what}: address of the first MMIO exit`);
  checkEq(first.isWrite, false, `${what}: the first MMIO exit is the guest's read`);
  ctx.log(`${what}: unbacked as expected (${exits.filter((x) => !x.isWrite).length} MMIO read and ${exits.filter((x) => x.isWrite).length} MMIO write exits at ${hex(gpa)})`);
}

/** One-line description of an exit for the log. */
export function describeExit(exit: VcpuExit): string {
  switch (exit.reason) {
    case 'mmio':
      return `KVM_EXIT_MMIO ${exit.isWrite ? 'write' : 'read'} at ${hex(exit.address)} (${exit.length} bytes)`;
    case 'memory_fault':
      return `KVM_EXIT_MEMORY_FAULT gpa ${hex(exit.gpa)} size ${hex(exit.size)} flags ${hex(exit.flags)}`;
    case 'io':
      return `KVM_EXIT_IO ${exit.direction} port ${hex(exit.port)}`;
    default:
      return `exit ${exit.reason} (exit_reason ${exit.exitReason})`;
  }
}

// ---- the second process ------------------------------------------------------------------------

/** The compiled child script: dist/selftest/child.js, one level up from this module in dist/, or found from lib/. */
function childScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, '..', 'child.js'), resolve(here, '..', '..', '..', 'dist', 'selftest', 'child.js')];
  const found = candidates.find((p) => existsSync(p));
  if (found === undefined) {
    throw new Error(`the selftest child script is not built (looked for ${candidates.join(', ')}); run \`npx tsc -p tsconfig.json\``);
  }
  return found;
}

/** What the child printed and how it ended. */
export interface ChildRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs child.js with `gmemFd` as its fd 3 and `vmFd` as its fd 4. Killed after `timeoutMs`, and
 * when the case ends if it is still running.
 */
export function runChild(ctx: CaseContext, gmemFd: number, vmFd: number, req: ChildRequest, timeoutMs: number): Promise<ChildRun> {
  const script = childScript();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [script, JSON.stringify(req)], {
      stdio: ['ignore', 'pipe', 'pipe', gmemFd, vmFd],
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
    });
    ctx.defer(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolvePromise({
      code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'),
    }));
  });
}
