/**
 * The lifecycle group: what happens to guest_memfd memory, its memslots and its VM as each of
 * them is closed, deleted, re-bound, punched or handed to another process. These cases mirror no
 * upstream selftest; each pins down a behaviour argued in the kernel threads under
 * ../shared/seeds/ (named in its `source`), as this library's users rely on it.
 *
 * Every data slot here is bound with the guest_memfd's own mapping as userspace_addr
 * (GUEST_MEMFD_FLAG_MMAP|INIT_SHARED): on a shadow-paging host that is the only binding the guest
 * can reach (a guest_memfd-only slot exits as MMIO there), and on a TDP host it is the usual one.
 * Slot 0 of selftestGuest() is anonymous code memory; data slots sit at 256, 512 and 768 MiB,
 * inside the guest's 1 GiB identity map.
 * @module
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GuestMemfdFlag, MemslotFlag, VmType } from '../core/constants.js';
import { KvmError } from '../core/errors.js';
import type { MmioExit, VcpuExit } from '../kvm/exits.js';
import type { GuestMemfd } from '../kvm/guest-memfd.js';
import { Mapping } from '../memory/mapping.js';
import { GuestAssertionError, getUcall } from '../guest/ucall.js';
import type { Vm } from '../kvm/vm.js';
import type { ChildReport, ChildRequest } from './child.js';
import { Memtest, MiB, selftestGuest } from './guest.js';
import {
  check, checkBytes, checkEq, checkErrno, SelftestFailure, type CaseContext, type SelftestCase,
} from './harness.js';
import type { HostFacts } from './host.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
/** Guest-physical addresses of data slots: inside the identity map, clear of slot 0. */
const GPA_A = 256 * MiB;
const GPA_B = 512 * MiB;
const GPA_C = 768 * MiB;
/**
 * The unit of guest_memfd sizes and ranges here (256 KiB). Small on purpose: the guest checks and
 * fills every page of every range it is given, and a page costs about half a millisecond per pass
 * on a shadow-paging host; what is checked does not depend on the size.
 */
const U = 256 * 1024;
const KiB = 1024;
const SEED_000 = 'seeds/000_154f0c5bf4512e84.txt';
const SEED_001 = 'seeds/001_d6c6356274d7e365.txt';
const SEED_002 = 'seeds/002_283f12e45e5504f2.txt';
const SEED_003 = 'seeds/003_6d70497a81b4efe3.txt';
const SEED_004 = 'seeds/004_39a3e58fd277e0fd.txt';

/** The lifecycle cases, given what the host offers. */
export function lifecycleCases(host: HostFacts): SelftestCase[] {
  const skipReason = sharedGmemMissing(host);
  const cases: Omit<SelftestCase, 'group' | 'skipReason'>[] = [
    {
      name: 'lifecycle.guest_memfd_keeps_vm_alive',
      source: `${SEED_000}, ${SEED_004}`,
      summary: 'with the VM fd, its vCPU and every mapping closed, the guest_memfd still allocates, punches, maps and keeps its data, and no new VM can bind it',
      run: guestMemfdKeepsVmAlive,
    },
    {
      name: 'lifecycle.close_guest_memfd_while_bound',
      source: `${SEED_004}, ${SEED_000}, ${SEED_001}`,
      summary: 'closing a bound guest_memfd (fd and mapping) cuts the guest off from it; the memslot stays, other slots work, and the address can be re-bound to a fresh guest_memfd',
      run: closeGuestMemfdWhileBound,
    },
    {
      name: 'lifecycle.guest_memfd_bound_to_one_vm',
      source: `${SEED_000}, ${SEED_004}, ${SEED_001}, ${SEED_003}`,
      summary: 'a guest_memfd binds to no VM but its own (EINVAL), even unbound and in another process, which can still map it; the VM fd is EIO there',
      run: guestMemfdBoundToOneVm,
    },
    {
      name: 'lifecycle.delete_memslot_keeps_data',
      source: SEED_000,
      summary: 'deleting a guest_memfd memslot leaves the data: the same file range bound at another address shows the guest what it wrote',
      run: deleteMemslotKeepsData,
    },
    {
      name: 'lifecycle.overlapping_guest_memfd_ranges',
      source: SEED_004,
      summary: 'no two memslots bind overlapping ranges of one guest_memfd (EINVAL before Linux 7.2, EEXIST since, for every overlap shape); disjoint ranges bind and stay distinct',
      run: overlappingGuestMemfdRanges,
    },
    {
      name: 'lifecycle.guest_memfd_memslot_immutable',
      source: `${SEED_004}, ${SEED_000}`,
      summary: 'a guest_memfd memslot cannot be moved or have its flags changed (EINVAL); delete and re-add at the new address works and keeps the data',
      run: guestMemfdMemslotImmutable,
    },
    {
      name: 'lifecycle.punch_allocate_while_mapped_and_bound',
      source: `${SEED_001}, ${SEED_002}, ${SEED_000}`,
      summary: 'punch and allocate under a host mapping and a bound guest: host view, guest view and fstat agree',
      run: punchAllocateWhileMappedAndBound,
    },
  ];
  return cases.map((c) => ({ ...c, group: 'lifecycle', ...(skipReason !== undefined ? { skipReason } : {}) }));
}

