// One error module: every code the library's sources (lib/ and native/) can throw is in the
// exported KvmErrorCode union, whose non-errno members are these lists.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, type TestContext } from 'vitest';
import { ARG_CODES, STATE_CODES, explain } from '../lib/core/errors.js';
import { Cap, GuestMemfdFlag, KvmError, Madvise, Mapping, MemslotFlag, PAGE_SIZE, VmType, type KvmErrorCode } from '../lib/index.js';
import { expectKvmError, fileOverlapErrno, gmemVm, needCap, openKvm } from './kvm-host.js';
import { ROOT } from './paths.js';

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|cc|h)$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

describe('error codes', () => {
  it('every ERR_ code in lib/ and native/ is a KvmErrorCode', () => {
    const known = new Set<string>([...STATE_CODES, ...ARG_CODES, 'ERR_KVM_SIGBUS', 'ERR_KVM_ADDON_MISSING']);
    const found = new Set<string>();
    for (const f of [...sources(join(ROOT, 'lib')), ...sources(join(ROOT, 'native'))]) {
      for (const m of readFileSync(f, 'utf8').matchAll(/['"](ERR_[A-Z_]+)['"]/g)) found.add(m[1]!);
    }
    found.delete('ERR_PARSE_ARGS_'); // node:util's prefix, recognised by the CLI, never thrown by us
    expect(found.size).toBeGreaterThan(20);
    expect([...found].filter((c) => !known.has(c))).toEqual([]);
    const one: KvmErrorCode = 'ERR_KVM_CLOSED';
    const errno: KvmErrorCode = 'EINVAL';
    const addon: KvmErrorCode = 'ERR_KVM_ADDON_MISSING';
    expect([one, errno, addon]).toHaveLength(3);
  });
});

// Kernel errors whose cause the typings document carry it as `hint` (also the end of the
// message): each provoked for real, the hint asserted word for word.
describe('kernel errors carry the hint for their known cause', () => {
  const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
  const MiB = 1 << 20;
  const hintOf = (e: KvmError) => {
    expect(e.hint).toBeDefined();
    expect(e.message.endsWith(`. ${e.hint!}`)).toBe(true);
    return e.hint;
  };
  /** A default VM with guest_memfd and KVM_SET_USER_MEMORY_REGION2. */
  const setup = (ctx: TestContext, flags = SHARED) => {
    const vm = gmemVm(ctx, flags);
    needCap(ctx, vm, Cap.USER_MEMORY2, 'USER_MEMORY2');
    return vm;
  };

  it('madvise at an offset that is not page-aligned: EINVAL, says so (no KVM needed)', () => {
    using m = Mapping.anonymous(2 * PAGE_SIZE);
    const e = expectKvmError(() => m.advise(Madvise.DONTNEED, 1, PAGE_SIZE), 'EINVAL', { syscall: 'madvise' });
    expect(hintOf(e)).toBe('offset 0x1 is not a multiple of the page size (4096)');
  });

  it('mapping a guest_memfd created without MMAP: ENODEV, names the flag it needs', (ctx) => {
    using vm = setup(ctx, GuestMemfdFlag.MMAP);
    using g = vm.createGuestMemfd({ size: MiB });
    const e = expectKvmError(() => g.map(), 'ENODEV', { syscall: 'mmap' });
    expect(hintOf(e)).toBe('this guest_memfd was created without GuestMemfdFlag.MMAP, and only such a guest_memfd can be mapped: ' +
      'create it with flags GuestMemfdFlag.MMAP (Linux 6.18+, when KVM_CAP_GUEST_MEMFD_FLAGS has it)');
    // With the flag the same call works.
    using g2 = vm.createGuestMemfd({ size: MiB, flags: GuestMemfdFlag.MMAP });
    g2.map().close();
  });

  it('KVM_CREATE_GUEST_MEMFD: EINVAL for an unaligned size and for a flag this VM does not offer', (ctx) => {
    using vm = setup(ctx, 0n);
    const size = expectKvmError(() => vm.createGuestMemfd({ size: PAGE_SIZE + 1 }), 'EINVAL', { request: 'KVM_CREATE_GUEST_MEMFD' });
    expect(hintOf(size)).toBe('the size 0x1001 is not a multiple of the page size (4096)');
    const offered = BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
    const flag = 1n << 40n;
    const f = expectKvmError(() => vm.createGuestMemfd({ size: MiB, flags: flag }), 'EINVAL', { request: 'KVM_CREATE_GUEST_MEMFD' });
    expect(hintOf(f)).toBe(`flags 0x10000000000 are not offered by this VM (KVM_CAP_GUEST_MEMFD_FLAGS = 0x${offered.toString(16)}` +
      `${offered ? `: ${Object.entries(GuestMemfdFlag).filter(([, b]) => offered & b).map(([n]) => n).join(' | ')}` : ''})`);
  });

  it('fallocate on a guest_memfd: EINVAL for unaligned or past-the-end ranges, each named', (ctx) => {
    using vm = setup(ctx, 0n);
    using g = vm.createGuestMemfd({ size: MiB });
    expect(hintOf(expectKvmError(() => g.allocate(1, PAGE_SIZE), 'EINVAL', { syscall: 'fallocate' })))
      .toBe('offset 0x1 is not a multiple of the page size (4096)');
    expect(hintOf(expectKvmError(() => g.allocate(MiB - PAGE_SIZE, 2 * PAGE_SIZE), 'EINVAL', { syscall: 'fallocate' })))
      .toBe('[0xff000, 0x101000) goes past the end of the guest_memfd (size 0x100000)');
    expect(hintOf(expectKvmError(() => g.punchHole(0, 100), 'EINVAL', { syscall: 'fallocate' })))
      .toBe('length 0x64 is not a multiple of the page size (4096)');
  });

  it('KVM_SET_USER_MEMORY_REGION2: EINVAL for a misaligned field, a range past the file, a flag clash, the legacy call', (ctx) => {
    using vm = setup(ctx);
    using g = vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED });
    using m = g.map();
    const region2 = (r: Partial<Parameters<typeof vm.setUserMemoryRegion2>[0]>) =>
      expectKvmError(() => vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 0x100000, memorySize: MiB, userspaceAddr: m, guestMemfd: g, ...r }),
        'EINVAL', { request: 'KVM_SET_USER_MEMORY_REGION2' });
    expect(hintOf(region2({ guestPhysAddr: 0x100800 }))).toBe('guestPhysAddr 0x100800 is not a multiple of the page size (4096)');
    expect(hintOf(region2({ memorySize: MiB + 512 }))).toBe('memorySize 0x100200 is not a multiple of the page size (4096)');
    expect(hintOf(region2({ guestMemfdOffset: 0x800 }))).toBe('guestMemfdOffset 0x800 is not a multiple of the page size (4096)');
    expect(hintOf(region2({ guestMemfdOffset: 1.5 * MiB }))).toBe('the guest_memfd range [0x180000, 0x280000) goes past the end of the file (size 0x200000)');
    expect(hintOf(region2({ flags: MemslotFlag.GUEST_MEMFD | MemslotFlag.LOG_DIRTY_PAGES }))).toBe('a GUEST_MEMFD memslot cannot have LOG_DIRTY_PAGES');
    const legacy = expectKvmError(() => vm.setUserMemoryRegion({ slot: 1, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: 0x100000, memorySize: MiB, userspaceAddr: m }),
      'EINVAL', { request: 'KVM_SET_USER_MEMORY_REGION' });
    expect(hintOf(legacy)).toBe('the legacy KVM_SET_USER_MEMORY_REGION cannot carry a guest_memfd: use setUserMemoryRegion2()');
    expect(vm.memslots.size).toBe(0);
  });

  it('memslot overlaps: EEXIST names the slot whose guest range is taken; a guest_memfd range bound twice names its slot', (ctx) => {
    using vm = setup(ctx);
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using m = g.map();
    vm.setUserMemoryRegion2({ slot: 3, guestPhysAddr: 2 * MiB, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g });
    const gpa = expectKvmError(() => vm.setUserMemoryRegion2({ slot: 4, guestPhysAddr: 3 * MiB, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g, guestMemfdOffset: 2 * MiB }),
      'EEXIST', { request: 'KVM_SET_USER_MEMORY_REGION2' });
    expect(hintOf(gpa)).toBe('guest range [0x300000, 0x500000) overlaps memslot 3 [0x200000, 0x400000): delete that slot first, or choose another guestPhysAddr');
    const twice = expectKvmError(() => vm.setUserMemoryRegion2({ slot: 4, guestPhysAddr: 8 * MiB, memorySize: MiB, userspaceAddr: m, guestMemfd: g, guestMemfdOffset: MiB }),
      fileOverlapErrno(), { request: 'KVM_SET_USER_MEMORY_REGION2' });
    expect(hintOf(twice)).toBe('the guest_memfd range [0x100000, 0x200000) is already bound to memslot 3 [0x0, 0x200000): a guest_memfd page backs at most one memslot');
  });

  it('changing a guest_memfd memslot: EINVAL, it can only be deleted; deleting a slot that does not exist: EINVAL', (ctx) => {
    using vm = setup(ctx);
    using g = vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED });
    using m = g.map();
    vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g });
    const move = expectKvmError(() => vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 4 * MiB, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g }),
      'EINVAL', { request: 'KVM_SET_USER_MEMORY_REGION2' });
    expect(hintOf(move)).toBe('memslot 0 exists and is a guest_memfd slot: such a slot cannot be changed, only deleted');
    const del = expectKvmError(() => vm.deleteMemoryRegion(9), 'EINVAL');
    expect(hintOf(del)).toBe('memslot 9 does not exist in this VM (it has 0)');
  });

  it('a slot id past KVM_CAP_NR_MEMSLOTS: EINVAL, with the limit', (ctx) => {
    using vm = setup(ctx);
    using m = Mapping.anonymous(PAGE_SIZE);
    const n = vm.checkExtension(Cap.NR_MEMSLOTS);
    const e = expectKvmError(() => vm.setUserMemoryRegion2({ slot: n, guestPhysAddr: 0, memorySize: PAGE_SIZE, userspaceAddr: m }), 'EINVAL');
    expect(hintOf(e)).toBe(`slot id ${n} is not below KVM_CAP_NR_MEMSLOTS (${n})`);
  });

  it('KVM_CREATE_VM with a type the host does not offer, KVM_CREATE_VCPU twice or past the id limit', (ctx) => {
    using kvm = openKvm(ctx);
    const types = kvm.checkExtension(Cap.VM_TYPES);
    const absent = Object.values(VmType).find((t) => !(types & (1 << t)) && t !== VmType.DEFAULT) ?? 31;
    const names = types === 0 ? ['DEFAULT'] : Object.entries(VmType).filter(([, t]) => types & (1 << t)).map(([n]) => n);
    const vmErr = expectKvmError(() => kvm.createVm(absent), 'EINVAL', { request: 'KVM_CREATE_VM' });
    const label = Object.entries(VmType).find(([, t]) => t === absent)?.[0] ?? String(absent);
    expect(hintOf(vmErr)).toBe(`VM type ${label} is not one this host offers (KVM_CAP_VM_TYPES: ${names.join(', ')})`);

    using vm = kvm.createVm();
    using vcpu = vm.createVcpu(0);
    expect(vcpu.id).toBe(0);
    expect(hintOf(expectKvmError(() => vm.createVcpu(0), 'EEXIST', { request: 'KVM_CREATE_VCPU' })))
      .toBe('vCPU 0 exists in this VM already: each id can be created once');
    const max = vm.checkExtension(Cap.MAX_VCPU_ID);
    expect(hintOf(expectKvmError(() => vm.createVcpu(max), 'EINVAL', { request: 'KVM_CREATE_VCPU' })))
      .toBe(`vCPU id ${max} is not below KVM_CAP_MAX_VCPU_ID (${max})`);
  });

  it('an error whose cause is not known gets no hint, and a known cause is not repeated', (ctx) => {
    using vm = setup(ctx, 0n);
    using g = vm.createGuestMemfd({ size: MiB });
    // EBADF on a closed raw fd: not a cause the typings list for a hint.
    const e = expectKvmError(() => vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 0, memorySize: MiB, guestMemfd: 1_000_000 }), 'EBADF');
    expect(e.hint).toBeUndefined();
    const twice = expectKvmError(() => g.allocate(1, PAGE_SIZE), 'EINVAL');
    expect(explain(twice, { call: 'madvise', offset: 1, length: 1 })).toBe(twice);
    expect(twice.message.split('is not a multiple').length).toBe(2);
  });
});
