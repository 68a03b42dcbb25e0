// Adopting VM and vCPU fds that came from elsewhere (Vm.adopt, vm.adoptVcpu): from a child
// process over an FdChannel (KVM ties a VM to its creator's mm: every ioctl is EIO), from this
// process (a duplicate or a received copy: everything works), and the refusals. The child runs
// the built package (dist/: `npm run build` first), through its public entry points.
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Cap, GuestMemfdFlag, KvmError, KvmStateError, MemslotFlag, Vcpu, Vm, VmType } from '../lib/index.js';
import { FdChannel, type ReceivedFd } from '../lib/ipc/index.js';
import { fdLink, gmemVm, hangBound, isCloexec, openKvm, thrown } from './kvm-host.js';
import { ROOT } from './paths.js';

const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-adopt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A child Node process with `end` as its fd 3: it creates a VM and vCPU 0 with the built package,
 * sends both, and waits for a word back before it exits. Resolves with its exit code and stderr.
 */
function vmFromChild(end: FdChannel): Promise<{ code: number | null; stderr: string }> {
  const script = `
    import { Kvm } from ${JSON.stringify(join(ROOT, 'dist', 'index.js'))};
    import { FdChannel } from ${JSON.stringify(join(ROOT, 'dist', 'ipc', 'index.js'))};
    const chan = FdChannel.fromFd(3);
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const vcpu = vm.createVcpu(0);
    chan.send({ pid: process.pid }, [vm, vcpu]);
    await chan.receive({ timeoutMs: 60_000 });
  `;
  const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe', end.fd] });
  end.close();
  let stderr = '';
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => p.kill('SIGKILL'), hangBound(60_000));
  return new Promise((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

describe('Vm.adopt and vm.adoptVcpu: fds from another process', () => {
  it('adopts the VM and vCPU fds a child sent; every VM and vCPU ioctl on them is EIO; closing them works', async (ctx) => {
    using kvm = openKvm(ctx);
    const [here, there] = FdChannel.pair();
    using _here = here;
    const done = vmFromChild(there);
    using msg = await here.receive({ timeoutMs: hangBound(30_000) });
    expect(msg.fds.map((f) => f.kind)).toEqual(['vm', 'vcpu']);
    const [vmFd, vcpuFd] = msg.fds as [ReceivedFd, ReceivedFd];

    using vm = Vm.adopt(vmFd, { kvm });
    expect(vm).toBeInstanceOf(Vm);
    expect(vmFd.closed).toBe(true); // taken from the message
    expect(vm.fd).toBe(vmFd.fd);
    expect(vm.type).toBe(VmType.DEFAULT);
    expect(isCloexec(vm.fd)).toBe(true);
    // KVM ties a VM to its creator's mm: the VM ioctls refuse this process.
    expect(thrown(() => vm.checkExtension(Cap.GUEST_MEMFD))).toMatchObject({ name: 'KvmError', code: 'EIO', request: 'KVM_CHECK_EXTENSION' });
    const gm = thrown(() => vm.createGuestMemfd({ size: MiB }));
    expect(gm).toBeInstanceOf(KvmError);
    expect(gm.code).toBe('EIO');

    // The wrong id is refused and the fd stays the message's.
    const wrong = thrown(() => vm.adoptVcpu(vcpuFd, 1));
    expect(wrong).toBeInstanceOf(RangeError);
    expect(wrong.code).toBe('ERR_KVM_VCPU_ID_MISMATCH');
    expect(vcpuFd.closed).toBe(false);
    using vcpu = vm.adoptVcpu(vcpuFd, 0);
    expect(vcpu).toBeInstanceOf(Vcpu);
    expect(vcpuFd.closed).toBe(true);
    expect(vcpu.id).toBe(0);
    expect(vcpu.vm).toBe(vm);
    expect(fdLink(vcpu.fd)).toBe('anon_inode:kvm-vcpu:0');
    expect(isCloexec(vcpu.fd)).toBe(true);
    expect(thrown(() => vcpu.getRegs())).toMatchObject({ name: 'KvmError', code: 'EIO', request: 'KVM_GET_REGS' });

    here.send('bye');
    const r = await done;
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // The child is gone; the adopted fds still close like any others.
    const [v, c] = [vm.fd, vcpu.fd];
    vcpu.close();
    vm.close();
    expect(() => fdLink(v)).toThrow();
    expect(() => fdLink(c)).toThrow();
    vm.close(); // idempotent
  }, hangBound(90_000));
});

describe('Vm.adopt and vm.adoptVcpu: fds of this process', () => {
  it('a duplicate of a VM fd is the same VM: its guest_memfd binds into the original, and the capabilities agree', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using kvm = openKvm(ctx);
    using copy = Vm.adopt(vm.fd, { kvm, dup: true });
    expect(copy.fd).not.toBe(vm.fd);
    expect(isCloexec(copy.fd)).toBe(true);
    expect(fdLink(copy.fd)).toBe('anon_inode:kvm-vm');
    expect(copy.checkExtension(Cap.GUEST_MEMFD)).toBe(vm.checkExtension(Cap.GUEST_MEMFD));
    expect(copy.checkExtension(Cap.GUEST_MEMFD_FLAGS)).toBe(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
    expect(copy.supportedCpuid().length).toBeGreaterThan(0);
    // A guest_memfd binds only into the VM that created it: the original VM takes this one.
    using g = copy.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    vm.setUserMemoryRegion2({ slot: 0, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: m, guestMemfd: g });
    expect(vm.memslots.get(0)?.guestMemfd).toBe(g);
    copy.close();
    expect(vm.checkExtension(Cap.GUEST_MEMFD)).toBe(1); // the original is untouched by the copy's close
  });

  it('a raw VM fd number is taken over; a received vCPU is adopted once its Vcpu here is closed, and reads the registers it had', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using kvm = openKvm(ctx);
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    const vcpu = vm.createVcpu(0);
    vcpu.setRegs({ ...vcpu.getRegs(), rax: 0x1234_5678_9abcn, rflags: 2n });
    a.send(null, [vm, vcpu]);
    using msg = await b.receive({ timeoutMs: hangBound(10_000) });

    const n = msg.fds[0]!.take();
    const adopted = Vm.adopt(n, { kvm, type: VmType.DEFAULT });
    expect(adopted.fd).toBe(n);
    expect(adopted.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
    // One runner per vCPU file in the process: refused while the Vcpu made here lives, and the
    // received fd stays the message's.
    const busy = thrown(() => adopted.adoptVcpu(msg.fds[1]!, 0));
    expect(busy).toBeInstanceOf(KvmStateError);
    expect(busy.code).toBe('ERR_KVM_VCPU_HAS_RUNNER');
    expect(msg.fds[1]!.closed).toBe(false);
    vcpu.close();
    using again = adopted.adoptVcpu(msg.fds[1]!, 0);
    expect(again.vm).toBe(adopted);
    expect(again.getRegs().rax).toBe(0x1234_5678_9abcn);
    adopted.close();
    expect(() => fdLink(n)).toThrow(); // closed with the object
    expect(again.getRegs().rax).toBe(0x1234_5678_9abcn); // the vCPU keeps its VM alive
  });
});

describe('Vm.adopt and vm.adoptVcpu: refusals', () => {
  it('an fd of another kind: TypeError with code ERR_KVM_NOT_VM / ERR_KVM_NOT_VCPU, the fd left open', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using kvm = openKvm(ctx);
    using vcpu = vm.createVcpu(0);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const file = join(dir, 'plain');
    writeFileSync(file, 'not a VM');
    const plain = openSync(file, 'r');
    try {
      for (const fd of [plain, kvm.fd, g.fd, vcpu.fd]) {
        const e = thrown(() => Vm.adopt(fd, { kvm }));
        expect(e).toBeInstanceOf(TypeError);
        expect(e.code).toBe('ERR_KVM_NOT_VM');
        expect(e.message).toContain(fdLink(fd));
      }
      for (const fd of [plain, kvm.fd, g.fd, vm.fd]) {
        const e = thrown(() => vm.adoptVcpu(fd, 0));
        expect(e).toBeInstanceOf(TypeError);
        expect(e.code).toBe('ERR_KVM_NOT_VCPU');
      }
      expect(fdLink(plain)).toBe(file); // still the caller's
    } finally {
      closeSync(plain);
    }
    expect(vm.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
    expect(vcpu.getRegs().rflags & 2n).toBe(2n);
  });

  it('an fd a live library object owns: ERR_KVM_FD_OWNED (a duplicate with { dup: true })', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using kvm = openKvm(ctx);
    using vcpu = vm.createVcpu(0);
    const e = thrown(() => Vm.adopt(vm.fd, { kvm }));
    expect(e).toBeInstanceOf(KvmStateError);
    expect(e.code).toBe('ERR_KVM_FD_OWNED');
    expect(e.message).toMatch(/"fd" argument \(fd \d+\) is owned by a live Vm/);
    const v = thrown(() => vm.adoptVcpu(vcpu.fd, 0));
    expect(v).toBeInstanceOf(KvmStateError);
    expect(v.code).toBe('ERR_KVM_FD_OWNED');
    expect(v.message).toMatch(/owned by a live Vcpu/);
    // A received fd belongs to its message until taken: its number cannot be adopted meanwhile.
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    a.send(null, [vm]);
    using msg = await b.receive({ timeoutMs: hangBound(10_000) });
    expect(thrown(() => Vm.adopt(msg.fds[0]!.fd, { kvm })).code).toBe('ERR_KVM_FD_OWNED');
    {
      using dup = Vm.adopt(msg.fds[0]!, { kvm, dup: true });
      expect(dup.fd).not.toBe(msg.fds[0]!.fd);
      expect(msg.fds[0]!.closed).toBe(false); // with dup the message keeps its fd
    }
    using taken = Vm.adopt(msg.fds[0]!, { kvm });
    expect(thrown(() => Vm.adopt(taken.fd, { kvm })).code).toBe('ERR_KVM_FD_OWNED');
    expect(vm.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
  });

  it('closed: an fd number not open (EBADF), a ReceivedFd taken or closed, a closed Kvm or Vm (ERR_KVM_CLOSED)', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using kvm = openKvm(ctx);
    expect(thrown(() => Vm.adopt(0x7ffffff0, { kvm }))).toMatchObject({ name: 'KvmError', code: 'EBADF' });
    expect(thrown(() => vm.adoptVcpu(0x7ffffff0, 0))).toMatchObject({ name: 'KvmError', code: 'EBADF' });
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    const vcpu = vm.createVcpu(3);
    a.send(null, [vm, vm, vcpu]);
    vcpu.close();
    using msg = await b.receive({ timeoutMs: hangBound(10_000) });
    const [first, second, third] = msg.fds as [ReceivedFd, ReceivedFd, ReceivedFd];
    using taken = Vm.adopt(first, { kvm });
    expect(thrown(() => Vm.adopt(first, { kvm })).code).toBe('ERR_KVM_CLOSED');
    second.close();
    expect(thrown(() => Vm.adopt(second, { kvm })).code).toBe('ERR_KVM_CLOSED');
    const closedKvm = openKvm(ctx);
    closedKvm.close();
    expect(thrown(() => Vm.adopt(third, { kvm: closedKvm })).code).toBe('ERR_KVM_CLOSED');
    taken.close();
    expect(thrown(() => taken.adoptVcpu(third, 3)).code).toBe('ERR_KVM_CLOSED');
    expect(third.closed).toBe(false);
    using v = vm.adoptVcpu(third, 3);
    expect(v.id).toBe(3);
  });

  it('bad arguments: TypeError / RangeError before the fd is looked at', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using kvm = openKvm(ctx);
    const n = vm.fd;
    expect(() => Vm.adopt(n, {} as never)).toThrow(TypeError); // kvm is required
    expect(() => Vm.adopt(n, { kvm: vm } as never)).toThrow(/"options.kvm" option must be a Kvm/);
    expect(() => Vm.adopt(n, null as never)).toThrow(TypeError);
    expect(() => Vm.adopt(n, { kvm, dup: 1 as never })).toThrow(TypeError);
    expect(() => Vm.adopt(n, { kvm, type: -1 })).toThrow(RangeError);
    expect(() => Vm.adopt(-1, { kvm })).toThrow(RangeError);
    expect(() => Vm.adopt({ fd: n } as never, { kvm })).toThrow(/ReceivedFd of this library/);
    expect(() => vm.adoptVcpu(n, -1)).toThrow(RangeError);
    expect(() => vm.adoptVcpu(n, 0, { dup: 'yes' as never })).toThrow(TypeError);
    expect(vm.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
  });
});
