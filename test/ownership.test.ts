// Who owns what, and when arguments are read (issue 11, items 1, 4, 5 and 6): a memslot keeps
// its host range mapped however its address was given; an fd has one owner (adopt/fromFd refuse
// a number a live object owns, or take a duplicate), and the leak safety net closes only its
// own; an adopted guest_memfd's INIT_SHARED claim is checked; every argument is taken (getters,
// toJSON) before any fd or address is read.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { GuestMemfd, GuestMemfdFlag, KvmStateError, Mapping, MemslotFlag, type Vm } from '../lib/index.js';
import { FdChannel } from '../lib/ipc/index.js';
import { fdLink, gmemVm, isCloexec, onNumber, thrown } from './kvm-host.js';

const MMAP = GuestMemfdFlag.MMAP;
const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;
const root = fileURLToPath(new URL('..', import.meta.url));

// A full garbage collection on demand, in this process (vitest runs each file in a fork).
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Collects garbage and lets finalizers (FinalizationRegistry, ArrayBuffer) run: `rounds` times. */
async function collect(rounds = 8): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The /proc/self/maps line of the mapping that starts at `address`, if any. */
function mapsLineAt(address: bigint): string | undefined {
  const start = address.toString(16);
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${start}-`));
}

/** Whether a guest_memfd mapping starts at `address` (its /proc/self/maps line names the file). */
function gmemMappedAt(address: bigint): boolean {
  return mapsLineAt(address)?.includes('kvm-gmem') ?? false;
}

describe('a memslot keeps the host range it points at mapped', () => {
  // Sets slot 1 at `address` of a fresh mapping of g, given as the Mapping or as its number,
  // and lets go of every reference to the Mapping.
  function slotOverDroppedMapping(vm: Vm, g: GuestMemfd, given: 'mapping' | 'number'): bigint {
    const m = g.map();
    m.bytes[0] = 0x5a;
    vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 0x100000, memorySize: 2 * MiB, userspaceAddr: given === 'mapping' ? m : m.address });
    return m.address;
  }

  it.for(['mapping', 'number'] as const)(
    'slot set with the address as a %s, flags changed with the numeric address: the range stays mapped until the slot is deleted',
    async (given, ctx) => {
      using vm = gmemVm(ctx, SHARED);
      using g = vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED });
      const address = slotOverDroppedMapping(vm, g, given);
      // A legal flags-only update (same slot, GPA, size and host address).
      vm.setUserMemoryRegion2({ slot: 1, flags: MemslotFlag.LOG_DIRTY_PAGES, guestPhysAddr: 0x100000, memorySize: 2 * MiB, userspaceAddr: address });
      expect(vm.memslots.get(1)?.flags).toBe(MemslotFlag.LOG_DIRTY_PAGES);
      await collect();
      // The kernel still points at the range: it must still be the guest_memfd mapping.
      expect(gmemMappedAt(address), mapsLineAt(address) ?? `nothing mapped at 0x${address.toString(16)}`).toBe(true);
      vm.deleteMemoryRegion(1);
      // Once the slot is gone nothing holds the range: it is unmapped (the rounds above suffice).
      await collect();
      expect(gmemMappedAt(address)).toBe(false);
    },
  );
});

describe('one owner per fd', () => {
  it('adopt() and fromFd() refuse an fd that a live object owns (ERR_KVM_FD_OWNED) and take a duplicate with { dup: true }', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const e = thrown(() => GuestMemfd.adopt(g.fd, { size: MiB, flags: SHARED }));
    expect(e).toBeInstanceOf(KvmStateError);
    expect(e.code).toBe('ERR_KVM_FD_OWNED');
    expect(e.message).toMatch(/"fd" argument \(fd \d+\) is owned by a live GuestMemfd/);
    {
      using copy = GuestMemfd.adopt(g.fd, { size: MiB, flags: SHARED, dup: true });
      expect(copy.fd).not.toBe(g.fd);
      expect(isCloexec(copy.fd)).toBe(true);
      expect(copy.stat().ino).toBe(g.stat().ino);
    }
    expect(g.stat().size).toBe(BigInt(MiB)); // the original is untouched by the copy's close

    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    expect(thrown(() => FdChannel.fromFd(a.fd)).code).toBe('ERR_KVM_FD_OWNED');
    {
      using a2 = FdChannel.fromFd(a.fd, { dup: true });
      expect(a2.fd).not.toBe(a.fd);
      a2.send('via the copy', [g]);
    }
    // A received fd belongs to its message until taken: its number cannot be adopted meanwhile.
    using m = await b.receive({ timeoutMs: 5000 });
    expect(m.payload).toBe('via the copy');
    const f = m.fds[0]!;
    expect(thrown(() => GuestMemfd.adopt(f.fd, { size: MiB, flags: SHARED })).code).toBe('ERR_KVM_FD_OWNED');
    using adopted = GuestMemfd.adopt(f, { size: MiB, flags: SHARED });
    expect(f.closed).toBe(true);
    expect(adopted.stat().ino).toBe(g.stat().ino);
    expect(thrown(() => GuestMemfd.adopt(adopted.fd, { size: MiB, flags: SHARED })).code).toBe('ERR_KVM_FD_OWNED');
    expect(thrown(() => GuestMemfd.adopt(g.fd, { size: MiB, flags: SHARED, dup: 1 as never }))).toBeInstanceOf(TypeError);
  });

  it('an options getter that closes the owner and reuses its number cannot make a second owner: the safety net never closes the new owner', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    const g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const n = g.fd;
    let g2: GuestMemfd | undefined;
    let err: unknown;
    (() => {
      try {
        GuestMemfd.adopt(n, {
          flags: SHARED,
          get size() {
            g.close();
            g2 = onNumber(n, () => vm.createGuestMemfd({ size: MiB, flags: SHARED }));
            return MiB;
          },
        }); // if it were adopted, the result is dropped here: only the safety net could close it
      } catch (e) {
        err = e;
      }
    })();
    expect(g2?.fd).toBe(n);
    const ino = g2!.stat().ino;
    await collect();
    // g2 still owns its fd, and it is still g2's file.
    expect(g2!.stat().ino).toBe(ino);
    expect(fdLink(n)).toMatch(/kvm-gmem/);
    expect(err).toBeInstanceOf(KvmStateError);
    expect((err as KvmStateError).code).toBe('ERR_KVM_FD_OWNED');
    g2!.close();
  });

  it('punchHole() on an adopted copy punches its own file, never the guest_memfd that reuses the original number', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    const g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const n = g.fd;
    using gm = g.map();
    gm.bytes.fill(0x11);
    using copy = GuestMemfd.adopt(n, { size: MiB, flags: SHARED, dup: true });
    g.close();
    using g2 = onNumber(n, () => vm.createGuestMemfd({ size: MiB, flags: SHARED }));
    using m2 = g2.map();
    m2.bytes.fill(0x22);
    copy.punchHole(0, MiB);
    expect(m2.bytes[0]).toBe(0x22);
    expect(m2.bytes[MiB - 1]).toBe(0x22);
    expect(gm.bytes[0]).toBe(0); // the copy's file (g's) was punched
  });
});

/**
 * A module of the library's compiled output (dist/), which child processes import, checked to
 * contain `marker` (something this suite needs from it).
 */
function distModule(name: string, marker: string): string {
  const path = join(root, 'dist', `${name}.js`);
  if (!existsSync(path) || !readFileSync(path, 'utf8').includes(marker)) {
    throw new Error(`${path} is missing or stale: run \`npm run build\` (npm test does it first)`);
  }
  return JSON.stringify(path);
}

