// Lifetimes as the kernel has them (see ../shared/seeds/000: the guest_memfd pins its VM),
// fd hygiene (no leaks, nothing inherited by children) and the garbage-collection safety net.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Cap, GuestMemfdFlag, PAGE_SIZE } from '../lib/index.js';
import { countFds, openFds, openKvm } from './kvm-host.js';

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
    // The mapping is not shared with the child either (sh's maps has no guest memory).
    const maps = spawnSync('cat', ['/proc/self/maps'], { encoding: 'utf8' });
    expect(maps.stdout).not.toContain('kvm-gmem');
  });

  it('closes fds and unmaps mappings of objects dropped without close() once collected (safety net)', (ctx) => {
    openKvm(ctx).close(); // skips (or fails under KVM_GMEM_REQUIRE_KVM) without a usable /dev/kvm
    // A separate Node process with --expose-gc, using the built package.
    const script = `
      import { Kvm, GuestMemfdFlag } from ${JSON.stringify(root + 'dist/index.js')};
      import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
      const gmemMaps = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('kvm-gmem')).length;
      const kvmFds = () => readdirSync('/proc/self/fd').filter((n) => { try { return readlinkSync('/proc/self/fd/' + n).includes('kvm'); } catch { return false; } }).length;
      (() => {
        const kvm = Kvm.open();
        const vm = kvm.createVm();
        for (let i = 0; i < 10; i++) vm.createGuestMemfd({ size: 4096, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED }).map().bytes[0] = 1;
      })();
      const before = kvmFds();
      const mapsBefore = gmemMaps();
      for (let i = 0; i < 20 && (kvmFds() > 0 || gmemMaps() > 0); i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
      console.log(JSON.stringify({ before, after: kvmFds(), mapsBefore, mapsAfter: gmemMaps() }));
    `;
    const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { before: number; after: number; mapsBefore: number; mapsAfter: number };
    expect(out).toEqual({ before: 12, after: 0, mapsBefore: 10, mapsAfter: 0 }); // /dev/kvm, the VM, 10 guest_memfds and their mappings
  });
});
