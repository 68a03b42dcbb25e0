// Kvm: the system fd. Checked against /proc/self/fd, fdinfo and the kernel's answers.
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Cap, GuestMemfdFlag, Kvm, KvmError, KvmStateError, VmType } from '../lib/index.js';
import { countFds, expectKvmError, fdLink, isCloexec, needCap, openKvm, thrown } from './kvm-host.js';

describe('Kvm.open', () => {
  it('opens /dev/kvm close-on-exec and reads API version 12', (ctx) => {
    using kvm = openKvm(ctx);
    expect(fdLink(kvm.fd)).toBe('/dev/kvm');
    expect(isCloexec(kvm.fd)).toBe(true);
    expect(kvm.apiVersion).toBe(12);
    expect(kvm.path).toBe('/dev/kvm');
  });

  it('explains a missing device (ENOENT) with what to do', () => {
    const e = expectKvmError(() => Kvm.open('/nonexistent/kvm'), 'ENOENT');
    expect(e).toBeInstanceOf(KvmError);
    expect(e.code).toBe('ENOENT');
    expect(e.errno).toBe(-2);
    expect(e.syscall).toBe('open');
    // The hint says what is wrong on this host: where the device is, or why there is none.
    expect(e.message).toContain('/nonexistent/kvm');
    expect(e.message.endsWith(`. ${e.hint!}`)).toBe(true);
    expect(e.hint).toMatch(existsSync('/dev/kvm')
      ? /^there is no \/nonexistent\/kvm \(the KVM device of this host is \/dev\/kvm\)$/
      : /(^\/nonexistent\/kvm does not exist and this kernel has no KVM device: kvm is (not )?loaded|^the kernel has a KVM device)/);
  });

  it('refuses a device that is not KVM (KVM_GET_API_VERSION fails) and leaks no fd', () => {
    const before = countFds('/dev/null');
    const e = thrown(() => Kvm.open('/dev/null'));
    expect(e).toBeInstanceOf(KvmError);
    expect(e.request).toBe('KVM_GET_API_VERSION');
    expect(e.code).toBe('ENOTTY');
    expect(countFds('/dev/null')).toBe(before);
  });

  it('rejects a non-string path with a TypeError', () => {
    expect(() => Kvm.open(42 as unknown as string)).toThrow(TypeError);
  });
});

describe('kvm.checkExtension', () => {
  it('answers the guest_memfd capabilities, the same on /dev/kvm and on a default VM', (ctx) => {
    using kvm = openKvm(ctx);
    expect(kvm.checkExtension(Cap.USER_MEMORY)).toBe(1);
    expect(kvm.checkExtension(Cap.NR_MEMSLOTS)).toBeGreaterThan(0);
    needCap(ctx, kvm, Cap.GUEST_MEMFD, 'GUEST_MEMFD');
    expect(kvm.checkExtension(Cap.GUEST_MEMFD)).toBe(1);
    expect(kvm.checkExtension(Cap.USER_MEMORY2)).toBe(1); // guest_memfd is bound only through region2
    const flags = kvm.checkExtension(Cap.GUEST_MEMFD_FLAGS);
    expect(flags & ~Number(GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED)).toBe(0); // only flags the uapi defines
    using vm = kvm.createVm();
    for (const cap of [Cap.USER_MEMORY2, Cap.GUEST_MEMFD, Cap.GUEST_MEMFD_FLAGS, Cap.NR_MEMSLOTS]) {
      expect(vm.checkExtension(cap), `cap ${cap}`).toBe(kvm.checkExtension(cap));
    }
  });

  it('returns 0 for a capability number the kernel does not know', (ctx) => {
    using kvm = openKvm(ctx);
    expect(kvm.checkExtension(100_000)).toBe(0);
  });

  it('rejects bad capability arguments before any system call', (ctx) => {
    using kvm = openKvm(ctx);
    for (const bad of ['3', 3n, null, undefined, {}]) {
      expect(() => kvm.checkExtension(bad as number)).toThrow(TypeError);
    }
    for (const bad of [-1, 1.5, 2 ** 32, NaN, Infinity]) {
      expect(() => kvm.checkExtension(bad)).toThrow(RangeError);
    }
  });
});

describe('kvm.createVm', () => {
  it('creates a close-on-exec VM fd that outlives the Kvm object', (ctx) => {
    const kvm = openKvm(ctx);
    using vm = kvm.createVm();
    expect(fdLink(vm.fd)).toBe('anon_inode:kvm-vm');
    expect(isCloexec(vm.fd)).toBe(true);
    expect(vm.type).toBe(VmType.DEFAULT);
    kvm.close();
    expect(vm.checkExtension(Cap.USER_MEMORY)).toBe(1);
  });

  it('refuses an unsupported VM type with EINVAL', (ctx) => {
    using kvm = openKvm(ctx);
    const types = kvm.checkExtension(Cap.VM_TYPES);
    // The first type number the host does not advertise (bit clear in KVM_CAP_VM_TYPES).
    let t = 1;
    while (types & (1 << t)) t++;
    const e = thrown(() => kvm.createVm(t));
    expect(e).toBeInstanceOf(KvmError);
    expect(e.code).toBe('EINVAL');
    expect(e.request).toBe('KVM_CREATE_VM');
  });

  it('rejects bad type arguments', (ctx) => {
    using kvm = openKvm(ctx);
    expect(() => kvm.createVm('0' as unknown as number)).toThrow(TypeError);
    expect(() => kvm.createVm(-1)).toThrow(RangeError);
  });

  it('reports the vCPU mmap size', (ctx) => {
    using kvm = openKvm(ctx);
    expect(kvm.vcpuMmapSize()).toBeGreaterThanOrEqual(4096);
  });
});

describe('Kvm lifetime', () => {
  it('is idempotent to close, clear after close, and never throws from dispose', (ctx) => {
    const kvm = openKvm(ctx);
    const fd = kvm.fd;
    kvm.close();
    kvm.close();
    kvm[Symbol.dispose]();
    expect(kvm.closed).toBe(true);
    expect(() => fdLink(fd)).toThrow(); // the fd is really closed
    for (const call of [() => kvm.fd, () => kvm.checkExtension(Cap.USER_MEMORY), () => kvm.createVm(), () => kvm.vcpuMmapSize()]) {
      const e = thrown(call);
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e.code).toBe('ERR_KVM_CLOSED');
    }
  });

  it('does not act on a reused fd number after close', (ctx) => {
    const kvm = openKvm(ctx);
    kvm.close();
    // Whatever now holds the old number (here: a new Kvm) is untouched by the closed object.
    using other = openKvm(ctx);
    expect(() => kvm.checkExtension(Cap.USER_MEMORY)).toThrow(KvmStateError);
    expect(other.checkExtension(Cap.USER_MEMORY)).toBe(1);
  });
});