/**
 * Why these cases cannot run here: each maps guest_memfd memory into the host and runs a
 * default-type guest on it. undefined when they can (or when the host has no usable KVM at all,
 * which the harness reports itself).
 */
function sharedGmemMissing(host: HostFacts): string | undefined {
  if (!host.available) return undefined;
  const t = host.vmTypes.find((v) => v.type === VmType.DEFAULT);
  if (t === undefined) return 'the host reports no default VM type (KVM_CAP_VM_TYPES)';
  if (t.createError !== undefined) return `no default VM can be created: ${t.createError}`;
  if (!t.gmemMemslots) {
    return 'the default VM type does not accept KVM_MEM_GUEST_MEMFD memslots (KVM_CAP_GUEST_MEMFD = 0 on the VM; before Linux 6.18 only VM types with private memory did)';
  }
  if ((t.gmemFlags & SHARED) !== SHARED) {
    return `the default VM type does not offer GUEST_MEMFD_FLAG_MMAP|INIT_SHARED (KVM_CAP_GUEST_MEMFD_FLAGS = 0x${t.gmemFlags.toString(16)}): these cases map guest_memfd memory and run guests on it`;
  }
  return undefined;
}

// ---- helpers ---------------------------------------------------------------------------------

function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

/** [start, end) in KiB, for messages. */
function range(offset: number, length: number): string {
  return `[${offset / KiB} KiB, ${(offset + length) / KiB} KiB)`;
}

/** A guest_memfd of the shared kind, closed with the case. */
function sharedGmem(ctx: CaseContext, vm: Vm, size: number): GuestMemfd {
  return ctx.use(vm.createGuestMemfd({ size, flags: SHARED }));
}

/**
 * Binds [offset, offset + length) of `gmem` at `gpa` with a mapping of that same range as
 * userspace_addr; returns the mapping (closed with the case).
 */
