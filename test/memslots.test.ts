// Memslots: KVM_SET_USER_MEMORY_REGION2 with guest_memfd, and the legacy call, with every
// refusal the kernel makes checked by its exact code.
import { closeSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileOverlapErrno } from './kvm-host.js';
import { describe, expect, it, type TestContext } from 'vitest';
import { Cap, GuestMemfdFlag, KvmError, KvmStateError, Mapping, MemslotFlag, PAGE_SIZE, type Kvm, type Vm } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { expectKvmError, needCap, openKvm, thrown } from './kvm-host.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;

/** /dev/kvm and a VM on a host with KVM_SET_USER_MEMORY_REGION2 and guest_memfd. */
function setup(ctx: TestContext): { kvm: Kvm; vm: Vm } & Disposable {
  const kvm = openKvm(ctx);
  needCap(ctx, kvm, Cap.USER_MEMORY2, 'USER_MEMORY2');
  needCap(ctx, kvm, Cap.GUEST_MEMFD, 'GUEST_MEMFD');
  const vm = kvm.createVm();
  return { kvm, vm, [Symbol.dispose]: () => { vm.close(); kvm.close(); } };
}

function expectCode(f: () => unknown, code: string, request = 'KVM_SET_USER_MEMORY_REGION2'): KvmError {
  return expectKvmError(f, code, { request });
}

describe('vm.setUserMemoryRegion2 with a guest_memfd', () => {
  it.for([
    ['0', 0n],
    ['MMAP', GuestMemfdFlag.MMAP],
    ['INIT_SHARED', GuestMemfdFlag.INIT_SHARED],
    ['MMAP|INIT_SHARED', SHARED],
  ] as const)('binds a guest_memfd created with flags %s', ([, flags], ctx) => {
    using s = setup(ctx);
    const supported = BigInt(s.vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
    needCap(ctx, { checkExtension: () => Number((supported & flags) === flags) }, Cap.GUEST_MEMFD_FLAGS, `GUEST_MEMFD_FLAGS 0x${flags.toString(16)}`);
    using g = s.vm.createGuestMemfd({ size: 2 * MiB, flags });
    // Shared memory comes from the file's own mapping where it can be mapped, else anonymous memory.
    using m = flags & GuestMemfdFlag.MMAP ? g.map() : Mapping.anonymous(2 * MiB);
    s.vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 0x100000, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g });
    const slot = s.vm.memslots.get(1)!;
    expect(slot.flags).toBe(MemslotFlag.GUEST_MEMFD); // the default when guestMemfd is given
    expect(slot.guestPhysAddr).toBe(0x100000n);
    expect(slot.memorySize).toBe(BigInt(2 * MiB));
    expect(slot.userspaceAddr).toBe(m.address);
    expect(slot.guestMemfd).toBe(g);
    // The kernel holds the slot: the same GPA range is now taken.
    expectCode(() => s.vm.setUserMemoryRegion2({ slot: 2, guestPhysAddr: 0x100000, memorySize: PAGE_SIZE, userspaceAddr: m }), 'EEXIST');
    s.vm.deleteMemoryRegion(1);
    expect(s.vm.memslots.has(1)).toBe(false);
    // And after delete it is free again.
    s.vm.setUserMemoryRegion2({ slot: 2, guestPhysAddr: 0x100000, memorySize: PAGE_SIZE, userspaceAddr: m });
  });

  it('refuses overlapping guest-physical ranges (EEXIST)', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using m = g.map();
    s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 2 * MiB, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g });
    const e = expectCode(
      () => s.vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 3 * MiB, memorySize: 2 * MiB, userspaceAddr: m.address + BigInt(2 * MiB), guestMemfd: g, guestMemfdOffset: 2 * MiB }),
      'EEXIST',
    );
    expect(e.errno).toBe(-17);
    expect(e.message).toMatch(/slot=1, flags=0x4, guest_phys_addr=0x300000/);
    expect(s.vm.memslots.has(1)).toBe(false); // nothing recorded for a refused call
  });

  it('refuses two slots over overlapping ranges of one guest_memfd (EINVAL; EEXIST since Linux 7.2); disjoint ranges bind', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using m = g.map();
    s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g });
    expectCode(() => s.vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 8 * MiB, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g, guestMemfdOffset: MiB }), fileOverlapErrno());
    s.vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 8 * MiB, memorySize: 2 * MiB, userspaceAddr: m.address + BigInt(2 * MiB), guestMemfd: g, guestMemfdOffset: 2 * MiB });
    expect([...s.vm.memslots.keys()].sort()).toEqual([0, 1]);
  });

  it('refuses a range past the end of the file (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED });
    using m = g.map();
    expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: m, guestMemfd: g, guestMemfdOffset: PAGE_SIZE }), 'EINVAL');
    using big = Mapping.anonymous(4 * MiB);
    expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 4 * MiB, userspaceAddr: big, guestMemfd: g }), 'EINVAL');
  });

  it('refuses unaligned guest_memfd offsets (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED });
    using m = g.map();
    for (const off of [1, 512, PAGE_SIZE - 1, PAGE_SIZE + 1]) {
      expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: g, guestMemfdOffset: off }), 'EINVAL');
    }
  });

  it('refuses GUEST_MEMFD with READONLY or LOG_DIRTY_PAGES (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    for (const extra of [MemslotFlag.READONLY, MemslotFlag.LOG_DIRTY_PAGES]) {
      expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, flags: MemslotFlag.GUEST_MEMFD | extra, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: g }), 'EINVAL');
    }
  });

  it('refuses fds that are not a guest_memfd (EINVAL) and a closed fd (EBADF)', (ctx) => {
    using s = setup(ctx);
    using m = Mapping.anonymous(MiB);
    const memfd = native.memfdCreate('kvm-gmem-test');
    const file = openSync(join(tmpdir(), `kvm-gmem-${process.pid}`), 'w+');
    try {
      for (const fd of [s.kvm.fd, s.vm.fd, memfd, file]) {
        expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: fd }), 'EINVAL');
      }
    } finally {
      closeSync(memfd);
      closeSync(file);
    }
    // A number no fd has: the kernel's own answer for a closed fd.
    expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: 0x7ffffff0 }), 'EBADF');
  });

  it("refuses another VM's guest_memfd (EINVAL); the file binds to its own VM", (ctx) => {
    using s = setup(ctx);
    using other = s.kvm.createVm();
    using g = other.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    expectCode(() => s.vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: g }), 'EINVAL');
    other.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: g });
  });

  it('refuses to move a guest_memfd slot or change its flags (EINVAL); delete and re-add works', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    const region = { slot: 3, guestPhysAddr: 0x200000, memorySize: MiB, userspaceAddr: m, guestMemfd: g };
    s.vm.setUserMemoryRegion2(region);
    expectCode(() => s.vm.setUserMemoryRegion2({ ...region, guestPhysAddr: 0x400000 }), 'EINVAL');
    expectCode(() => s.vm.setUserMemoryRegion2({ ...region, flags: MemslotFlag.GUEST_MEMFD | MemslotFlag.LOG_DIRTY_PAGES }), 'EINVAL');
    expect(s.vm.memslots.get(3)!.guestPhysAddr).toBe(0x200000n);
    s.vm.deleteMemoryRegion(3);
    s.vm.setUserMemoryRegion2({ ...region, guestPhysAddr: 0x400000 });
    expect(s.vm.memslots.get(3)!.guestPhysAddr).toBe(0x400000n);
  });

  it('refuses GUEST_MEMFD through the legacy KVM_SET_USER_MEMORY_REGION (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using m = Mapping.anonymous(MiB);
    expectCode(
      () => s.vm.setUserMemoryRegion({ slot: 0, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m }),
      'EINVAL', 'KVM_SET_USER_MEMORY_REGION',
    );
  });

  it('deleting a slot that does not exist is EINVAL', (ctx) => {
    using s = setup(ctx);
    expectCode(() => s.vm.deleteMemoryRegion(7), 'EINVAL', 'KVM_SET_USER_MEMORY_REGION');
  });

  it('rejects bad arguments and closed objects before any system call', (ctx) => {
    using s = setup(ctx);
    using g = s.vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    const ok = { slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: g };
    expect(() => s.vm.setUserMemoryRegion2(null as never)).toThrow(TypeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, slot: -1 })).toThrow(RangeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, slot: '0' as never })).toThrow(TypeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, guestPhysAddr: 2 ** 53 })).toThrow(RangeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, guestPhysAddr: 1n << 64n })).toThrow(RangeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, memorySize: 2 * MiB })).toThrow(RangeError); // Mapping too short
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, guestMemfd: 'x' as never })).toThrow(TypeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, guestMemfd: -1 })).toThrow(RangeError);
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, userspaceAddr: {} as never })).toThrow(TypeError);
    using m2 = g.map();
    m2.close();
    expect(thrown(() => s.vm.setUserMemoryRegion2({ ...ok, userspaceAddr: m2 })).code).toBe('ERR_KVM_CLOSED');
    const g2 = s.vm.createGuestMemfd({ size: MiB });
    g2.close();
    expect(() => s.vm.setUserMemoryRegion2({ ...ok, guestMemfd: g2 })).toThrow(KvmStateError);
    expect(s.vm.memslots.size).toBe(0);
  });
});

