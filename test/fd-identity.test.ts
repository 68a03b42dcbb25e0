// fdKind: what an fd is, decided by its filesystem's magic number and (on the anon-inode
// filesystem) the kernel's own name for it; never by link text alone, which a plain file can fake.
import { closeSync, mkdtempSync, openSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ANON_INODE_FS_MAGIC, GUEST_MEMFD_MAGIC, GuestMemfd, GuestMemfdFlag, classifyFd, fdFacts, fdKind } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { fdLink, gmemVm, openKvm, thrown } from './kvm-host.js';

const TMPFS_MAGIC = 0x01021994;

describe('classifyFd', () => {
  it('takes guest_memfd\'s own filesystem (Linux 7.2 on) whatever the link says', () => {
    expect(classifyFd('/[kvm-gmem] (deleted)', GUEST_MEMFD_MAGIC)).toBe('guest_memfd');
  });

  it('takes the kernel\'s anon-inode names before 7.2, and nothing else there', () => {
    expect(classifyFd('anon_inode:[kvm-gmem]', ANON_INODE_FS_MAGIC)).toBe('guest_memfd');
    expect(classifyFd('anon_inode:kvm-vm', ANON_INODE_FS_MAGIC)).toBe('vm');
    expect(classifyFd('anon_inode:kvm-vcpu:12', ANON_INODE_FS_MAGIC)).toBe('vcpu');
    expect(classifyFd('anon_inode:kvm-vcpu:', ANON_INODE_FS_MAGIC)).toBe('other');
    expect(classifyFd('anon_inode:[eventfd]', ANON_INODE_FS_MAGIC)).toBe('other');
  });

  it('refuses the same texts on any other filesystem', () => {
    for (const link of ['/[kvm-gmem] (deleted)', 'anon_inode:[kvm-gmem]', 'anon_inode:kvm-vm', 'anon_inode:kvm-vcpu:0']) {
      expect(classifyFd(link, TMPFS_MAGIC)).toBe('other');
    }
    expect(classifyFd('/dev/kvm', TMPFS_MAGIC, false)).toBe('other'); // a regular file named /dev/kvm
    expect(classifyFd('/dev/kvm', TMPFS_MAGIC, true)).toBe('kvm');
  });
});

describe('fdKind on real fds', () => {
  it('names guest_memfd, VM, vCPU and /dev/kvm fds', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = gmemVm(ctx, 0n);
    using g = vm.createGuestMemfd({ size: 1 << 20 });
    using vcpu = vm.createVcpu(0);
    expect([fdKind(g.fd), fdKind(vm.fd), fdKind(vcpu.fd), fdKind(kvm.fd)]).toEqual(['guest_memfd', 'vm', 'vcpu', 'kvm']);
    const f = fdFacts(g.fd);
    expect(f.link).toBe(fdLink(g.fd));
    // Each kernel has exactly one of the two shapes.
    const shape = `${f.link} @ 0x${f.fsMagic.toString(16)}`;
    expect([`anon_inode:[kvm-gmem] @ 0x${ANON_INODE_FS_MAGIC.toString(16)}`, `/[kvm-gmem] (deleted) @ 0x${GUEST_MEMFD_MAGIC.toString(16)}`]).toContain(shape);
  });

  it('does not take a deleted file or a memfd named [kvm-gmem] for a guest_memfd, nor adopt it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-fake-'));
    const path = join(dir, '[kvm-gmem]');
    const fd = openSync(path, 'w+');
    unlinkSync(path);
    const memfd = native.memfdCreate('[kvm-gmem]');
    try {
      expect(fdLink(fd)).toBe(`${path} (deleted)`);
      expect(fdKind(fd)).toBe('other');
      expect(fdLink(memfd)).toBe('/memfd:[kvm-gmem] (deleted)');
      expect(fdKind(memfd)).toBe('other');
      expect(thrown(() => GuestMemfd.adopt(memfd, { size: 0, flags: GuestMemfdFlag.MMAP })).code).toBe('ERR_KVM_NOT_GUEST_MEMFD');
      expect(thrown(() => GuestMemfd.adopt(fd, { size: 0, flags: 0 })).code).toBe('ERR_KVM_NOT_GUEST_MEMFD');
    } finally {
      closeSync(fd);
      native.close(memfd);
      rmSync(dir, { recursive: true });
    }
  });

  it('fails with EBADF on a closed fd', () => {
    const fd = openSync('/dev/null', 'r');
    closeSync(fd);
    expect(thrown(() => fdKind(fd)).code).toBe('EBADF');
  });
});