describe('the INIT_SHARED claim of an adopted guest_memfd is checked', () => {
  it('a file made without INIT_SHARED and claimed with it is refused (ERR_KVM_FLAGS_MISMATCH): bytes never touches private memory', (ctx) => {
    gmemVm(ctx, MMAP).close(); // skips without KVM or the flag
    // In a child process: trusting the claim would let `bytes` hand out private memory, and the
    // first touch kill the process with SIGBUS.
    const script = `
      import { Kvm, GuestMemfd, GuestMemfdFlag } from ${distModule('index', 'GuestMemfd')};
      import {} from ${distModule('kvm/adopt', 'dupCloexec')};
      const kvm = Kvm.open();
      const vm = kvm.createVm();
      const g = vm.createGuestMemfd({ size: 1 << 20, flags: GuestMemfdFlag.MMAP });
      let out;
      try {
        const a = GuestMemfd.adopt(g.fd, { size: 1 << 20, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED, dup: true });
        out = { adopted: true, byte: a.map().bytes[0] };
      } catch (e) {
        out = { name: e.name, code: e.code, message: e.message };
      }
      process.stdout.write(JSON.stringify(out));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect({ signal: r.signal, status: r.status, stderr: r.stderr }).toEqual({ signal: null, status: 0, stderr: '' });
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'RangeError', code: 'ERR_KVM_FLAGS_MISMATCH' });
    expect((JSON.parse(r.stdout) as { message: string }).message).toMatch(/private memory.*INIT_SHARED/);
  });

  it('honest claims are adopted; a shared file claimed private is refused too', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using priv = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    using shared = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    {
      using a = GuestMemfd.adopt(priv.fd, { size: MiB, flags: MMAP, dup: true });
      using m = a.map();
      expect(thrown(() => m.bytes).code).toBe('ERR_KVM_PRIVATE_MEMORY');
    }
    {
      using a = GuestMemfd.adopt(shared.fd, { size: MiB, flags: SHARED, dup: true });
      using m = a.map();
      expect(m.bytes[0]).toBe(0);
    }
    const e = thrown(() => GuestMemfd.adopt(shared.fd, { size: MiB, flags: MMAP, dup: true }));
    expect(e).toBeInstanceOf(RangeError);
    expect(e.code).toBe('ERR_KVM_FLAGS_MISMATCH');
  });
});

describe('every argument is taken before an fd or an address is read', () => {
  it('send(): a payload toJSON that closes an item and reuses its number is refused (ERR_KVM_CLOSED); nothing is sent', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    const g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const n = g.fd;
    let g2: GuestMemfd | undefined;
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    const payload = {
      toJSON() {
        g.close();
        g2 = onNumber(n, () => vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED }));
        return 'payload';
      },
    };
    let err: unknown;
    try {
      a.send(payload, [g]);
    } catch (e) {
      err = e;
    }
    using _g2 = g2!;
    expect(g2!.fd).toBe(n);
    if (err === undefined) {
      // Sent anyway: it must at least be g's file (1 MiB), never g2's (2 MiB) that took its number.
      using m = await b.receive({ timeoutMs: 5000 });
      using _got = GuestMemfd.adopt(m.fds[0]!, { size: MiB, flags: SHARED });
    }
    expect(err).toBeInstanceOf(KvmStateError);
    expect((err as KvmStateError).code).toBe('ERR_KVM_CLOSED');
    expect((err as KvmStateError).message).toMatch(/items\[0\]/);
    await expect(b.receive({ timeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
  });

  it('setUserMemoryRegion2(): a getter that closes the GuestMemfd and reuses its number is refused (ERR_KVM_CLOSED); the other file is not bound', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    const g = vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED });
    const n = g.fd;
    let g2: GuestMemfd | undefined;
    const region = {
      slot: 1,
      guestMemfd: g,
      guestPhysAddr: 0,
      get memorySize() {
        g.close();
        g2 = onNumber(n, () => vm.createGuestMemfd({ size: 2 * MiB, flags: SHARED }));
        return 2 * MiB;
      },
    };
    const e = thrown(() => vm.setUserMemoryRegion2(region));
    using _g2 = g2!;
    expect(g2!.fd).toBe(n);
    expect(e).toBeInstanceOf(KvmStateError);
    expect(e.code).toBe('ERR_KVM_CLOSED');
    expect(e.message).toMatch(/guestMemfd/);
    expect(vm.memslots.has(1)).toBe(false);
    // g2's range is not bound anywhere: another slot can take it.
    vm.setUserMemoryRegion2({ slot: 2, guestPhysAddr: 4 * MiB, memorySize: 2 * MiB, guestMemfd: g2! });
  });

  it('setUserMemoryRegion2(): a getter that closes the Mapping given as userspaceAddr is refused (ERR_KVM_CLOSED)', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    const m = Mapping.anonymous(2 * MiB);
    const e = thrown(() =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0,
        memorySize: 2 * MiB,
        userspaceAddr: m,
        get guestMemfdOffset() {
          m.close();
          return 0;
        },
      }),
    );
    expect(e).toBeInstanceOf(KvmStateError);
    expect(e.code).toBe('ERR_KVM_CLOSED');
    expect(vm.memslots.has(1)).toBe(false);
  });
});
