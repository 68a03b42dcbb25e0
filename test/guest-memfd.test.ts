// GuestMemfd: creation, fstat, fallocate, punch-hole and mmap, checked against fstat,
// /proc/self/fd, fdinfo, the file's page count (cachestat) and the bytes read back.
import { spawnSync } from 'node:child_process';
import { closeSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Cap, GuestMemfd, GuestMemfdFlag, KvmStateError, Mapping, PAGE_SIZE, fdKind } from '../lib/index.js';
import { fixture } from './c-fixtures.js';
import { expectKvmError, fdLink, gmemVm, isCloexec, onNumber, thrown } from './kvm-host.js';

const MMAP = GuestMemfdFlag.MMAP;
const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;

/**
 * The pages `g` holds in [offset, offset + length) (default: all of it), from cachestat(2) on its
 * fd (test/fixtures/cachestat.c): the kernel's own count of the file's folios, exact and the
 * file's alone, whether or not anything touched them. (fstat's st_blocks stays 0 for guest_memfd,
 * and mincore counts only pages a fault made up to date.)
 */
function filePages(g: GuestMemfd, offset = 0, length = 0): number {
  const r = spawnSync(fixture('cachestat'), length === 0 ? [] : [String(offset), String(length)], {
    stdio: ['ignore', 'pipe', 'pipe', g.fd], encoding: 'utf8',
  });
  expect(r.stderr, 'cachestat(2) on the guest_memfd').toBe('');
  expect(r.status).toBe(0);
  return (JSON.parse(r.stdout) as { cache: number }).cache;
}

describe('vm.createGuestMemfd', () => {
  it.for([
    ['0', 0n],
    ['MMAP', MMAP],
    ['INIT_SHARED', GuestMemfdFlag.INIT_SHARED],
    ['MMAP|INIT_SHARED', SHARED],
  ] as const)('creates files with flags %s: sizes, distinct inodes, close-on-exec', ([, flags], ctx) => {
    using vm = gmemVm(ctx, flags);
    const files: GuestMemfd[] = [];
    try {
      for (const size of [PAGE_SIZE, 2 * PAGE_SIZE, MiB, 64 * MiB]) {
        const g = vm.createGuestMemfd({ size, flags });
        files.push(g);
        expect(g.size).toBe(BigInt(size));
        expect(g.flags).toBe(flags);
        const st = g.stat();
        expect(st.size).toBe(BigInt(size));
        expect(st.blksize).toBe(PAGE_SIZE);
        // The link text changed in Linux 7.2 (a filesystem of its own); the kind check holds on both.
        expect(['anon_inode:[kvm-gmem]', '/[kvm-gmem] (deleted)']).toContain(fdLink(g.fd));
        expect(fdKind(g.fd)).toBe('guest_memfd');
        expect(isCloexec(g.fd)).toBe(true); // the kernel creates it without; the library sets it
        expect(fstatSync(g.fd, { bigint: true }).ino).toBe(st.ino); // Node's fstat agrees
      }
      const inodes = new Set(files.map((g) => g.stat().ino));
      expect(inodes.size).toBe(files.length);
    } finally {
      for (const g of files) g.close();
    }
  });

  it('refuses sizes that are zero or not page-aligned (EINVAL)', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    for (const size of [0, 1, 512, PAGE_SIZE - 1, PAGE_SIZE + 1, MiB + 17]) {
      expectKvmError(() => vm.createGuestMemfd({ size }), 'EINVAL', { syscall: 'ioctl' });
    }
  });

  it('accepts exactly the flag bits KVM_CAP_GUEST_MEMFD_FLAGS reports, every other bit is EINVAL', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    const supported = BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
    for (let bit = 0n; bit < 64n; bit++) {
      const flag = 1n << bit;
      if (supported & flag) {
        using g = vm.createGuestMemfd({ size: PAGE_SIZE, flags: flag });
        // The kernel made a guest_memfd with the flag: one it lets the host map exactly with MMAP.
        expect(fdKind(g.fd)).toBe('guest_memfd');
        const mapped = (() => {
          try {
            g.map().close();
            return 'mapped';
          } catch (e) {
            return (e as { code?: string }).code;
          }
        })();
        expect(mapped, `flag bit ${bit}`).toBe(flag & MMAP ? 'mapped' : 'ENODEV');
      } else {
        const e = thrown(() => vm.createGuestMemfd({ size: PAGE_SIZE, flags: flag }));
        expect(e.code, `flag bit ${bit}`).toBe('EINVAL');
        expect(e.request).toBe('KVM_CREATE_GUEST_MEMFD');
        expect(e.message).toContain(`flags=0x${flag.toString(16)}`);
      }
    }
  });

  it('rejects bad size and flags arguments before any system call', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    const bad: [unknown, unknown, typeof TypeError | typeof RangeError][] = [
      ['4096', 0, TypeError],
      [null, 0, TypeError],
      [undefined, 0, TypeError],
      [-4096, 0, RangeError],
      [4096.5, 0, RangeError],
      [2 ** 53, 0, RangeError], // unsafe: would be silently rounded
      [-1n, 0, RangeError],
      [1n << 64n, 0, RangeError], // would wrap to 0
      [4096, '1', TypeError],
      [4096, -1, RangeError],
      [4096, 1n << 64n, RangeError],
    ];
    for (const [size, flags, type] of bad) {
      expect(() => vm.createGuestMemfd({ size, flags } as never), `size ${String(size)} flags ${String(flags)}`).toThrow(type);
    }
    expect(() => vm.createGuestMemfd(undefined as never)).toThrow(TypeError);
    expect(() => vm.createGuestMemfd(4096 as never)).toThrow(TypeError);
  });

  it('passes bigint sizes beyond 2^53 to the kernel intact: up to 2^63 - 4096 is accepted, 2^63 is EINVAL', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    // The file is sparse: a size is only a limit, nothing is allocated. A truncated or wrapped
    // value would show up as a different st_size or as a different answer.
    for (const size of [1n << 62n, (1n << 63n) - BigInt(PAGE_SIZE)]) {
      using g = vm.createGuestMemfd({ size });
      expect(g.stat().size).toBe(size);
    }
    const e = thrown(() => vm.createGuestMemfd({ size: 1n << 63n })); // negative as a loff_t
    expect(e.code).toBe('EINVAL');
    expect(e.message).toContain(`size=${1n << 63n}`);
  });
});

