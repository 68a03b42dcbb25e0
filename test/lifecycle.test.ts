// Lifetimes as the kernel has them (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com: the guest_memfd pins its VM),
// fd hygiene (no leaks, nothing inherited by children) and the garbage-collection safety net.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Cap, GuestMemfdFlag, GuestMemoryFaultError, KvmError, MemoryAttribute, PAGE_SIZE, VmType, type Kvm } from '../lib/index.js';
import { lifecycleCases } from '../lib/selftest/lifecycle/index.js';
import type { VmTypeFacts } from '../lib/selftest/host.js';
import { host as fakeHost } from './selftest-fixtures.js';
import { countFds, openFds, openKvm, skipOrFail } from './kvm-host.js';
import { swProtectedVm } from './private-memory-host.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;
const root = fileURLToPath(new URL('..', import.meta.url));

describe('a guest_memfd keeps its VM alive', () => {
  it('works fully after the Vm and Kvm fds are closed: allocate, punch, map, data intact', (ctx) => {
    const kvm = openKvm(ctx);
    const vm = kvm.createVm();
    expect(vm.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using before = g.map();
    before.bytes.fill(0x11);
    vm.close();
    kvm.close();
    expect(countFds('kvm-vm')).toBe(0); // no VM fd left in this process
    g.allocate(0, 4 * MiB);
    g.punchHole(MiB, PAGE_SIZE);
    using after = g.map();
    expect(after.bytes[0]).toBe(0x11);
    expect(after.bytes[MiB]).toBe(0); // punched after the VM fd was gone
    expect(after.bytes[MiB + PAGE_SIZE]).toBe(0x11);
    expect(g.stat().size).toBe(BigInt(4 * MiB));
  });
});

// The lifecycle cases on private memory (lib/selftest/lifecycle/private-*.ts, memory-fault-*.ts)
// run as selftests (test/selftest.test.ts registers every case); here, how they are planned, and
// the kernel facts they stand on, through the public API.
describe('private memory (SW_PROTECTED VMs)', () => {
  const PRIVATE = [
    'lifecycle.private_memory_not_host_mappable', 'lifecycle.private_memory_survives_vm_fd_close',
    'lifecycle.private_memory_gone_with_last_reference', 'lifecycle.memory_fault_names_gpa_size_private',
  ];
  const needsMmap = new Set([PRIVATE[0], PRIVATE[2], PRIVATE[3]]);
  const type = (t: number, extra: Partial<VmTypeFacts> = {}): VmTypeFacts => ({
    type: t, name: t === VmType.DEFAULT ? 'DEFAULT' : 'SW_PROTECTED', gmemFlags: 3n, gmemMemslots: true,
    memoryAttributes: 0n, preFaultMemory: 1, exitHypercall: 0x1000n, ...extra,
  });
  const skips = (vmTypes: VmTypeFacts[], vmTypesCap: number, available = true) => {
    const cases = lifecycleCases({ ...fakeHost(available), vmTypes, vmTypesCap });
    return Object.fromEntries(cases.filter((c) => PRIVATE.includes(c.name)).map((c) => [c.name, c.skipReason]));
  };

  it.runIf(process.arch === 'x64')('each private case is planned after the others, on SW_PROTECTED, and skips naming the missing capability', () => {
    const all = lifecycleCases({ ...fakeHost(), vmTypes: [type(0)], vmTypesCap: 1 });
    expect(all.slice(-4).map((c) => c.name)).toEqual(PRIVATE);
    for (const c of all.slice(-4)) expect(c.vmType).toBe('SW_PROTECTED');
    for (const c of all.slice(0, -4)) expect(c.skipReason).toBeUndefined(); // the default type has MMAP|INIT_SHARED

    for (const r of Object.values(skips([type(0)], 1))) expect(r).toMatch(/^KVM_CAP_VM_TYPES 0x1 lacks KVM_X86_SW_PROTECTED_VM/);
    for (const r of Object.values(skips([type(0), type(1, { createError: 'EINVAL' })], 3))) expect(r).toMatch(/no SW_PROTECTED VM can be created: EINVAL/);
    for (const r of Object.values(skips([type(0), type(1, { memoryAttributes: 0n })], 3))) {
      expect(r).toMatch(/^KVM_CAP_MEMORY_ATTRIBUTES on a SW_PROTECTED VM is 0x0, without KVM_MEMORY_ATTRIBUTE_PRIVATE/);
    }
    for (const r of Object.values(skips([type(0), type(1, { memoryAttributes: 8n, gmemMemslots: false })], 3))) {
      expect(r).toMatch(/^KVM_CAP_GUEST_MEMFD is 0 on a SW_PROTECTED VM/);
    }
    for (const [name, r] of Object.entries(skips([type(0), type(1, { memoryAttributes: 8n, gmemFlags: 0n })], 3))) {
      if (needsMmap.has(name)) expect(r, name).toMatch(/^KVM_CAP_GUEST_MEMFD_FLAGS on a SW_PROTECTED VM is 0x0, without GUEST_MEMFD_FLAG_MMAP/);
      else expect(r, name).toBeUndefined();
    }
    for (const r of Object.values(skips([type(0), type(1, { memoryAttributes: 8n, gmemFlags: 1n })], 3))) expect(r).toBeUndefined();
    // Without usable KVM the harness gives its own reason: none is set here.
    for (const r of Object.values(skips([type(0)], 0, false))) expect(r).toBeUndefined();
  });

  /**
   * A SW_PROTECTED VM with PRIVATE attributes and MMAP guest_memfds, or a skip naming what the host
   * lacks (a failure with KVM_GMEM_REQUIRE_KVM=1: these are security properties, never skipped in CI).
   */
  function mmapSwProtectedVm(ctx: Parameters<typeof openKvm>[0], kvm: Kvm) {
    const vm = swProtectedVm(ctx, kvm);
    if (!(BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS)) & GuestMemfdFlag.MMAP)) {
      vm.close();
      skipOrFail(ctx, 'KVM_CAP_GUEST_MEMFD_FLAGS on a SW_PROTECTED VM lacks GUEST_MEMFD_FLAG_MMAP');
    }
    return vm;
  }

  it('its guest_memfd cannot be mapped with flags 0 (ENODEV); with MMAP it maps, but a host access faults (SIGBUS)', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = mmapSwProtectedVm(ctx, kvm);
    using g0 = vm.createGuestMemfd({ size: MiB });
    expect(() => g0.map()).toThrow(expect.objectContaining({ code: 'ENODEV', syscall: 'mmap' }) as KvmError);
    using g = vm.createGuestMemfd({ size: MiB, flags: GuestMemfdFlag.MMAP });
    using m = g.map();
    expect(() => m.bytes).toThrow(expect.objectContaining({ code: 'ERR_KVM_PRIVATE_MEMORY' }) as Error);
    let err: unknown;
    try {
      m.read(PAGE_SIZE + 8, 8);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(GuestMemoryFaultError);
    expect(err).toMatchObject({ fileOffset: BigInt(PAGE_SIZE + 8), bytesDone: 0, side: 'mapping' });
    expect(() => m.fill(1, 0, PAGE_SIZE)).toThrow(GuestMemoryFaultError);
  });

  it('its guest_memfd keeps the VM: after vm.close() it allocates and punches, and its memory is still not the host\'s', (ctx) => {
    using kvm = openKvm(ctx);
    const vm = mmapSwProtectedVm(ctx, kvm);
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: GuestMemfdFlag.MMAP });
    vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 1 << 30, memorySize: 4 * MiB, userspaceAddr: 0, guestMemfd: g });
    vm.setMemoryAttributes(1 << 30, 4 * MiB, MemoryAttribute.PRIVATE);
    vm.close();
    expect(countFds('kvm-vm')).toBe(0);
    g.allocate(0, 4 * MiB);
    g.punchHole(MiB, PAGE_SIZE);
    g.punchHole(0, 4 * MiB);
    g.allocate(0, 4 * MiB);
    expect(g.stat().size).toBe(BigInt(4 * MiB));
    using m = g.map();
    expect(() => m.read(0, 1)).toThrow(GuestMemoryFaultError);
  });
});

