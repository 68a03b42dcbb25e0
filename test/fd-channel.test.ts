// Passing fds over Unix sockets (FdChannel, FdListener) and adopting a received guest_memfd.
import { describe, expect, it } from 'vitest';
import { GuestMemfd, GuestMemfdFlag, KvmStateError, PAGE_SIZE } from '../lib/index.js';
import { FdChannel, MAX_FDS } from '../lib/fd-channel.js';
import { native } from '../lib/native.js';
import { fdLink, isCloexec, openFds, openKvm } from './kvm-host.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;

describe('FdChannel in one process', () => {
  it('pair: a payload and several fds round trip, in order, close-on-exec, of the right kinds', async (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using vcpu = vm.createVcpu(0);
    const memfd = native.memfdCreate('kvm-gmem-plain');
    const [a, b] = FdChannel.pair();
    try {
      expect(isCloexec(a.fd) && isCloexec(b.fd)).toBe(true);
      a.send({ size: MiB, note: 'héllo' }, [g, vm, vcpu, memfd, kvm]);
      using msg = await b.receive();
      expect(msg.payload).toEqual({ size: MiB, note: 'héllo' });
      expect(msg.fds.map((f) => f.kind)).toEqual(['guest_memfd', 'vm', 'vcpu', 'other', 'kvm']);
      expect(msg.fds[3]!.link).toBe('/memfd:kvm-gmem-plain (deleted)');
      for (const f of msg.fds) {
        expect(isCloexec(f.fd)).toBe(true);
        expect(fdLink(f.fd)).toBe(f.link);
      }
    } finally {
      a.close();
      b.close();
      native.close(memfd);
    }
  });

  it('adopting a received guest_memfd: same memory, allocate and punch seen by the sender', async (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using mine = g.map();
    mine.bytes.fill(0x5a);
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    a.send({ size: 4 * MiB, flags: Number(SHARED) }, [g]);
    using msg = await b.receive();
    const p = msg.payload as { size: number; flags: number };
    using adopted = GuestMemfd.adopt(msg.fds[0]!, p);
    expect(msg.fds[0]!.closed).toBe(true); // taken by the GuestMemfd
    expect(adopted.size).toBe(BigInt(4 * MiB));
    expect(adopted.flags).toBe(SHARED);
    expect(adopted.stat().ino).toBe(g.stat().ino);
    using theirs = adopted.map();
    expect(theirs.bytes[12345]).toBe(0x5a);
    adopted.punchHole(MiB, PAGE_SIZE);
    expect(mine.bytes[MiB]).toBe(0);
    adopted.allocate(0, 4 * MiB);
    theirs.bytes[2 * MiB] = 7;
    expect(mine.bytes[2 * MiB]).toBe(7);
  });

  it('too many fds on send is a RangeError before any system call', () => {
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    expect(() => a.send(null, new Array(MAX_FDS + 1).fill(0))).toThrow(RangeError);
  });

  it('a receive that waits is cut short by close() and by its timeout', async () => {
    const [a, b] = FdChannel.pair();
    using _a = a;
    const t0 = performance.now();
    await expect(b.receive({ timeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(45);
    const p = b.receive();
    b.close();
    await expect(p).rejects.toBeInstanceOf(KvmStateError);
    await expect(p).rejects.toMatchObject({ code: 'ERR_KVM_CLOSED' });
    expect(openFds().size).toBeGreaterThan(0);
  });
});