describe('guest_memfd as a file', () => {
  it('refuses read and write (EINVAL), pread and pwrite (ESPIPE: the file has no position)', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    using g = vm.createGuestMemfd({ size: PAGE_SIZE });
    const buf = Buffer.alloc(16);
    expect(() => readSync(g.fd, buf, 0, 16, null)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => readSync(g.fd, buf, 0, 16, 0)).toThrow(expect.objectContaining({ code: 'ESPIPE' })); // pread
    expect(() => writeSync(g.fd, buf, 0, 16, null)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => writeSync(g.fd, buf, 0, 16, 0)).toThrow(expect.objectContaining({ code: 'ESPIPE' })); // pwrite
  });
});

describe('gmem.allocate and gmem.punchHole', () => {
  // Counted in the file's own pages (cachestat): nothing else on the host moves that figure, so
  // every step is checked to the page, over the whole file and range by range.
  it('allocate adds backing memory, punch frees it, the size never changes', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    using g = vm.createGuestMemfd({ size: 256 * MiB });
    const pages = (bytes: number) => bytes / PAGE_SIZE;
    expect(filePages(g)).toBe(0);
    g.allocate(0, 64 * MiB);
    expect(filePages(g)).toBe(pages(64 * MiB));
    g.allocate(0, 256 * MiB); // the first 64 MiB are not allocated twice
    expect(filePages(g)).toBe(pages(256 * MiB));
    g.punchHole(64 * MiB, 128 * MiB);
    expect(filePages(g)).toBe(pages(128 * MiB));
    expect([filePages(g, 0, 64 * MiB), filePages(g, 64 * MiB, 128 * MiB), filePages(g, 192 * MiB, 64 * MiB)])
      .toEqual([pages(64 * MiB), 0, pages(64 * MiB)]);
    g.punchHole(0, 256 * MiB);
    expect(filePages(g)).toBe(0);
    expect(g.stat().size).toBe(BigInt(256 * MiB)); // KEEP_SIZE
  });

  it('refuses allocation outside the file (EINVAL)', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    using g = vm.createGuestMemfd({ size: MiB });
    expectKvmError(() => g.allocate(MiB, PAGE_SIZE), 'EINVAL', { syscall: 'fallocate' });
    expectKvmError(() => g.allocate(MiB - PAGE_SIZE, 2 * PAGE_SIZE), 'EINVAL', { syscall: 'fallocate' });
    expectKvmError(() => g.allocate(0, MiB + PAGE_SIZE), 'EINVAL', { syscall: 'fallocate' });
  });

  it('refuses unaligned punches (EINVAL) and keeps the data', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    m.bytes.fill(0x5a);
    for (const [o, l] of [[1, PAGE_SIZE], [0, 1], [PAGE_SIZE - 1, PAGE_SIZE], [0, PAGE_SIZE + 1], [PAGE_SIZE / 2, PAGE_SIZE / 2]]) {
      expectKvmError(() => g.punchHole(o!, l!), 'EINVAL', { syscall: 'fallocate' });
    }
    expect(m.bytes.every((b) => b === 0x5a)).toBe(true);
  });

  it('rejects bad offsets and lengths before any system call', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    using g = vm.createGuestMemfd({ size: MiB });
    expect(() => g.allocate('0' as never, PAGE_SIZE)).toThrow(TypeError);
    expect(() => g.allocate(0, -PAGE_SIZE)).toThrow(RangeError);
    expect(() => g.allocate(0, 2 ** 60)).toThrow(RangeError); // not a safe integer
    expect(() => g.punchHole(1n << 63n, PAGE_SIZE)).toThrow(RangeError); // past off_t
    expect(() => g.punchHole(0, NaN)).toThrow(RangeError);
  });
});