function bindRange(
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
async function checkUnbacked(ctx: CaseContext, mt: Memtest, gpa: number, what: string): Promise<void> {
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
function describeExit(exit: VcpuExit): string {
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

// ---- 1 ---------------------------------------------------------------------------------------

// seeds/000: Sean Christopherson answers Ackerley Tng's objection that a guest_memfd becomes a
// "false handle" keeping the VM alive after its fd is closed: that is intended, as for a vCPU's
// stats fd; anything created in a VM's scope pins the VM. seeds/004 shows the mechanism
// (kvm_gmem_release() ends with kvm_put_kvm()) and, in the same code, that the memory's lifetime is
// the inode's. So with every other reference to the VM gone, the file must stay fully usable, with
// its data, and still belong to that VM: no other VM can take it over (the check in seeds/004's
// kvm_gmem_bind(), option (a) of the three remedies Sean lists in seeds/000).
async function guestMemfdKeepsVmAlive(ctx: CaseContext): Promise<void> {
  const size = 4 * U;
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmem = sharedGmem(ctx, vm, size);
  // The guest writes the first two units, the host the third; the fourth is left untouched.
  const slotMap = bindRange(ctx, vm, 1, GPA_A, gmem, 0, 2 * U);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: 2 * U, expect: 0, fill: 0xc3 });
  await mt.run();
  await mt.finish();
  const hostMap = ctx.use(gmem.map());
  checkBytes(hostMap.bytes.subarray(0, 2 * U), 0xc3, 'host view of the guest-written range');
  hostMap.bytes.fill(0x3c, 2 * U, 3 * U);

  // Drop every reference to the VM except the guest_memfd: the vCPU, the mappings, the VM fd.
  // The memslot is left bound: it goes with the VM, whenever the VM goes.
  mt.vcpu.close();
  slotMap.close();
  hostMap.close();
  vm.close();
  ctx.log('closed the vCPU, both mappings and the VM fd; the memslot was left bound; only the guest_memfd fd refers to the VM now');

  gmem.allocate(3 * U, U); // the untouched unit: a fresh allocation
  gmem.allocate(0, size); // all of it: already-backed pages stay as they are
  gmem.punchHole(U, ctx.pageSize); // a guest-written page
  gmem.punchHole(2 * U + 64 * 1024, ctx.pageSize); // a host-written page
  const st = gmem.stat();
  checkEq(st.size, BigInt(size), 'st_size after the VM fd was closed');
  ctx.log(`after allocate and punch: st_size ${st.size}, st_blocks ${st.blocks}`);

  const m = ctx.use(gmem.map());
  const b = m.bytes;
  checkBytes(b.subarray(0, U), 0xc3, 'guest-written data before the punched page');
  checkBytes(b.subarray(U, U + ctx.pageSize), 0, 'the punched guest-written page', U);
  checkBytes(b.subarray(U + ctx.pageSize, 2 * U), 0xc3, 'guest-written data after the punched page', U + ctx.pageSize);
  checkBytes(b.subarray(2 * U, 2 * U + 64 * 1024), 0x3c, 'host-written data before the punched page', 2 * U);
  checkBytes(b.subarray(2 * U + 64 * 1024, 2 * U + 64 * 1024 + ctx.pageSize), 0, 'the punched host-written page', 2 * U + 64 * 1024);
  checkBytes(b.subarray(2 * U + 64 * 1024 + ctx.pageSize, 3 * U), 0x3c, 'host-written data after the punched page', 2 * U + 64 * 1024 + ctx.pageSize);
  checkBytes(b.subarray(3 * U), 0, 'the range allocated after the VM fd was closed', 3 * U);
  // The memory is writable and reads back: it is live memory, not a shell of the VM's.
  b.fill(0x77, 3 * U);
  checkBytes(b.subarray(3 * U), 0x77, 'host write after the VM fd was closed', 3 * U);
  ctx.log(`mapped again after the close: ${m.residentPages()} of ${size / ctx.pageSize} pages resident`);

  // The file still belongs to the VM it pins: a new VM cannot bind it.
  const other = ctx.use(ctx.kvm.createVm());
  checkErrno(
    () => other.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem }),
    'EINVAL', 'binding the guest_memfd of a closed VM into a new VM',
  );
}

// ---- 2 ---------------------------------------------------------------------------------------