describe('fd hygiene', () => {
  it('leaks no fd over 10,000 guest_memfd create/close cycles (and VM create/close)', (ctx) => {
    using kvm = openKvm(ctx);
    const before = openFds().size;
    using vm = kvm.createVm();
    for (let i = 0; i < 10_000; i++) vm.createGuestMemfd({ size: PAGE_SIZE }).close();
    for (let i = 0; i < 200; i++) kvm.createVm().close();
    vm.close();
    expect(openFds().size).toBe(before);
    expect(countFds('kvm-gmem')).toBe(0);
  });

  it('a child spawned with child_process inherits none of the library fds', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    m.bytes.fill(1);
    const mine = [kvm.fd, vm.fd, g.fd];
    // The child lists its own fds with their targets.
    const r = spawnSync('sh', ['-c', 'for f in /proc/self/fd/*; do echo "$f $(readlink $f)"; done'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(/kvm/);
    for (const fd of mine) expect(r.stdout).not.toMatch(new RegExp(`/proc/self/fd/${fd} `));
  });

  // Runs a module in a separate Node process with --expose-gc, using the built package; `gc()`
  // there collects until `done()` is true or 20 rounds passed. Returns what the script printed.
  function inChildWithGc(body: string): unknown {
    const script = `
      import { Kvm, GuestMemfdFlag } from ${JSON.stringify(root + 'dist/index.js')};
      import { closeSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
      const links = () => readdirSync('/proc/self/fd').map((n) => { try { return readlinkSync('/proc/self/fd/' + n); } catch { return ''; } });
      const gmemFds = () => links().filter((l) => l.includes('kvm-gmem')).length;
      const gmemMaps = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('kvm-gmem')).length;
      const collect = async (done) => { for (let i = 0; i < 20 && !done(); i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); } };
      ${body}
    `;
    const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    return JSON.parse(r.stdout);
  }

  it('closes guest_memfds and unmaps mappings dropped without close() once collected (safety net)', (ctx) => {
    openKvm(ctx).close(); // skips (or fails under KVM_GMEM_REQUIRE_KVM) without a usable /dev/kvm
    const out = inChildWithGc(`
      const kvm = Kvm.open();
      const vm = kvm.createVm();
      (() => {
        for (let i = 0; i < 10; i++) vm.createGuestMemfd({ size: 4096, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED }).map().bytes[0] = 1;
      })();
      const before = { fds: gmemFds(), maps: gmemMaps() };
      await collect(() => gmemFds() === 0 && gmemMaps() === 0);
      console.log(JSON.stringify({ before, after: { fds: gmemFds(), maps: gmemMaps() }, vmStillOpen: vm.checkExtension(234) === 1 }));
    `);
    expect(out).toEqual({ before: { fds: 10, maps: 10 }, after: { fds: 0, maps: 0 }, vmStillOpen: true });
  });

  it('the safety net leaves alone a reused fd number that now belongs to another guest_memfd', (ctx) => {
    openKvm(ctx).close();
    const out = inChildWithGc(`
      const vm = Kvm.open().createVm();
      let old;
      (() => {
        const g = vm.createGuestMemfd({ size: 4096 });
        old = g.fd;
        closeSync(g.fd); // behind the library's back: the object is dropped still thinking it owns the fd
      })();
      const g2 = vm.createGuestMemfd({ size: 8192 }); // takes the freed number
      await collect(() => false);
      console.log(JSON.stringify({ reused: g2.fd === old, size: String(g2.stat().size) }));
    `);
    expect(out).toEqual({ reused: true, size: '8192' });
  });
});