describe('gmem.map', () => {
  it('maps MAP_SHARED: data written through the mapping survives unmap and remap', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const first = g.map();
    expect(first.length).toBe(MiB);
    expect(first.offset).toBe(0n);
    expect(first.address % BigInt(PAGE_SIZE)).toBe(0n);
    expect(first.bytes.byteLength).toBe(MiB);
    for (let i = 0; i < MiB; i++) first.bytes[i] = i % 251;
    first.close();
    expect(first.closed).toBe(true);
    expect(thrown(() => first.bytes).code).toBe('ERR_KVM_CLOSED');
    using again = g.map();
    let ok = true;
    for (let i = 0; i < MiB; i++) if (again.bytes[i] !== i % 251) ok = false;
    expect(ok).toBe(true);
    // A mapping at an offset sees the same bytes.
    using tail = g.map(PAGE_SIZE * 3, PAGE_SIZE);
    expect(tail.offset).toBe(BigInt(PAGE_SIZE * 3));
    expect(tail.bytes[0]).toBe((PAGE_SIZE * 3) % 251);
  });

  it('shows up in /proc/self/maps while mapped, and the file is gone from there after close', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const m = g.map();
    const start = m.address.toString(16);
    const maps = () => readFileSync('/proc/self/maps', 'utf8');
    const line = maps().split('\n').find((l) => l.startsWith(`${start}-`));
    expect(line).toBeDefined();
    expect(line).toMatch(/rw-s/); // shared, read-write
    expect(line).toContain('kvm-gmem');
    m.close();
    // The range no longer maps the file (an anonymous placeholder holds it until collected).
    expect(maps().split('\n').some((l) => l.startsWith(`${start}-`) && l.includes('kvm-gmem'))).toBe(false);
  });

  it('a punched page reads back as zeros while its neighbours keep their bytes', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 16 * PAGE_SIZE, flags: SHARED });
    using m = g.map();
    m.bytes.fill(0xaa);
    expect(m.residentPages()).toBe(16);
    g.punchHole(5 * PAGE_SIZE, PAGE_SIZE);
    // Before anything reads it again, only page 5 is gone from the file.
    expect(Array.from(m.residency())).toEqual(Array.from({ length: 16 }, (_, i) => (i === 5 ? 0 : 1)));
    const page = (n: number) => m.bytes.subarray(n * PAGE_SIZE, (n + 1) * PAGE_SIZE);
    expect(page(5).every((b) => b === 0)).toBe(true);
    expect(page(4).every((b) => b === 0xaa)).toBe(true);
    expect(page(6).every((b) => b === 0xaa)).toBe(true);
  });

  it('refuses to map without GUEST_MEMFD_FLAG_MMAP (ENODEV)', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    using g = vm.createGuestMemfd({ size: MiB });
    expectKvmError(() => g.map(), 'ENODEV', { syscall: 'mmap' });
  });

  it('refuses unaligned offsets (EINVAL) and bad lengths', (ctx) => {
    using vm = gmemVm(ctx, MMAP);
    using g = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    expectKvmError(() => g.map(1, PAGE_SIZE), 'EINVAL', { syscall: 'mmap' });
    expect(() => g.map(0, 0)).toThrow(RangeError);
    expect(() => g.map(0, 2 ** 32 + PAGE_SIZE)).toThrow(RangeError); // larger than an ArrayBuffer can be
    expect(() => g.map(MiB)).toThrow(RangeError); // nothing left to map by default
    expect(() => g.map(0, MiB + PAGE_SIZE)).toThrow(/past the end/); // would SIGBUS on touch
    expect(() => g.map(MiB - PAGE_SIZE, 2 * PAGE_SIZE)).toThrow(RangeError);
    expect(() => g.map('0' as never)).toThrow(TypeError);
  });

  it('maps a guest_memfd without INIT_SHARED but refuses host access to its private memory', (ctx) => {
    using vm = gmemVm(ctx, MMAP);
    using g = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    using m = g.map();
    expect(m.address % BigInt(PAGE_SIZE)).toBe(0n);
    const e = thrown(() => m.bytes);
    expect(e).toBeInstanceOf(KvmStateError);
    expect(e.code).toBe('ERR_KVM_PRIVATE_MEMORY');
    expect(e.message).toMatch(/INIT_SHARED/);
    expect(m.residentPages()).toBe(0);
  });

  it('the mapping outlives close() of the GuestMemfd (it holds the file)', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    const g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using m = g.map();
    m.bytes.fill(7);
    g.close();
    expect(m.bytes.every((b) => b === 7)).toBe(true);
    m.bytes[100] = 9;
    expect(m.bytes[100]).toBe(9);
  });

  it('allocates, fills and punches 1 GiB', (ctx) => {
    const GiB = 1024 * MiB;
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: GiB, flags: SHARED });
    using m = g.map();
    expect(m.bytes.byteLength).toBe(GiB);
    g.allocate(0, GiB);
    expect(filePages(g)).toBe(GiB / PAGE_SIZE);
    m.bytes.fill(0xc3);
    expect(filePages(g)).toBe(GiB / PAGE_SIZE); // the fill used the allocated pages, no others
    expect(m.residentPages()).toBe(GiB / PAGE_SIZE);
    expect(m.bytes[0]).toBe(0xc3);
    expect(m.bytes[GiB - 1]).toBe(0xc3);
    expect(m.bytes[GiB / 2 + 12345]).toBe(0xc3);
    g.punchHole(0, GiB);
    expect(filePages(g)).toBe(0);
    expect(m.residentPages()).toBe(0);
    expect(m.bytes[GiB - 1]).toBe(0);
    expect(m.bytes[0]).toBe(0);
  });
});