// seeds/004 (Sean's kvm_gmem_release(), quoted by Ackerley Tng): when the last reference to the
// file goes, KVM clears the file pointer of every memslot bound to it and zaps the mappings
// (SPTEs) derived from it, but neither deletes the memslots nor frees the memory. seeds/000: Sean
// compares it to munmap() under a memslot, where the guest also loses the memory, and finds it
// unproblematic for userspace. seeds/001: Ackerley argued the other way (memslots should hold the
// file, so that closing it does not cut the guest off); that design was not taken.
//
// "Closing the guest_memfd" here means closing its fd AND the Mapping used as userspace_addr:
// a mapping holds its own reference to the file, so close(fd) alone does not release it (the case
// checks that first), and Mapping.close() swaps the range for private anonymous memory, which drops
// the last reference.
//
// What the guest gets then depends on how the host maps guest memory. With TDP, a memslot of an
// MMAP guest_memfd is served from the file, whose pointer is now NULL: KVM_RUN fails with EFAULT
// and KVM_EXIT_MEMORY_FAULT (or, on some paths, the access exits as MMIO). With shadow paging (this host's
// kvm_pvm), KVM resolves guest accesses through userspace_addr, which now holds the anonymous
// placeholder: the guest reads zeros there. Each of these is accepted (and logged); the guest
// reading the old data anywhere in the range, or anything other than zeros, fails.
async function closeGuestMemfdWhileBound(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const old = 0xaa;
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmemA = sharedGmem(ctx, vm, size);
  const mapA = bindRange(ctx, vm, 1, GPA_A, gmemA, 0, size);
  const gmemB = sharedGmem(ctx, vm, size);
  const mapB = bindRange(ctx, vm, 2, GPA_B, gmemB, 0, size);
  mapB.bytes.fill(0x0b);

  // The guest writes every page of slot A (so the host MMU maps all of them) and reads B.
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: old });
  await mt.run();
  await mt.run({ start: GPA_B, length: size, expect: 0x0b, fill: 0x1b });
  checkBytes(mapA.bytes, old, 'host view of slot A before the close');

  // close(fd) alone: the Mapping still holds the file, so nothing is released yet.
  gmemA.close();
  await mt.run({ start: GPA_A, length: size, expect: old, fill: old });
  ctx.log('after close(fd) alone the mapping used as userspace_addr still holds the file: the guest still reads the data');

  // Now the mapping: the file's last reference goes and KVM invalidates the binding.
  mapA.close();
  ctx.log('closed the guest_memfd: its fd, then the Mapping used as userspace_addr (Mapping.close() leaves private anonymous memory at that address)');

  // The guest's view of slot A, from a fresh vCPU (one that may be left stuck on a fault).
  const probe = guest.boot(1, 'memtest', [GPA_A, size, 0, 0]);
  let exit: VcpuExit | undefined;
  try {
    exit = await probe.runAsync({ signal: ctx.signal });
  } catch (e) {
    if (!(e instanceof KvmError && e.code === 'EFAULT')) throw e;
    ctx.log(`guest read of the closed range: KVM_RUN failed with EFAULT (${e.message})`);
  }
  if (exit !== undefined) {
    const uc = getUcall(probe, exit);
    if (exit.reason === 'mmio') {
      checkEq(exit.address, BigInt(GPA_A), 'address of the MMIO exit for the closed range');
      checkEq(exit.isWrite, false, 'the MMIO exit for the closed range is the guest read');
      ctx.log(`guest read of the closed range: ${describeExit(exit)}`);
    } else if (exit.reason === 'memory_fault') {
      check(
        exit.gpa <= BigInt(GPA_A) && BigInt(GPA_A) < exit.gpa + exit.size,
        `KVM_EXIT_MEMORY_FAULT [${hex(exit.gpa)}, +${hex(exit.size)}) does not cover the address read, ${hex(GPA_A)}`,
      );
      ctx.log(`guest read of the closed range: ${describeExit(exit)}`);
    } else if (uc?.cmd === 'abort') {
      const [addr, value] = uc.args;
      if (value === BigInt(old)) {
        throw new SelftestFailure(`the guest still reads the closed guest_memfd's data: ${hex(old)} at ${hex(addr ?? 0n)}`);
      }
      throw new SelftestFailure(`the guest read ${hex(value ?? 0n)} at ${hex(addr ?? 0n)} in the closed range: neither a fault nor the zeros of the placeholder`);
    } else if (uc?.cmd === 'sync') {
      // The whole range read as zeros, without an exit.
      check(
        ctx.host.paging.mode === 'shadow',
        `the guest read zeros over the whole closed range without an exit, on a host with ${ctx.host.paging.mode} paging (${ctx.host.paging.source}): expected a fault (MMIO, KVM_EXIT_MEMORY_FAULT or EFAULT)`,
      );
      ctx.log(`guest read of the closed range: no exit; it reads zeros over all ${size / ctx.pageSize} pages (shadow paging: accesses go through userspace_addr, now the anonymous placeholder; no stale mapping of the old pages)`);
    } else {
      throw new SelftestFailure(`unexpected exit for a guest read of the closed range: ${describeExit(exit)}`);
    }
  }

  // The memslot stays: its guest-physical range is still taken.
  const anon = ctx.use(Mapping.anonymous(size));
  checkErrno(
    () => vm.setUserMemoryRegion2({ slot: 3, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: anon }),
    'EEXIST', 'a new memslot over the range of the closed guest_memfd\'s memslot',
  );

  // Other memory keeps working: slot B, read and written by the guest.
  await mt.run({ start: GPA_B, length: size, expect: 0x1b, fill: 0x2b });
  checkBytes(mapB.bytes, 0x2b, 'host view of slot B after slot A\'s guest_memfd was closed');

  // Delete the slot (it exists: EINVAL otherwise) and bind a fresh guest_memfd at the address.
  vm.deleteMemoryRegion(1);
  const gmemC = sharedGmem(ctx, vm, size);
  const mapC = ctx.use(gmemC.map());
  mapC.bytes.fill(0x5c);
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: mapC, guestMemfd: gmemC });
  await mt.run({ start: GPA_A, length: size, expect: 0x5c, fill: 0xc5 });
  checkBytes(mapC.bytes, 0xc5, 'host view of the fresh guest_memfd bound where the closed one was');
  await mt.finish();
}

// ---- 3 ---------------------------------------------------------------------------------------

/** The compiled child script: next to this module in dist/, or dist/ when this runs from lib/. */
function childScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, 'child.js'), resolve(here, '..', '..', 'dist', 'selftest', 'child.js')];
  const found = candidates.find((p) => existsSync(p));
  if (found === undefined) {
    throw new Error(`the selftest child script is not built (looked for ${candidates.join(', ')}); run \`npx tsc -p tsconfig.json\``);
  }
  return found;
}

