// Memory-management calls on live mappings (madvise, mbind, get_mempolicy, move_pages) and the
// mmap probe, on real guest_memfd: each asserts what this host's kernel answers.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GuestMemfdFlag, KvmStateError, Mapping, PAGE_SIZE } from '../lib/index.js';
import { Madvise, MemPolicy } from '../lib/core/constants.js';
import { numaNodes, parseNodeList } from '../lib/host/info.js';
import { native } from '../lib/core/native.js';
import { expectKvmError, thrown, gmemVm, vmasOf } from './kvm-host.js';

const MMAP = GuestMemfdFlag.MMAP;
const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;
const PROT_RW = 0x1 | 0x2;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const EINVAL = 22;
const ENODEV = 19;
const ENOENT = 2;

/** The PMD (transparent huge page) size, from sysfs; 2 MiB when THP is not built in. */
function pmdSize(): number {
  try {
    return Number(readFileSync('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', 'utf8').trim());
  } catch {
    return 2 * MiB;
  }
}

describe('mapping.advise (madvise)', () => {
  it('HUGEPAGE, NOHUGEPAGE and DONTNEED on a shared guest_memfd mapping; the data stays in the file', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    using m = g.map();
    const vmas = () => vmasOf(m.address, 4 * MiB);
    const rss = () => vmas().reduce((n, v) => n + v.rss, 0);
    m.advise(Madvise.HUGEPAGE);
    m.advise(Madvise.NOHUGEPAGE, MiB, MiB);
    // The kernel split the mapping where the advice changed (smaps' VmFlags).
    expect(vmas().map((v) => [Number(v.end - v.start), v.flags.includes('hg'), v.flags.includes('nh')]))
      .toEqual([[MiB, true, false], [MiB, false, true], [2 * MiB, true, false]]);
    m.bytes.fill(0x5e);
    expect(rss()).toBe(4 * MiB);
    m.advise(Madvise.DONTNEED);
    // DONTNEED drops this mapping's page table entries; the file still holds the pages.
    expect(rss()).toBe(0);
    expect(m.bytes.every((b) => b === 0x5e)).toBe(true);
    m.advise(Madvise.DONTNEED);
    // Each of these reaches the kernel, which records it in the mapping or maps the pages.
    const seen = [Madvise.NORMAL, Madvise.RANDOM, Madvise.SEQUENTIAL, Madvise.WILLNEED, Madvise.POPULATE_READ, Madvise.POPULATE_WRITE].map((advice) => {
      m.advise(advice);
      return { advice, rr: vmas().every((v) => v.flags.includes('rr')), sr: vmas().every((v) => v.flags.includes('sr')), rss: rss() };
    });
    expect(seen).toEqual([
      { advice: Madvise.NORMAL, rr: false, sr: false, rss: 0 },
      { advice: Madvise.RANDOM, rr: true, sr: false, rss: 0 },
      { advice: Madvise.SEQUENTIAL, rr: false, sr: true, rss: 0 },
      { advice: Madvise.WILLNEED, rr: false, sr: true, rss: 0 }, // read-ahead is the file's business, not this mapping's
      { advice: Madvise.POPULATE_READ, rr: false, sr: true, rss: 4 * MiB },
      { advice: Madvise.POPULATE_WRITE, rr: false, sr: true, rss: 4 * MiB },
    ]);
    expect(m.bytes.every((b) => b === 0x5e)).toBe(true);
  });

  it('REMOVE punches the file: the range reads back as zeros, its neighbours keep their bytes', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 4 * PAGE_SIZE, flags: SHARED });
    using m = g.map();
    m.bytes.fill(7);
    m.advise(Madvise.REMOVE, PAGE_SIZE, PAGE_SIZE);
    using again = g.map();
    expect(again.bytes.subarray(PAGE_SIZE, 2 * PAGE_SIZE).every((b) => b === 0)).toBe(true);
    expect(again.bytes[PAGE_SIZE - 1]).toBe(7);
    expect(again.bytes[2 * PAGE_SIZE]).toBe(7);
  });

  it('COLLAPSE on a PMD-aligned guest_memfd mapping: EINVAL here, as upstream expects', (ctx) => {
    const pmd = pmdSize();
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 2 * pmd, flags: SHARED });
    using m = g.map(0, 2 * pmd, { align: pmd });
    expect(m.address % BigInt(pmd)).toBe(0n);
    m.fill(1); // populated, so only the file type can be the reason
    // guest_memfd has no huge pages to collapse into (the kernel selftest asserts EINVAL).
    const e = expectKvmError(() => m.advise(Madvise.COLLAPSE, 0, pmd), 'EINVAL', { syscall: 'madvise' });
    expect(e.message).toContain('advice=25');
  });

  it('POPULATE_* on private memory and past the end of the file: EFAULT, no signal', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using priv = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    using pm = priv.map();
    expectKvmError(() => pm.advise(Madvise.POPULATE_WRITE), 'EFAULT', { syscall: 'madvise' });
    expectKvmError(() => pm.advise(Madvise.POPULATE_READ), 'EFAULT', { syscall: 'madvise' });
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using past = g.map(0, 2 * MiB, { beyondEnd: true });
    past.advise(Madvise.POPULATE_WRITE, 0, MiB); // inside the file: fine
    expectKvmError(() => past.advise(Madvise.POPULATE_WRITE), 'EFAULT', { syscall: 'madvise' });
  });

  it('the kernel judges alignment; the library judges ranges and lets only known harmless advice through', () => {
    using m = Mapping.anonymous(4 * PAGE_SIZE);
    expectKvmError(() => m.advise(Madvise.DONTNEED, 1, PAGE_SIZE), 'EINVAL', { syscall: 'madvise' });
    expect(() => m.advise(9999)).toThrow(RangeError); // unknown to the library: never reaches the kernel
    expect(() => m.advise(-1)).toThrow(RangeError);
    expect(() => m.advise(Madvise.DONTNEED, 0, 5 * PAGE_SIZE)).toThrow(RangeError);
    expect(() => m.advise(Madvise.DONTNEED, 5 * PAGE_SIZE)).toThrow(RangeError);
    expect(() => m.advise(1.5)).toThrow(RangeError);
    expect(() => m.advise('4' as never)).toThrow(TypeError);
    for (const harmful of [100, 101, 102]) expect(() => m.advise(harmful), `advice ${harmful}`).toThrow(RangeError);
  });
});

