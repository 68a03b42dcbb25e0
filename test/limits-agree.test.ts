// Limits are defined once, in the addon (native/util/limits.h): lib's constants are the addon's
// values, and both layers refuse exactly one past each limit, no more and no less. A limit the
// kernel or Node sets is checked against their answer, not against a number typed here.
import { spawnSync } from 'node:child_process';
import { constants as bufferConstants } from 'node:buffer';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeCpuid } from '../lib/kvm/cpuid.js';
import { FdChannel, MAX_PAYLOAD } from '../lib/ipc/index.js';
import { MAX_CPUID_ENTRIES, MAX_MAPPING_LENGTH, Mapping, MemPolicy, PAGE_SIZE } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { fixture, rawSend } from './c-fixtures.js';
import { openKvm } from './kvm-host.js';

const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-limits-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A socket path of exactly `n` bytes in `dir`. */
function pathOf(n: number): string {
  const base = join(dir, 's');
  return base + 'x'.repeat(n - base.length);
}

describe('limits agree between the addon and lib', () => {
  it('the addon exports one frozen whole number per limit; those derived from another hold to it', () => {
    expect(Object.keys(native.limits).sort()).toEqual([
      'maxCpuidEntries', 'maxFdsPerMessage', 'maxGuardedThreads', 'maxMapAlign', 'maxMappingLength', 'maxMaxnode',
      'maxPageQueries', 'maxPayload', 'maxSocketPathBytes',
    ]);
    for (const [name, v] of Object.entries(native.limits)) expect(Number.isSafeInteger(v) && v > 0, name).toBe(true);
    expect(Object.isFrozen(native.limits)).toBe(true);
    // A mapping is an ArrayBuffer: no longer than Node makes one. A page query covers it all.
    expect(native.limits.maxMappingLength).toBeLessThanOrEqual(bufferConstants.MAX_LENGTH);
    expect(native.limits.maxPageQueries).toBe(native.limits.maxMappingLength / PAGE_SIZE);
    // (maxSocketPathBytes is checked against the system's linux/un.h in uapi-constants.test.ts.)
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
    // One more is the kernel's EINVAL, from a sender that is not the library (test/fixtures/raw-send.c).
    const over = rawSend(a.fd, 1, 0x30, new Array(maxFdsPerMessage + 1).fill(a.fd));
    expect({ status: over.status, stderr: over.stderr.trim() }).toEqual({ status: 1, stderr: 'sendmsg: Invalid argument' });
    expect(rawSend(a.fd, 1, 0x30, new Array(maxFdsPerMessage).fill(a.fd))).toMatchObject({ status: 0, stderr: '' });
    const raw = native.recvMsg(b.fd, 16, maxFdsPerMessage);
    expect(raw?.fds).toHaveLength(maxFdsPerMessage);
    for (const fd of raw?.fds ?? []) native.close(fd);
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
    // At the limit the kernel takes the policy, as get_mempolicy reads back.
    native.mbind(buffer, 0, 4096, MemPolicy.BIND, 1n, maxMaxnode, 0); // node 0
    expect(native.getMempolicy(buffer, 0)).toEqual({ mode: MemPolicy.BIND, nodemask: 1n });
    native.mbind(buffer, 0, 4096, MemPolicy.DEFAULT, 0n, maxMaxnode, 0);
    expect(native.getMempolicy(buffer, 0)).toEqual({ mode: MemPolicy.DEFAULT, nodemask: 0n });
  });

  it('CPUID tables: encodeCpuid and the addon both take up to maxCpuidEntries', () => {
    const { maxCpuidEntries } = native.limits;
    const entry = { function: 0, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 };
    expect(() => encodeCpuid(new Array(maxCpuidEntries + 1).fill(entry))).toThrow(RangeError);
    expect(encodeCpuid(new Array(maxCpuidEntries).fill(entry))).toHaveLength(maxCpuidEntries * 40);
    expect(() => native.setCpuid2(0x7ffffff0, new Uint8Array((maxCpuidEntries + 1) * 40))).toThrow(RangeError);
    expect(() => native.setCpuid2(0x7ffffff0, new Uint8Array(maxCpuidEntries * 40))).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it("CPUID tables: maxCpuidEntries is KVM's own limit (KVM_SET_CPUID2 from a caller that is not the library)", (ctx) => {
    openKvm(ctx).close();
    const { maxCpuidEntries } = native.limits;
    const set = (n: number) => {
      const r = spawnSync(fixture('set-cpuid'), [String(n)], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      return JSON.parse(r.stdout) as { supported: number; errno: string | null };
    };
    const at = set(maxCpuidEntries);
    expect(at.supported).toBeLessThanOrEqual(maxCpuidEntries); // the host's own table fits
    expect(at.errno).toBeNull();
    expect(set(maxCpuidEntries + 1).errno).toBe('E2BIG');
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