/** What the child printed and how it ended. */
interface ChildRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs child.js with `gmemFd` as its fd 3 and `vmFd` as its fd 4. Killed after `timeoutMs`, and
 * when the case ends if it is still running.
 */
function runChild(ctx: CaseContext, gmemFd: number, vmFd: number, req: ChildRequest, timeoutMs: number): Promise<ChildRun> {
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

// seeds/000: Sean Christopherson objects to Ackerley Tng's proposal that a guest_memfd forget its
// VM once its last memslot is gone: userspace could then delete a VM's memslots and bind its file
// into a VM it controls to read the memory. Of the remedies he lists, (a) is that no other VM may
// ever bind the file; seeds/004 shows it in kvm_gmem_bind(): a file created by another VM is
// EINVAL, whether or not it is bound at the time. seeds/001: Ackerley's use
// case is exactly this hand-off to a new VMM process (live upgrade); the file still works there as
// memory (it can be mapped, its data is intact, it can be punched) but cannot be bound. seeds/003:
// Jann Horn describes the /dev/kvm model as page tables mirrored from one mm; KVM ties a VM to the
// mm that created it, so VM ioctls from another process fail with EIO.
async function guestMemfdBoundToOneVm(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const pattern = 0x7e;
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmem = sharedGmem(ctx, vm, size);
  const m = bindRange(ctx, vm, 1, GPA_A, gmem, 0, size);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: pattern });
  await mt.run();
  await mt.finish();
  checkBytes(m.bytes, pattern, 'host view of the guest-written guest_memfd');

  // In this process: another VM may not bind it, while it is bound to its own VM or after.
  const other = ctx.use(ctx.kvm.createVm());
  const region = { slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem };
  checkErrno(() => other.setUserMemoryRegion2(region), 'EINVAL', 'binding it into a second VM while its own VM has it bound');
  vm.deleteMemoryRegion(1);
  checkErrno(() => other.setUserMemoryRegion2(region), 'EINVAL', 'binding it into a second VM after its own VM deleted every memslot of it');
  // Controls: the second VM binds a guest_memfd of its own with the same arguments, and the
  // first VM binds its file again.
  const own = sharedGmem(ctx, other, size);
  bindRange(ctx, other, 1, GPA_A, own, 0, size);
  vm.setUserMemoryRegion2(region);
  ctx.log('same process: a second VM is refused (EINVAL) both while the file is bound to its VM and after unbinding; controls bind');

  // In another process that received the guest_memfd and the VM fd.
  const req: ChildRequest = {
    size, pattern, dataLength: size,
    writeAt: U, writeLength: ctx.pageSize, childByte: 0xc1,
    punchAt: size - ctx.pageSize, punchLength: ctx.pageSize, gpa: GPA_A,
  };
  const run = await runChild(ctx, gmem.fd, vm.fd, req, 30_000);
  if (run.stderr.trim() !== '') ctx.log(`child stderr: ${run.stderr.trim()}`);
  check(run.signal === null, `the child was killed by ${run.signal} (timed out?)`);
  checkEq(run.code, 0, 'the child\'s exit status');
  let r: ChildReport;
  try {
    r = JSON.parse(run.stdout) as ChildReport;
  } catch {
    throw new SelftestFailure(`the child printed no report: ${JSON.stringify(run.stdout.slice(0, 500))}`);
  }
  ctx.log(`child: ${JSON.stringify(r)}`);
  checkEq(r.fd3, 'guest_memfd', `what the child's fd 3 is (link '${r.link3}')`);
  checkEq(r.fd4, 'vm', `what the child's fd 4 is (link '${r.link4}')`);
  checkEq(r.map, 'ok', 'the child maps the guest_memfd');
  check(
    r.firstMismatch === -1,
    `the child reads the guest's data: expected ${hex(pattern)} everywhere, got ${hex(r.mismatchValue)} at offset ${hex(r.firstMismatch)}`,
  );
  checkEq(r.write, 'ok', 'the child writes through its mapping');
  checkEq(r.punch, 'ok', 'the child punches a hole (fallocate)');
  checkEq(r.ownVm, 'ok', 'the child creates a VM of its own');
  checkEq(r.bindInheritedToOwnVm, 'EINVAL', 'the child binds the received guest_memfd into its own VM');
  checkEq(r.bindOwnToOwnVm, 'ok', 'control: the child binds a guest_memfd of its own VM');
  checkEq(r.vmCheckExtension, 'EIO', 'KVM_CHECK_EXTENSION on the received VM fd');
  checkEq(r.vmCreateGuestMemfd, 'EIO', 'KVM_CREATE_GUEST_MEMFD on the received VM fd');
  checkEq(r.vmSetUserMemoryRegion2, 'EIO', 'KVM_SET_USER_MEMORY_REGION2 on the received VM fd');

  // The child's write and punch are in the parent's view of the same file.
  checkBytes(m.bytes.subarray(U, U + ctx.pageSize), 0xc1, 'the child\'s write, seen by the parent', U);
  checkBytes(m.bytes.subarray(size - ctx.pageSize), 0, 'the child\'s hole, seen by the parent', size - ctx.pageSize);
  checkBytes(m.bytes.subarray(0, U), pattern, 'the data before the child\'s write, after the child ran');
  checkBytes(m.bytes.subarray(U + ctx.pageSize, size - ctx.pageSize), pattern, 'the data between the child\'s write and its hole', U + ctx.pageSize);
  // And the parent's own VM still works with the file: the guest sees the child's bytes.
  const after = new Memtest(guest, 1, { start: GPA_A + U, length: ctx.pageSize, expect: 0xc1, fill: 0xc2 });
  await after.run();
  await after.run({ start: GPA_A + size - ctx.pageSize, length: ctx.pageSize, expect: 0, fill: 0 });
  await after.finish();
}