describe('vm.setUserMemoryRegion (legacy)', () => {
  it('binds anonymous memory and deletes it with the same call', (ctx) => {
    using s = setup(ctx);
    using m = Mapping.anonymous(MiB);
    s.vm.setUserMemoryRegion({ slot: 5, guestPhysAddr: 0x10000000, memorySize: MiB, userspaceAddr: m });
    expect(s.vm.memslots.get(5)?.via).toBe('region');
    expectCode(() => s.vm.setUserMemoryRegion({ slot: 6, guestPhysAddr: 0x10000000, memorySize: MiB, userspaceAddr: m }), 'EEXIST', 'KVM_SET_USER_MEMORY_REGION');
    s.vm.deleteMemoryRegion(5);
    s.vm.setUserMemoryRegion({ slot: 6, guestPhysAddr: 0x10000000, memorySize: MiB, userspaceAddr: m.address });
  });

  it('refuses unaligned addresses (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using m = Mapping.anonymous(MiB);
    expectCode(() => s.vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 1, memorySize: PAGE_SIZE, userspaceAddr: m }), 'EINVAL', 'KVM_SET_USER_MEMORY_REGION');
    expectCode(() => s.vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: PAGE_SIZE + 1, userspaceAddr: m.address }), 'EINVAL', 'KVM_SET_USER_MEMORY_REGION');
    expectCode(() => s.vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: PAGE_SIZE, userspaceAddr: m.address + 1n }), 'EINVAL', 'KVM_SET_USER_MEMORY_REGION');
  });

  it('is refused on a closed Vm with a state error', (ctx) => {
    using s = setup(ctx);
    const vm = s.kvm.createVm();
    vm.close();
    using m = Mapping.anonymous(MiB);
    expect(thrown(() => vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m })).code).toBe('ERR_KVM_CLOSED');
    expect(thrown(() => vm.deleteMemoryRegion(0)).code).toBe('ERR_KVM_CLOSED');
    expect(thrown(() => vm.createGuestMemfd({ size: MiB })).code).toBe('ERR_KVM_CLOSED');
  });
});
