// Limits are defined once, in the addon (native/util/limits.h): lib's constants are the addon's
// values, and both layers refuse exactly one past each limit, no more and no less.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeCpuid } from '../lib/kvm/cpuid.js';
import { FdChannel, MAX_PAYLOAD } from '../lib/ipc/index.js';
import { MAX_CPUID_ENTRIES, MAX_MAPPING_LENGTH, Mapping } from '../lib/index.js';
import { native } from '../lib/core/native.js';

const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-limits-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A socket path of exactly `n` bytes in `dir`. */
function pathOf(n: number): string {
  const base = join(dir, 's');
  return base + 'x'.repeat(n - base.length);
}

describe('limits agree between the addon and lib', () => {
  it('the addon exports one frozen value per limit', () => {
    expect(native.limits).toEqual({
      maxPayload: 64 * 1024,
      maxFdsPerMessage: 253, // the kernel's SCM_MAX_FD
      maxSocketPathBytes: 107, // sun_path is 108 bytes with its NUL
      maxMappingLength: 2 ** 32,
      maxMapAlign: 2 ** 30,
      maxMaxnode: 1025,
      maxPageQueries: 2 ** 20,
      maxGuardedThreads: 256,
      maxCpuidEntries: 256, // KVM_MAX_CPUID_ENTRIES
    });
    expect(Object.isFrozen(native.limits)).toBe(true);
  });

  it("lib's exported constants are the addon's", () => {
    expect(MAX_PAYLOAD).toBe(native.limits.maxPayload);
    expect(MAX_MAPPING_LENGTH).toBe(native.limits.maxMappingLength);
    expect(MAX_CPUID_ENTRIES).toBe(native.limits.maxCpuidEntries);
  });

  it('payload: FdChannel and the addon both take exactly maxPayload bytes', async () => {
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    const { maxPayload } = native.limits;
    expect(() => a.send('x'.repeat(maxPayload - 1))).toThrow(RangeError); // with its quotes: one byte over
    a.send('x'.repeat(maxPayload - 2));
    expect((await b.receive()).payload).toHaveLength(maxPayload - 2);
    expect(() => native.sendMsg(a.fd, new Uint8Array(maxPayload + 1), [], 0)).toThrow(RangeError);
    expect(native.sendMsg(a.fd, new Uint8Array(maxPayload).fill(0x20), [], 0)).toBe(maxPayload);
    expect(() => native.recvMsg(b.fd, maxPayload + 1, 0)).toThrow(RangeError);
    expect(native.recvMsg(b.fd, maxPayload, 0)).toMatchObject({ flags: 0, closed: 0 });
  });

  it('fds per message: receive() and the addon both take up to maxFdsPerMessage', async () => {
    const [a, b] = FdChannel.pair();
    using _a = a;
    using _b = b;
    const { maxFdsPerMessage } = native.limits;
    await expect(b.receive({ maxFds: maxFdsPerMessage + 1 })).rejects.toThrow(RangeError);
    await expect(b.receive({ maxFds: maxFdsPerMessage, timeoutMs: 0 })).rejects.toMatchObject({ code: 'ERR_KVM_TIMEOUT' });
    expect(() => native.recvMsg(b.fd, 16, maxFdsPerMessage + 1)).toThrow(RangeError);
    expect(native.recvMsg(b.fd, 16, maxFdsPerMessage)).toBeUndefined();
    expect(() => native.sendMsg(a.fd, new Uint8Array(1), new Array(maxFdsPerMessage + 1).fill(a.fd), 0)).toThrow(RangeError);
    // The kernel takes SCM_MAX_FD fds in one message, and so does the addon.
    expect(native.sendMsg(a.fd, new Uint8Array(1), new Array(maxFdsPerMessage).fill(a.fd), 0)).toBe(1);
    const m = native.recvMsg(b.fd, 16, maxFdsPerMessage);
    expect(m?.fds).toHaveLength(maxFdsPerMessage);
    for (const fd of m?.fds ?? []) native.close(fd);
  });

  it('socket paths: FdChannel.listen and the addon both take up to maxSocketPathBytes', () => {
    const { maxSocketPathBytes } = native.limits;
    expect(() => FdChannel.listen(pathOf(maxSocketPathBytes + 1))).toThrow(RangeError);
    expect(() => native.unixListen(pathOf(maxSocketPathBytes + 1), 1)).toThrow(RangeError);
    const fd = native.unixListen(pathOf(maxSocketPathBytes), 1);
    native.close(fd);
    rmSync(pathOf(maxSocketPathBytes));
    using l = FdChannel.listen(pathOf(maxSocketPathBytes));
    expect(l.path).toBe(pathOf(maxSocketPathBytes));
  });

  it('mapping length: Mapping.anonymous and the addon refuse one byte past maxMappingLength, before mmap', () => {
    const { maxMappingLength } = native.limits;
    expect(() => Mapping.anonymous(maxMappingLength + 1)).toThrow(RangeError);
    expect(() => native.mapAnonymous(maxMappingLength + 1)).toThrow(RangeError);
    expect(() => native.mmapProbe(0x7ffffff0, 0, maxMappingLength + 1, 3, 1)).toThrow(RangeError);
    // At the limit the kernel answers (EBADF for a closed fd), not the addon's check.
    expect(native.mmapProbe(0x7ffffff0, 0, maxMappingLength, 3, 1)).toBe(9);
  });

  it('mbind maxnode: Mapping.mbind and the addon both take up to maxMaxnode', () => {
    const { maxMaxnode } = native.limits;
    using m = Mapping.anonymous(4096);
    expect(() => m.mbind(0, 0n, { maxnode: maxMaxnode + 1 })).toThrow(RangeError);
    const buffer = m.bytes.buffer as ArrayBuffer;
    expect(() => native.mbind(buffer, 0, 4096, 0, 0n, maxMaxnode + 1, 0)).toThrow(RangeError);
    native.mbind(buffer, 0, 4096, 0, 0n, maxMaxnode, 0); // MPOL_DEFAULT with an empty mask
  });

  it('CPUID tables: encodeCpuid and the addon both take up to maxCpuidEntries', () => {
    const { maxCpuidEntries } = native.limits;
    const entry = { function: 0, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 };
    expect(() => encodeCpuid(new Array(maxCpuidEntries + 1).fill(entry))).toThrow(RangeError);
    expect(encodeCpuid(new Array(maxCpuidEntries).fill(entry))).toHaveLength(maxCpuidEntries * 40);
    expect(() => native.setCpuid2(0x7ffffff0, new Uint8Array((maxCpuidEntries + 1) * 40))).toThrow(RangeError);
    expect(() => native.setCpuid2(0x7ffffff0, new Uint8Array(maxCpuidEntries * 40))).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('pageNodes: the addon refuses more than maxPageQueries offsets before reading any', () => {
    // (A query of the full maxPageQueries pages costs seconds under CPU emulation: not here.)
    const { maxPageQueries } = native.limits;
    using m = Mapping.anonymous(4096);
    const buffer = m.bytes.buffer as ArrayBuffer;
    // Holes, not offsets: an element read would be a TypeError, the length check comes first.
    expect(() => native.pageNodes(buffer, new Array(maxPageQueries + 1))).toThrow(RangeError);
    expect(() => native.pageNodes(buffer, new Array(maxPageQueries))).toThrow(TypeError);
  });
});