// ---- 4 ---------------------------------------------------------------------------------------

// seeds/000: Sean Christopherson: memslots are "weird page tables"; deleting one has no effect on
// the data in memory, and he argues against zeroing or freeing guest_memfd memory on unbind (his
// option (b)) because it would run counter to that. So the guest's bytes survive the delete and show up
// wherever the same file range is bound next.
async function deleteMemslotKeepsData(ctx: CaseContext): Promise<void> {
  const fileSize = 4 * U;
  const offset = 2 * U; // a range that does not start at 0, so the offset must be honoured too
  const len = 2 * U;
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmem = sharedGmem(ctx, vm, fileSize);
  const m = bindRange(ctx, vm, 1, GPA_A, gmem, offset, len);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: len, expect: 0, fill: 0xa5 });
  await mt.run();
  checkBytes(m.bytes, 0xa5, 'host view of the guest\'s pattern', offset);

  vm.deleteMemoryRegion(1);
  checkBytes(m.bytes, 0xa5, 'the guest\'s pattern after the memslot was deleted', offset);
  checkEq(gmem.stat().size, BigInt(fileSize), 'st_size after the memslot was deleted');
  await checkUnbacked(ctx, mt, GPA_A, 'the old address after the delete');

  vm.setUserMemoryRegion2({
    slot: 1, guestPhysAddr: GPA_B, memorySize: len, userspaceAddr: m, guestMemfd: gmem, guestMemfdOffset: offset,
  });
  await mt.run({ start: GPA_B, length: len, expect: 0xa5, fill: 0x5a });
  checkBytes(m.bytes, 0x5a, 'host view of the guest\'s write at the new address', offset);
  await mt.finish();
  ctx.log(`file range ${range(offset, len)}: written at ${hex(GPA_A)}, slot deleted, read back intact at ${hex(GPA_B)}`);
}

// ---- 5 ---------------------------------------------------------------------------------------

