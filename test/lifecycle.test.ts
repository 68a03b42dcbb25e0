// Lifetimes as the kernel has them (https://lore.kernel.org/r/ZNKv9ul2I7A4V7IF@google.com: the guest_memfd pins its VM),
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