describe('Mapping.anonymous', () => {
  it('maps private anonymous memory; close is idempotent', () => {
    const m = Mapping.anonymous(2 * PAGE_SIZE);
    expect(m.length).toBe(2 * PAGE_SIZE);
    m.bytes.fill(1);
    m.close();
    m.close();
    expect(thrown(() => m.bytes).code).toBe('ERR_KVM_CLOSED');
    expect(() => Mapping.anonymous(0)).toThrow(RangeError);
  });
});

describe('Mapping.close', () => {
  it('cuts earlier views off the file at once, without making them fault', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    const m = g.map();
    const stale = m.bytes;
    stale.fill(0x42);
    m.close();
    // A late write through the old view lands in harmless memory, not in the file.
    stale.fill(0x99);
    using again = g.map();
    expect(again.bytes.every((b) => b === 0x42)).toBe(true);
  });

  it('survives an I/O job that writes into the mapping while it is closed', async (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 64 * MiB, flags: SHARED });
    const m = g.map();
    const { randomFill } = await import('node:crypto');
    const done = new Promise<void>((resolve, reject) => randomFill(m.bytes, (err) => (err ? reject(err) : resolve())));
    m.close(); // the libuv pool may still be writing
    await done;
    expect(m.closed).toBe(true);
  });
});

describe('GuestMemfd lifetime', () => {
  it('is clear after close, idempotent, and dispose never throws', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    const g = vm.createGuestMemfd({ size: PAGE_SIZE });
    const fd = g.fd;
    g.close();
    g.close();
    g[Symbol.dispose]();
    expect(() => fdLink(fd)).toThrow();
    for (const call of [() => g.fd, () => g.stat(), () => g.allocate(0, PAGE_SIZE), () => g.punchHole(0, PAGE_SIZE), () => g.map()]) {
      const e = thrown(call);
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e.code).toBe('ERR_KVM_CLOSED');
    }
  });

  it('close() reports EBADF when the fd was closed behind its back, and forgets it anyway', (ctx) => {
    using vm = gmemVm(ctx, 0n);
    const g = vm.createGuestMemfd({ size: PAGE_SIZE });
    const n = g.fd;
    closeSync(n);
    expect(thrown(() => g.close()).code).toBe('EBADF');
    expect(g.closed).toBe(true);
    // Forgotten: another close() leaves alone the file that has the number now.
    const other = onNumber(n, () => {
      const fd = openSync('/dev/null', 'r');
      return { fd, close: () => closeSync(fd) };
    });
    try {
      g.close();
      expect(fdLink(n)).toBe('/dev/null');
    } finally {
      other.close();
    }
  });
});