// seeds/004: kvm_gmem_bind() (Sean's code, quoted by Ackerley Tng) records each binding in the
// file's xarray over the page range [offset, offset + size) and refuses (EINVAL) a new binding if
// any index in its range is already present: one page of a guest_memfd backs at most one gfn.
// Only the file range matters, so the refused slots are put at their own guest-physical address.
async function overlappingGuestMemfdRanges(ctx: CaseContext): Promise<void> {
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmem = sharedGmem(ctx, vm, 8 * U);
  const all = ctx.use(gmem.map());
  // [2U, 4U) is bound at GPA_A.
  bindRange(ctx, vm, 1, GPA_A, gmem, 2 * U, 2 * U);
  const shapes: [string, number, number][] = [
    ['the same range', 2 * U, 2 * U],
    ['front overlap', 1 * U, 2 * U],
    ['back overlap', 3 * U, 2 * U],
    ['contained', 2 * U + U / 2, U],
    ['containing', 1 * U, 4 * U],
    ['one page at the start', 2 * U, ctx.pageSize],
    ['one page at the end', 4 * U - ctx.pageSize, ctx.pageSize],
  ];
  // EEXIST, Linux 7.2's answer (before it EINVAL: an expectation entry for those kernels).
  const fileCode = 'EEXIST';
  // All at GPA_B, each with a new slot id: a refused call that left a slot behind would turn the
  // next attempt into EEXIST.
  shapes.forEach(([what, off, len], i) => {
    const view = ctx.use(gmem.map(off, len));
    checkErrno(
      () => vm.setUserMemoryRegion2({
        slot: 2 + i, guestPhysAddr: GPA_B, memorySize: len, userspaceAddr: view, guestMemfd: gmem, guestMemfdOffset: off,
      }),
      fileCode, `${what}: ${range(off, len)} while ${range(2 * U, 2 * U)} is bound`,
    );
  });
  ctx.log(`refused with ${fileCode}: ${shapes.map(([w, o, l]) => `${w} ${range(o, l)}`).join(', ')}`);

  // Disjoint ranges bind, including the ones that touch the bound range at either end.
  bindRange(ctx, vm, 2, GPA_B, gmem, 0, 2 * U);
  bindRange(ctx, vm, 3, GPA_C, gmem, 4 * U, 2 * U);
  ctx.log(`bound: ${range(2 * U, 2 * U)} at ${hex(GPA_A)}, ${range(0, 2 * U)} at ${hex(GPA_B)}, ${range(4 * U, 2 * U)} at ${hex(GPA_C)}`);

  // And each slot reaches its own part of the file.
  const b = all.bytes;
  b.fill(0x01, 0, 2 * U);
  b.fill(0x02, 2 * U, 4 * U);
  b.fill(0x03, 4 * U, 6 * U);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: 2 * U, expect: 0x02, fill: 0x12 });
  await mt.run();
  await mt.run({ start: GPA_B, length: 2 * U, expect: 0x01, fill: 0x11 });
  await mt.run({ start: GPA_C, length: 2 * U, expect: 0x03, fill: 0x13 });
  await mt.finish();
  checkBytes(b.subarray(0, 2 * U), 0x11, `file range ${range(0, 2 * U)} after the guest wrote at ${hex(GPA_B)}`);
  checkBytes(b.subarray(2 * U, 4 * U), 0x12, `file range ${range(2 * U, 2 * U)} after the guest wrote at ${hex(GPA_A)}`, 2 * U);
  checkBytes(b.subarray(4 * U, 6 * U), 0x13, `file range ${range(4 * U, 2 * U)} after the guest wrote at ${hex(GPA_C)}`, 4 * U);
  checkBytes(b.subarray(6 * U), 0, `file range ${range(6 * U, 2 * U)}, bound nowhere`, 6 * U);
}

// ---- 6 ---------------------------------------------------------------------------------------

// seeds/004: a guest_memfd binding is made once, in kvm_gmem_bind(), which stores the slot and
// its file offset in the file's bindings; nothing updates them afterwards, and KVM refuses any
// change to a guest_memfd memslot (EINVAL: such slots can only be deleted). seeds/000: deleting
// is harmless to the data (memslots are like page tables), so delete + re-add is the way to move.
async function guestMemfdMemslotImmutable(ctx: CaseContext): Promise<void> {
  const size = 2 * U;
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmem = sharedGmem(ctx, vm, size);
  const m = ctx.use(gmem.map());
  const region = { slot: 1, guestPhysAddr: GPA_A, memorySize: size, userspaceAddr: m, guestMemfd: gmem };
  vm.setUserMemoryRegion2(region);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0, fill: 0x6b });
  await mt.run();

  checkErrno(() => vm.setUserMemoryRegion2({ ...region, guestPhysAddr: GPA_B }), 'EINVAL', `moving slot 1 from ${hex(GPA_A)} to ${hex(GPA_B)}`);
  checkErrno(
    () => vm.setUserMemoryRegion2({ ...region, flags: MemslotFlag.GUEST_MEMFD | MemslotFlag.LOG_DIRTY_PAGES }),
    'EINVAL', 'adding LOG_DIRTY_PAGES to slot 1',
  );
  checkErrno(() => vm.setUserMemoryRegion2({ ...region, flags: 0 }), 'EINVAL', 'dropping GUEST_MEMFD from slot 1');
  checkErrno(() => vm.setUserMemoryRegion2(region), 'EINVAL', 'setting slot 1 again with the same values');
  ctx.log('refused with EINVAL: move, +LOG_DIRTY_PAGES, -GUEST_MEMFD, the same values again');

  // The refusals changed nothing: the slot still serves the old address, the new one is empty.
  await mt.run({ start: GPA_A, length: size, expect: 0x6b, fill: 0x6c });
  await checkUnbacked(ctx, mt, GPA_B, 'the address of the refused move');

  vm.deleteMemoryRegion(1);
  vm.setUserMemoryRegion2({ ...region, guestPhysAddr: GPA_B });
  await mt.run({ start: GPA_B, length: size, expect: 0x6c, fill: 0x6d });
  checkBytes(m.bytes, 0x6d, 'host view after the guest wrote at the new address');
  await checkUnbacked(ctx, mt, GPA_A, 'the old address after delete and re-add');
  await mt.finish();
}