describe('NUMA policy (mbind, get_mempolicy, move_pages)', () => {
  it('mbind and memPolicy round-trip INTERLEAVE, BIND, PREFERRED, LOCAL and DEFAULT on a guest_memfd mapping', (ctx) => {
    const node = numaNodes()[0]!;
    const mask = 1n << BigInt(node);
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    expect(m.memPolicy()).toEqual({ mode: MemPolicy.DEFAULT, nodemask: 0n });
    m.mbind(MemPolicy.INTERLEAVE, mask);
    expect(m.memPolicy(0)).toEqual({ mode: MemPolicy.INTERLEAVE, nodemask: mask });
    expect(m.memPolicy(MiB - 1)).toEqual({ mode: MemPolicy.INTERLEAVE, nodemask: mask });
    m.mbind(MemPolicy.BIND, mask, { offset: PAGE_SIZE, length: PAGE_SIZE });
    expect(m.memPolicy(PAGE_SIZE)).toEqual({ mode: MemPolicy.BIND, nodemask: mask });
    expect(m.memPolicy(0)).toEqual({ mode: MemPolicy.INTERLEAVE, nodemask: mask }); // only that page changed
    m.mbind(MemPolicy.PREFERRED, mask);
    expect(m.memPolicy()).toEqual({ mode: MemPolicy.PREFERRED, nodemask: mask });
    m.mbind(MemPolicy.LOCAL, 0n);
    expect(m.memPolicy()).toEqual({ mode: MemPolicy.LOCAL, nodemask: 0n });
    m.mbind(MemPolicy.DEFAULT, 0n);
    expect(m.memPolicy()).toEqual({ mode: MemPolicy.DEFAULT, nodemask: 0n });
    // Upstream's MPOL_DEFAULT call: no nodemask at all (maxnode 0, NULL). A pointer with maxnode 0
    // made the kernel read ULONG_MAX bits and refuse it with EINVAL (found on a two-node host).
    m.mbind(MemPolicy.INTERLEAVE, mask);
    m.mbind(MemPolicy.DEFAULT, 0n, { maxnode: 0 });
    expect(m.memPolicy()).toEqual({ mode: MemPolicy.DEFAULT, nodemask: 0n });
    // Pages allocated under BIND land on the node.
    m.mbind(MemPolicy.BIND, mask);
    m.bytes.fill(1);
    expect(m.pageNodes([0, PAGE_SIZE, MiB - 1])).toEqual([node, node, node]);
  });

  it('mbind errors are the kernel\'s (EINVAL), argument errors are the library\'s', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    const e = expectKvmError(() => m.mbind(999, 1n), 'EINVAL', { syscall: 'mbind' });
    expect(e.message).toContain('mode=999');
    expectKvmError(() => m.mbind(MemPolicy.BIND, 0n), 'EINVAL', { syscall: 'mbind' }); // BIND needs a node
    expectKvmError(() => m.mbind(MemPolicy.DEFAULT, 1n), 'EINVAL', { syscall: 'mbind' }); // DEFAULT takes none
    expectKvmError(() => m.mbind(MemPolicy.BIND, 1n, { offset: 1, length: PAGE_SIZE }), 'EINVAL', { syscall: 'mbind' });
    const offline = Math.max(...numaNodes()) + 1;
    if (offline < 64) expectKvmError(() => m.mbind(MemPolicy.BIND, 1n << BigInt(offline)), 'EINVAL', { syscall: 'mbind' });
    expect(() => m.mbind(-1, 1n)).toThrow(RangeError);
    expect(() => m.mbind(MemPolicy.BIND, -1n)).toThrow(RangeError);
    expect(() => m.mbind(MemPolicy.BIND, 1n << 1024n)).toThrow(RangeError);
    expect(() => m.mbind(MemPolicy.BIND, 1n, { maxnode: 1026 })).toThrow(RangeError);
    expect(() => m.mbind(MemPolicy.BIND, 1n, { length: MiB + 1 })).toThrow(RangeError);
    expect(() => m.mbind(MemPolicy.BIND, 1n, null as never)).toThrow(TypeError);
    expect(() => m.memPolicy(MiB)).toThrow(RangeError);
  });

  it('pageNodes: touched pages of anonymous memory are on a node, untouched ones -ENOENT', () => {
    // Without a policy a page lands on the node of the CPU that touched it: any online node.
    const online = numaNodes();
    using m = Mapping.anonymous(4 * PAGE_SIZE);
    m.bytes.fill(1, 0, 3 * PAGE_SIZE);
    const got = m.pageNodes([0, PAGE_SIZE, 2n * BigInt(PAGE_SIZE), 3 * PAGE_SIZE]);
    for (const n of got.slice(0, 3)) expect(online).toContain(n);
    expect(got[3]).toBe(-ENOENT);
    expect(m.pageNodes([])).toEqual([]);
    expect(() => m.pageNodes([4 * PAGE_SIZE])).toThrow(RangeError);
    expect(() => m.pageNodes(['0' as never])).toThrow(TypeError);
    expect(() => m.pageNodes(0 as never)).toThrow(TypeError);
  });

  it('pageNodes on guest_memfd: pages the file holds are on a node, private memory is -ENOENT', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 4 * PAGE_SIZE, flags: SHARED });
    using m = g.map();
    m.bytes[0] = 1;
    expect(numaNodes()).toContain(m.pageNodes([0])[0]);
    using p = vm.createGuestMemfd({ size: 4 * PAGE_SIZE, flags: MMAP });
    using pm = p.map();
    expect(pm.pageNodes([0, PAGE_SIZE])).toEqual([-ENOENT, -ENOENT]);
  });

  it('numaNodes reads the online node list (ranges and single nodes)', () => {
    const nodes = numaNodes();
    expect(nodes.length).toBeGreaterThan(0);
    expect(nodes).toEqual([...nodes].sort((a, b) => a - b));
    expect(parseNodeList('0-1,3')).toEqual([0, 1, 3]);
    expect(parseNodeList('0\n')).toEqual([0]);
    expect(parseNodeList('')).toEqual([]);
    expect(() => parseNodeList('2-1')).toThrow(/cannot parse/);
    expect(() => parseNodeList('a')).toThrow(/cannot parse/);
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-numa-'));
    try {
      writeFileSync(join(dir, 'online'), '0,2-4\n');
      expect(numaNodes(join(dir, 'online'))).toEqual([0, 2, 3, 4]);
      expect(numaNodes(join(dir, 'missing'))).toEqual([0]); // no NUMA support: one node
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('mm calls after close', () => {
  it('throw ERR_KVM_CLOSED', () => {
    const m = Mapping.anonymous(PAGE_SIZE);
    m.close();
    for (const call of [() => m.advise(Madvise.NORMAL), () => m.mbind(MemPolicy.DEFAULT, 0n), () => m.memPolicy(), () => m.pageNodes([0])]) {
      const e = thrown(call);
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e.code).toBe('ERR_KVM_CLOSED');
    }
  });
});

describe('mmapProbe', () => {
  it('MAP_PRIVATE of a guest_memfd is EINVAL, MAP_SHARED without MMAP is ENODEV, with MMAP it maps', (ctx) => {
    using vm = gmemVm(ctx, MMAP);
    using g = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    using plain = vm.createGuestMemfd({ size: MiB });
    expect(native.mmapProbe(g.fd, 0, PAGE_SIZE, PROT_RW, MAP_PRIVATE)).toBe(EINVAL);
    expect(native.mmapProbe(plain.fd, 0, PAGE_SIZE, PROT_RW, MAP_SHARED)).toBe(ENODEV);
    expect(native.mmapProbe(g.fd, 0, PAGE_SIZE, PROT_RW, MAP_SHARED)).toBe(0);
    expect(native.mmapProbe(g.fd, 1, PAGE_SIZE, PROT_RW, MAP_SHARED)).toBe(EINVAL); // unaligned offset
    // Nothing is left mapped by the probe.
    const before = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('kvm-gmem')).length;
    for (let i = 0; i < 100; i++) native.mmapProbe(g.fd, 0, MiB, PROT_RW, MAP_SHARED);
    expect(readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('kvm-gmem')).length).toBe(before);
  });
});
