// Real guests on guest_memfd memory: what the guest sees of the host's writes and the host of the
// guest's, punching memory under a running guest, and the exits KVM gives for I/O, MMIO, HLT and
// a triple fault. Every guest is assembly from guest/, assembled by the build.
import { describe, expect, it } from 'vitest';
import { bootGuest, getUcall, GuestAssertionError, guestImage, replyUcall, runUntilUcall, runUntilUcallSync, UnexpectedExitError, X86 } from '../lib/guest/index.js';
import { ExitReason, Mapping, type IoExit, type MmioExit } from '../lib/index.js';
import { DATA, guestVm, imageAddress, MiB } from './guest-vm.js';
import { thrown } from './kvm-host.js';

describe('a guest on guest_memfd memory', () => {
  it('binding is exclusive only for KVM_MEM_GUEST_MEMFD: another VM runs on the same pages through a plain memslot over the mapping', async (ctx) => {
    using g = guestVm(ctx); // VM A: the guest_memfd is bound to it
    const size = 64 * 1024;
    g.mem.fill(0x5a, DATA, DATA + size);
    using vmB = g.kvm.createVm();
    using code = Mapping.anonymous(2 * MiB);
    vmB.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: code });
    const at = 8 * MiB;
    // The guest_memfd itself is refused to VM B...
    expect(thrown(() => vmB.setUserMemoryRegion2({
      slot: 1, guestPhysAddr: at, memorySize: g.map.length, userspaceAddr: g.map, guestMemfd: g.gmem,
    }))).toMatchObject({ code: 'EINVAL' });
    // ...but its mapping is ordinary memory to a plain memslot, and VM B's guest uses it.
    vmB.setUserMemoryRegion2({ slot: 1, guestPhysAddr: at, memorySize: g.map.length, userspaceAddr: g.map });
    using vcpu = vmB.createVcpu(0);
    bootGuest(vcpu, { image: guestImage('memtest'), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000, args: [at + DATA, size, 0x5a, 0xa5] });
    expect((await runUntilUcall(vcpu)).cmd).toBe('sync'); // it read VM A's 0x5a...
    expect(g.mem.subarray(DATA, DATA + size).every((b) => b === 0xa5)).toBe(true); // ...and VM A's memory holds its 0xa5
  });

  it('reads the bytes the host wrote and writes bytes the host reads, with no copy (guest_memfd_test guest case)', async (ctx) => {
    using g = guestVm(ctx);
    const size = 2 * MiB;
    g.mem.fill(0xaa, DATA, DATA + size);
    const vcpu = g.boot(0, 'memtest', [DATA, size, 0xaa, 0xff]);
    const sync = await runUntilUcall(vcpu);
    expect(sync.cmd).toBe('sync');
    expect(sync.args).toEqual([BigInt(DATA), BigInt(size), 0xaan, 0xffn]);
    // The guest's writes are in the file itself: a second, independent mapping sees them.
    using again = g.gmem.map(DATA, size);
    expect(again.bytes.every((b) => b === 0xff)).toBe(true);
    expect(g.mem.subarray(DATA, DATA + size).every((b) => b === 0xff)).toBe(true);
    // Bytes outside the range are untouched.
    expect(g.mem[DATA - 1]).toBe(0);
    expect(g.mem[DATA + size]).toBe(0);
    replyUcall(vcpu, sync, [0, 0, 0, 0, 1]);
    expect((await runUntilUcall(vcpu)).cmd).toBe('done');
  });

  it('fails its own check (a GuestAssertionError with the address) when the host wrote something else', async (ctx) => {
    using g = guestVm(ctx);
    g.mem.fill(0xaa, DATA, DATA + 4096);
    g.mem[DATA + 100] = 0x42;
    const vcpu = g.boot(0, 'memtest', [DATA, 4096, 0xaa, 0xff]);
    const e = await runUntilUcall(vcpu).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(GuestAssertionError);
    const uc = (e as GuestAssertionError).ucall;
    expect(uc.message).toBe('memtest: byte mismatch');
    expect(uc.args).toEqual([BigInt(DATA + 100), 0x42n, 0xaan]);
  });

  it('reads zeros where the host punched a hole between two exits', (ctx) => {
    using g = guestVm(ctx);
    const size = MiB;
    g.mem.fill(0xaa, DATA, DATA + size);
    const vcpu = g.boot(0, 'memtest', [DATA, size, 0xaa, 0xff]);
    const first = runUntilUcallSync(vcpu);
    expect(first.cmd).toBe('sync');
    const hole = DATA + 256 * 1024;
    const holeLen = 128 * 1024;
    g.gmem.punchHole(hole, holeLen);
    expect(g.mem.subarray(hole, hole + holeLen).every((b) => b === 0)).toBe(true);
    // Next job: the guest checks the hole reads as zeros (it would ABORT otherwise), fills 0x11.
    replyUcall(vcpu, first, [hole, holeLen, 0, 0x11, 0]);
    const second = runUntilUcallSync(vcpu);
    expect(second.cmd).toBe('sync');
    expect(second.args).toEqual([BigInt(hole), BigInt(holeLen), 0n, 0x11n]);
    expect(g.mem.subarray(hole, hole + holeLen).every((b) => b === 0x11)).toBe(true);
    expect(g.mem[hole - 1]).toBe(0xff);
    expect(g.mem[hole + holeLen]).toBe(0xff);
    // And the rest of the memory kept the guest's 0xff: the guest checks it too.
    replyUcall(vcpu, second, [DATA, hole - DATA, 0xff, 0xff, 0]);
    expect(runUntilUcallSync(vcpu).cmd).toBe('sync');
    replyUcall(vcpu, second, [0, 0, 0, 0, 1]);
    expect(runUntilUcallSync(vcpu).cmd).toBe('done');
  });

  it('exits as MMIO with the right address, length and data for accesses outside every memslot; port IN takes the host data', (ctx) => {
    using g = guestVm(ctx);
    const mmio = 0x2000_0000; // inside the identity map, outside the 4 MiB slot
    const vcpu = g.boot(0, 'devices', [mmio]);

    const inExit = vcpu.run() as IoExit;
    expect(inExit).toMatchObject({ reason: 'io', exitReason: ExitReason.IO, direction: 'in', port: 0x11, size: 4, count: 1 });
    new DataView(inExit.data.buffer, inExit.data.byteOffset, 4).setUint32(0, 0xdeadbeef, true);
    expect(runUntilUcallSync(vcpu).args).toEqual([0xdeadbeefn]);

    const read = vcpu.run() as MmioExit;
    expect(read).toMatchObject({ reason: 'mmio', exitReason: ExitReason.MMIO, address: BigInt(mmio), length: 8, isWrite: false });
    new DataView(read.data.buffer, read.data.byteOffset, 8).setBigUint64(0, 0x1122334455667788n, true);
    expect(runUntilUcallSync(vcpu).args).toEqual([0x1122334455667788n]);

    const writeByte = vcpu.run() as MmioExit;
    expect(writeByte).toMatchObject({ reason: 'mmio', address: BigInt(mmio), length: 1, isWrite: true });
    expect([...writeByte.data]).toEqual([0x5a]);
    const writeLong = vcpu.run() as MmioExit;
    expect(writeLong).toMatchObject({ reason: 'mmio', address: BigInt(mmio + 8), length: 4, isWrite: true });
    expect(Buffer.from(writeLong.data).readUInt32LE(0)).toBe(0x12345678);
    expect(runUntilUcallSync(vcpu).cmd).toBe('done');
  });

  it('prints to the console port and reports a sum of host-written bytes (the hello guest)', async (ctx) => {
    using g = guestVm(ctx);
    for (let i = 0; i < 1000; i++) g.mem[DATA + i] = i & 0xff;
    const expected = Array.from({ length: 1000 }, (_, i) => i & 0xff).reduce((a, b) => a + b, 0);
    const vcpu = g.boot(0, 'hello', [DATA, 1000]);
    let out = '';
    const sync = await runUntilUcall(vcpu, { console: (t) => (out += t) });
    expect(sync.args).toEqual([BigInt(expected)]);
    expect(out).toBe('Hello from guest code on guest_memfd memory!\n');
    expect((await runUntilUcall(vcpu, { console: (t) => (out += t) })).cmd).toBe('done');
    expect(out.endsWith('bye\n')).toBe(true);
  });

  it('exits with hlt for HLT, and with shutdown for a triple fault (ud2 with no IDT)', (ctx) => {
    using g = guestVm(ctx);
    const halt = g.boot(0, 'halt');
    expect(halt.run()).toEqual({ reason: 'hlt', exitReason: ExitReason.HLT });
    const fault = g.boot(1, 'fault');
    expect(fault.run()).toEqual({ reason: 'shutdown', exitReason: ExitReason.SHUTDOWN });
    // The ucall loop refuses to treat either as a call.
    expect(() => runUntilUcallSync(halt)).toThrow(UnexpectedExitError);
  });

  it('runs in 64-bit long mode at the loaded address, and its registers are readable between exits', (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'port_loop', [3]);
    const s = vcpu.getSregs();
    expect(s.efer & X86.EFER_LMA).toBe(X86.EFER_LMA);
    expect(s.cs.l).toBe(1);
    expect(s.cr3).toBe(0x1000n);
    // An exit's data is a view into kvm_run, valid until the next run: read it at once.
    const seen = [1, 2, 3].map(() => {
      const e = vcpu.run() as IoExit;
      return [e.port, e.data[0]];
    });
    expect(seen).toEqual([[0x10, 3], [0x10, 2], [0x10, 1]]);
    const r = vcpu.getRegs();
    expect(r.rcx).toBe(1n); // the loop counter: the third OUT, not yet decremented
    expect(r.rdi).toBe(3n);
    expect(r.rip > BigInt(imageAddress(0)) && r.rip < BigInt(imageAddress(0) + 20)).toBe(true);
    expect(vcpu.run().reason).toBe('hlt');
    // Registers written by the host are what the guest runs with: restart the loop from rdi = 2.
    vcpu.setRegs({ ...vcpu.getRegs(), rip: BigInt(imageAddress(0)), rdi: 2n });
    expect([vcpu.run(), vcpu.run(), vcpu.run()].map((e) => e.reason)).toEqual(['io', 'io', 'hlt']);
  });

  it('getUcall ignores exits that are not calls', (ctx) => {
    using g = guestVm(ctx);
    const vcpu = g.boot(0, 'port_loop', [1]);
    expect(getUcall(vcpu, vcpu.run())).toBeUndefined();
    expect(getUcall(vcpu, vcpu.run())).toBeUndefined(); // hlt
  });
});