// ---- 7 ---------------------------------------------------------------------------------------

// seeds/001: Ackerley Tng: fallocate(PUNCH_HOLE) is how userspace tells KVM to drop guest_memfd
// memory, as munmap() was for memory behind a userspace_addr. seeds/000: Sean keeps the data in
// the inode and invalidates every view of it when it changes, so all views must agree after a
// punch. seeds/002: for ordinary VMs Sean would allow any host mapping of guest_memfd, so the host
// mapping is one more view that must agree. Punching keeps the file size (KEEP_SIZE); allocating
// reserves zeroed pages that the guest and the host then share.
async function punchAllocateWhileMappedAndBound(ctx: CaseContext): Promise<void> {
  const size = 4 * U;
  const page = ctx.pageSize;
  const hole = U;
  const holeLen = U;
  const half = holeLen / 2;
  const guest = selftestGuest(ctx);
  const vm = guest.vm;
  const gmem = sharedGmem(ctx, vm, size);
  const m = bindRange(ctx, vm, 1, GPA_A, gmem, 0, size);
  const b = m.bytes;
  const pagesOf = (off: number, len: number): number => {
    const res = m.residency();
    let n = 0;
    for (let p = off / page; p < (off + len) / page; p++) n += res[p]!;
    return n;
  };
  const stat = (when: string): void => {
    const st = gmem.stat();
    checkEq(st.size, BigInt(size), `st_size ${when}`);
    ctx.log(`${when}: st_size ${st.size}, st_blocks ${st.blocks}, resident pages ${m.residentPages()} of ${size / page} (hole: ${pagesOf(hole, holeLen)} of ${holeLen / page})`);
  };

  // Every page in use by both sides: the host writes, the guest checks and overwrites.
  b.fill(0x11);
  const mt = new Memtest(guest, 0, { start: GPA_A, length: size, expect: 0x11, fill: 0x22 });
  await mt.run();
  checkBytes(b, 0x22, 'host view of the guest\'s fill');
  stat('before the punch');

  // Punch; then the host and the guest each look first at one half of the hole.
  gmem.punchHole(hole, holeLen);
  stat('after the punch');
  checkEq(pagesOf(hole, holeLen), 0, 'resident pages in the hole right after the punch (mincore)');
  await mt.run({ start: GPA_A + hole, length: half, expect: 0, fill: 0x33 }); // guest first: zeros
  checkBytes(b.subarray(hole, hole + half), 0x33, 'host view of the guest\'s write in the first half of the hole', hole);
  checkBytes(b.subarray(hole + half, hole + holeLen), 0, 'host view of the second half of the hole (host first)', hole + half);
  await mt.run({ start: GPA_A + hole + half, length: half, expect: 0, fill: 0x44 });
  checkBytes(b.subarray(hole + half, hole + holeLen), 0x44, 'host view of the guest\'s write in the second half of the hole', hole + half);
  // The neighbours kept their bytes, in both views.
  checkBytes(b.subarray(0, hole), 0x22, 'host view before the hole');
  checkBytes(b.subarray(hole + holeLen), 0x22, 'host view after the hole', hole + holeLen);
  await mt.run({ start: GPA_A + hole - page, length: page, expect: 0x22, fill: 0x22 });
  await mt.run({ start: GPA_A + hole + holeLen, length: page, expect: 0x22, fill: 0x22 });

  // Punch again and allocate: the range is backed again, reads as zeros, and the host and the
  // guest see each other's writes there.
  gmem.punchHole(hole, holeLen);
  gmem.allocate(hole, holeLen);
  stat('after punch + allocate');
  await mt.run({ start: GPA_A + hole, length: holeLen, expect: 0, fill: 0x55 });
  checkBytes(b.subarray(hole, hole + holeLen), 0x55, 'host view of the guest\'s write into the allocated range', hole);
  b.fill(0x66, hole, hole + holeLen);
  await mt.run({ start: GPA_A + hole, length: holeLen, expect: 0x66, fill: 0x77 });
  checkBytes(b.subarray(hole, hole + holeLen), 0x77, 'host view of the guest\'s second write', hole);
  await mt.run({ start: GPA_A, length: hole, expect: 0x22, fill: 0x22 });
  await mt.run({ start: GPA_A + hole + holeLen, length: size - hole - holeLen, expect: 0x22, fill: 0x22 });
  await mt.finish();
  stat('at the end');
}
