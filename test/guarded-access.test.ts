// Guarded host access to mapped memory (Mapping.read/readInto/write/fill): memory the kernel
// will not fault in for the host (private guest_memfd memory, pages past the end of the file)
// throws a GuestMemoryFaultError instead of killing the process with SIGBUS; SIGBUS that no
// guarded access caused still does what it did before the handler was installed.
import assert from 'node:assert';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { GuestMemfdFlag, KvmStateError, Mapping, PAGE_SIZE } from '../lib/index.js';
import { GuestMemoryFaultError } from '../lib/core/errors.js';
import { native } from '../lib/core/native.js';
import { countFds, openKvm, thrown, gmemVm, hangBound } from './kvm-host.js';

const MMAP = GuestMemfdFlag.MMAP;
const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
const MiB = 1 << 20;
const root = fileURLToPath(new URL('..', import.meta.url));

/** What `f` threw, checked to be a GuestMemoryFaultError. */
function fault(f: () => unknown): GuestMemoryFaultError {
  const e = thrown(f);
  expect(e, e.message).toBeInstanceOf(GuestMemoryFaultError);
  assert(e instanceof GuestMemoryFaultError);
  return e;
}

/** Deterministic bytes for comparisons. */
function pattern(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/**
 * A module of the library's compiled output (dist/), which child processes and workers import,
 * checked to contain `marker` (something this suite needs from it).
 */
function distModule(name: string, marker: string): string {
  const path = join(root, 'dist', `${name}.js`);
  if (!existsSync(path) || !readFileSync(path, 'utf8').includes(marker)) {
    throw new Error(`${path} is missing or stale: run \`npm run build\` (npm test does it first)`);
  }
  return JSON.stringify(path);
}

/** Runs an ES module script in a child node process. */
function runChild(script: string) {
  return spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: hangBound(30_000) });
}

describe('guarded access to private guest_memfd memory (MMAP without INIT_SHARED)', () => {
  it('read, readInto, write and fill throw GuestMemoryFaultError (BUS_ADRERR) and the process lives', (ctx) => {
    using vm = gmemVm(ctx, MMAP);
    using g = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    using m = g.map();
    const calls: [string, () => unknown][] = [
      ['fill', () => m.fill(0x11)],
      ['read', () => m.read(0, 64)],
      ['read', () => m.readInto(0, new Uint8Array(64))],
      ['write', () => m.write(0, new Uint8Array(64).fill(1))],
    ];
    for (const [op, call] of calls) {
      const e = fault(call);
      expect(e.name).toBe('GuestMemoryFaultError');
      expect(e.code).toBe('ERR_KVM_SIGBUS');
      expect(e.signal).toBe('SIGBUS');
      expect(e.sigCode).toBe(2);
      expect(e.sigCodeName).toBe('BUS_ADRERR');
      expect(e.offset).toBe(0);
      expect(e.fileOffset).toBe(0n);
      expect(e.bytesDone).toBe(0);
      expect(e.address).toBe(m.address);
      expect(e.side).toBe('mapping');
      expect(e.message).toContain(op);
      expect(e.message).toContain('BUS_ADRERR');
    }
    // At an unaligned offset the fault is reported at that exact byte.
    const e = fault(() => m.read(3 * PAGE_SIZE + 5, 100));
    expect(e.offset).toBe(3 * PAGE_SIZE + 5);
    expect(e.fileOffset).toBe(BigInt(3 * PAGE_SIZE + 5));
    expect(e.address).toBe(m.address + BigInt(3 * PAGE_SIZE + 5));
    expect(e.bytesDone).toBe(0);
    // Nothing was faulted in, and the unguarded view is still refused.
    expect(m.residentPages()).toBe(0);
    expect(thrown(() => m.bytes).code).toBe('ERR_KVM_PRIVATE_MEMORY');
  });

  it('a mapping at a file offset reports the fault in both mapping and file terms', (ctx) => {
    using vm = gmemVm(ctx, MMAP);
    using g = vm.createGuestMemfd({ size: MiB, flags: MMAP });
    using m = g.map(16 * PAGE_SIZE, 4 * PAGE_SIZE);
    const e = fault(() => m.fill(0, PAGE_SIZE + 1, 10));
    expect(e.offset).toBe(PAGE_SIZE + 1);
    expect(e.fileOffset).toBe(BigInt(17 * PAGE_SIZE + 1));
    expect(e.message).toContain(`file offset 0x${(17 * PAGE_SIZE + 1).toString(16)}`);
  });
});

describe('guarded access past the end of the file (map with beyondEnd)', () => {
  it('fill of the whole mapping stops exactly at the end of the file; what was written reads back', (ctx) => {
    const size = 64 * PAGE_SIZE;
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size, flags: SHARED });
    using m = g.map(0, 4 * size, { beyondEnd: true });
    expect(m.length).toBe(4 * size);
    const bytes = thrown(() => m.bytes);
    expect(bytes).toBeInstanceOf(KvmStateError);
    expect(bytes.code).toBe('ERR_KVM_PAST_EOF');
    const e = fault(() => m.fill(0xa5));
    expect(e.offset).toBe(size);
    expect(e.bytesDone).toBe(size);
    expect(e.fileOffset).toBe(BigInt(size));
    expect(e.address).toBe(m.address + BigInt(size));
    expect(e.sigCodeName).toBe('BUS_ADRERR');
    expect(m.read(0, size).every((b) => b === 0xa5)).toBe(true);
    const atEnd = fault(() => m.read(size, 1));
    expect(atEnd.offset).toBe(size);
    expect(atEnd.bytesDone).toBe(0);
    // Any mapping of the file sees the bytes: they are in the file.
    using inFile = g.map();
    expect(inFile.bytes.every((b) => b === 0xa5)).toBe(true);
  });

  it('requests straddling the end do every byte before it and none after', (ctx) => {
    const size = 16 * PAGE_SIZE;
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size, flags: SHARED });
    using m = g.map(0, 2 * size, { beyondEnd: true });
    using view = g.map(); // the file's bytes, unguarded
    view.bytes.fill(0);
    // Every head/body/tail split of the copy loops: unaligned starts and lengths around the end.
    for (const before of [1, 3, 7, 8, 9, 15, 16, 17, 64, 4095]) {
      for (const after of [1, 5, 8, 13, 100]) {
        const data = pattern(before + after, before * 31 + after);
        const w = fault(() => m.write(size - before, data));
        expect(w.bytesDone, `write ${before}+${after}`).toBe(before);
        expect(w.offset).toBe(size);
        expect(Array.from(view.bytes.subarray(size - before))).toEqual(Array.from(data.subarray(0, before)));
        const target = new Uint8Array(before + after).fill(0xee);
        const r = fault(() => m.readInto(size - before, target));
        expect(r.bytesDone, `read ${before}+${after}`).toBe(before);
        expect(Array.from(target.subarray(0, before))).toEqual(Array.from(data.subarray(0, before)));
        expect(target.subarray(before).every((b) => b === 0xee)).toBe(true); // nothing after the fault
        const f = fault(() => m.fill(0x3c, size - before, before + after));
        expect(f.bytesDone, `fill ${before}+${after}`).toBe(before);
        expect(view.bytes.subarray(size - before).every((b) => b === 0x3c)).toBe(true);
      }
    }
  });

  it('a mapping at an offset faults where the file ends, in mapping terms', (ctx) => {
    const size = 16 * PAGE_SIZE;
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size, flags: SHARED });
    using m = g.map(size / 2, size, { beyondEnd: true });
    const e = fault(() => m.fill(1));
    expect(e.offset).toBe(size / 2);
    expect(e.fileOffset).toBe(BigInt(size));
    expect(e.bytesDone).toBe(size / 2);
    // Entirely past the end: the first byte faults.
    using beyond = g.map(2 * size, PAGE_SIZE, { beyondEnd: true });
    const b = fault(() => beyond.read(0, 1));
    expect(b.offset).toBe(0);
    expect(b.fileOffset).toBe(BigInt(2 * size));
  });

  it('beyondEnd on a range inside the file is an ordinary mapping; the default still refuses the end', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: MiB, flags: SHARED });
    using inside = g.map(0, MiB, { beyondEnd: true });
    inside.bytes[5] = 5;
    expect(inside.read(5, 1)[0]).toBe(5);
    expect(() => g.map(0, 2 * MiB)).toThrow(/beyondEnd/);
    expect(() => g.map(0, 2 * MiB, { beyondEnd: false })).toThrow(RangeError);
    expect(() => g.map(0, MiB, { beyondEnd: 1 as never })).toThrow(TypeError);
    expect(() => g.map(0, MiB, null as never)).toThrow(TypeError);
  });

  it('1000 faults in a row leak nothing and leave guarded access working', (ctx) => {
    const size = 4 * PAGE_SIZE;
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size, flags: SHARED });
    using m = g.map(0, 2 * size, { beyondEnd: true });
    const fds = countFds('');
    const target = new Uint8Array(32);
    const rss = process.memoryUsage().rss;
    for (let i = 0; i < 1000; i++) {
      const e = fault(() => {
        switch (i % 3) {
          case 0: m.fill(i & 0xff, size - (i % 7)); break;
          case 1: m.readInto(size - (i % 11), target); break;
          default: m.write(size + (i % 5), target);
        }
      });
      expect(e.offset).toBe(i % 3 === 2 ? size + (i % 5) : size);
    }
    expect(countFds('')).toBe(fds);
    expect(process.memoryUsage().rss - rss).toBeLessThan(64 * MiB);
    // SIGBUS is not left blocked on this thread (a guarded fault restores the signal mask).
    const blocked = /^SigBlk:\s+([0-9a-f]+)$/m.exec(readFileSync('/proc/thread-self/status', 'utf8'))![1]!;
    expect(BigInt(`0x${blocked}`) & (1n << 6n)).toBe(0n); // SIGBUS = 7
    m.write(0, pattern(size));
    expect(Array.from(m.read(0, size))).toEqual(Array.from(pattern(size)));
  });
});

describe('guarded access elsewhere', () => {
  it('agrees with bytes on shared guest_memfd memory, at every alignment', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 4 * PAGE_SIZE, flags: SHARED });
    using m = g.map();
    const data = pattern(4 * PAGE_SIZE, 7);
    m.write(0, data);
    expect(Array.from(m.bytes)).toEqual(Array.from(data));
    for (let start = 0; start < 17; start++) {
      for (const len of [0, 1, 2, 7, 8, 9, 16, 31, 100]) {
        expect(Array.from(m.read(start, len))).toEqual(Array.from(m.bytes.subarray(start, start + len)));
        const chunk = pattern(len, start + len);
        m.write(4000 + start, chunk);
        expect(Array.from(m.bytes.subarray(4000 + start, 4000 + start + len))).toEqual(Array.from(chunk));
        m.fill(start, 8000 + start, len);
        expect(m.bytes.subarray(8000 + start, 8000 + start + len).every((b) => b === start)).toBe(true);
      }
    }
    m.bytes.fill(0x77);
    m.fill(0x12, 100, 3);
    expect(Array.from(m.bytes.subarray(99, 104))).toEqual([0x77, 0x12, 0x12, 0x12, 0x77]);
    m.fill(0x34);
    expect(m.bytes.every((b) => b === 0x34)).toBe(true);
    // readInto fills a Buffer or a view at an offset of a larger array.
    const big = new Uint8Array(64).fill(0);
    m.readInto(10, big.subarray(8, 16));
    expect(Array.from(big.subarray(0, 20))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, ...new Array<number>(8).fill(0x34), 0, 0, 0, 0]);
    const buf = Buffer.alloc(5);
    m.readInto(0, buf);
    expect([...buf]).toEqual([0x34, 0x34, 0x34, 0x34, 0x34]);
  });

  it('copies between the mapping and a view of the same mapping like memmove, in both directions', () => {
    // A forward copy whose destination starts inside its source reads bytes it already wrote
    // (write(1, bytes.subarray(0, 9)) gave nine copies of the first byte).
    using m = Mapping.anonymous(2 * PAGE_SIZE);
    const b = m.bytes;
    const cases: [number, number, number][] = [[1, 0, 9], [0, 1, 9], [8, 0, 100], [9, 1, 100], [3, 0, 5000], [0, 3, 5000], [PAGE_SIZE, PAGE_SIZE - 1, 10], [17, 16, PAGE_SIZE]];
    for (const [dst, src, len] of cases) {
      b.set(pattern(2 * PAGE_SIZE, dst * 7 + src));
      const expected = Buffer.from(b).copyWithin(dst, src, src + len);
      m.write(dst, b.subarray(src, src + len));
      expect(Buffer.from(b).equals(expected), `write(${dst}, bytes[${src}, +${len}))`).toBe(true);
      b.set(pattern(2 * PAGE_SIZE, dst * 11 + src));
      const expected2 = Buffer.from(b).copyWithin(dst, src, src + len);
      m.readInto(src, b.subarray(dst, dst + len));
      expect(Buffer.from(b).equals(expected2), `readInto(${src}, bytes[${dst}, +${len}))`).toBe(true);
    }
  });

  it('an overlapping copy that faults has done every byte before the fault and none after', () => {
    const memfd = native.memfdCreate('kvm-gmem-overlap');
    try {
      native.fallocate(memfd, 0, 0, PAGE_SIZE); // the file is one page; the mapping two
      const m = native.mapShared(memfd, 0, 2 * PAGE_SIZE, 1);
      const view = new Uint8Array(m.buffer, 0, PAGE_SIZE); // the page inside the file
      view.set(pattern(PAGE_SIZE, 5));
      const before = Uint8Array.from(view);
      // Source [4000, 4200) and destination [4010, 4210) overlap, and both cross the end of the
      // file at 4096: the source faults after 96 bytes, so 96 bytes could be copied, of which the
      // destination holds 86 before it faults too.
      const src = new Uint8Array(m.buffer, 4000, 200);
      const f = native.guardedWrite(m.buffer, 4010, src);
      expect(f).toMatchObject({ bytesDone: 86, address: m.address + BigInt(PAGE_SIZE), sigCode: 2 });
      expect(Array.from(view.subarray(4010))).toEqual(Array.from(before.subarray(4000, 4086)));
      expect(Array.from(view.subarray(0, 4010))).toEqual(Array.from(before.subarray(0, 4010)));
      native.unmap(m.buffer);
    } finally {
      native.close(memfd);
    }
  });

  it('a fault in the caller\'s target or data (not in the mapping) is reported as such', () => {
    const memfd = native.memfdCreate('kvm-gmem-empty');
    try {
      native.fallocate(memfd, 0, 0, PAGE_SIZE);
      const eof = native.mapShared(memfd, 0, 2 * PAGE_SIZE, 1); // its second page is past the end of the file
      using m = Mapping.anonymous(2 * PAGE_SIZE);
      m.bytes.fill(9);
      const r = fault(() => m.readInto(100, new Uint8Array(eof.buffer, PAGE_SIZE + 10, 50)));
      expect(r.side).toBe('buffer');
      expect(r.address).toBe(eof.address + BigInt(PAGE_SIZE + 10));
      expect(r.bytesDone).toBe(0);
      expect(r.offset).toBe(100); // where the copy stopped, in mapping terms
      expect(r.message).toContain('in the target buffer');
      expect(r.message).not.toContain('private to the guest');
      const w = fault(() => m.write(PAGE_SIZE - 8, new Uint8Array(eof.buffer, PAGE_SIZE - 8, 16)));
      expect(w.side).toBe('buffer');
      expect(w.message).toContain('in the data buffer');
      expect(w.address).toBe(eof.address + BigInt(PAGE_SIZE));
      expect(w.bytesDone).toBe(8);
      expect(w.offset).toBe(PAGE_SIZE);
      native.unmap(eof.buffer);
    } finally {
      native.close(memfd);
    }
  });

  it('works on anonymous memory, and the read is a copy', () => {
    using m = Mapping.anonymous(2 * PAGE_SIZE);
    m.bytes.set(pattern(2 * PAGE_SIZE, 3));
    const copy = m.read(0, 2 * PAGE_SIZE);
    expect(Array.from(copy)).toEqual(Array.from(m.bytes));
    copy[0] = copy[0]! ^ 0xff;
    expect(m.bytes[0]).not.toBe(copy[0]);
    m.write(PAGE_SIZE - 2, new Uint8Array([1, 2, 3, 4]));
    expect(Array.from(m.bytes.subarray(PAGE_SIZE - 2, PAGE_SIZE + 2))).toEqual([1, 2, 3, 4]);
    expect(m.read(2 * PAGE_SIZE, 0).length).toBe(0); // empty at the very end
  });

  it('checks its arguments and refuses use after close', () => {
    const m = Mapping.anonymous(PAGE_SIZE);
    expect(() => m.read(PAGE_SIZE, 1)).toThrow(RangeError);
    expect(() => m.read(PAGE_SIZE + 1, 0)).toThrow(RangeError);
    expect(() => m.read(0, PAGE_SIZE + 1)).toThrow(RangeError);
    expect(() => m.read(-1, 1)).toThrow(RangeError);
    expect(() => m.read(1n << 64n, 1)).toThrow(RangeError);
    expect(() => m.read('0' as never, 1)).toThrow(TypeError);
    expect(() => m.readInto(PAGE_SIZE - 1, new Uint8Array(2))).toThrow(RangeError);
    expect(() => m.readInto(0, [1, 2] as never)).toThrow(TypeError);
    expect(() => m.readInto(0, new Uint16Array(2) as never)).toThrow(TypeError);
    expect(() => m.write(PAGE_SIZE - 1, new Uint8Array(2))).toThrow(RangeError);
    expect(() => m.write(0, 'ab' as never)).toThrow(TypeError);
    expect(() => m.fill(256)).toThrow(RangeError);
    expect(() => m.fill(-1)).toThrow(RangeError);
    expect(() => m.fill(1.5)).toThrow(RangeError);
    expect(() => m.fill('1' as never)).toThrow(TypeError);
    expect(() => m.fill(0, 1, PAGE_SIZE)).toThrow(RangeError);
    const detached = new Uint8Array(8);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    expect(() => m.write(0, detached)).toThrow(TypeError);
    m.close();
    for (const call of [() => m.read(0, 1), () => m.readInto(0, new Uint8Array(1)), () => m.write(0, new Uint8Array(1)), () => m.fill(0)]) {
      const e = thrown(call);
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e.code).toBe('ERR_KVM_CLOSED');
    }
  });
});

describe('the SIGBUS handler in a process', () => {
  it('catches a fault inside a worker thread, in that worker', (ctx) => {
    openKvm(ctx).close();
    const index = distModule('index', 'Kvm');
    const errors = distModule('core/errors', 'GuestMemoryFaultError');
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-guarded-'));
    const worker = join(dir, 'worker.mjs');
    writeFileSync(worker, `
      import { Kvm, GuestMemfdFlag } from ${index};
      import { GuestMemoryFaultError } from ${errors};
      import { parentPort, workerData } from 'node:worker_threads';
      const vm = Kvm.open().createVm();
      const g = vm.createGuestMemfd({ size: 8192, flags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED });
      const m = g.map(0, 4 * 8192, { beyondEnd: true });
      const out = [];
      for (let i = 0; i < 50; i++) {
        try {
          m.fill(workerData);
          out.push('no fault');
        } catch (e) {
          out.push(e instanceof GuestMemoryFaultError ? e.offset + ':' + e.bytesDone : String(e));
        }
      }
      parentPort.postMessage({ out: [...new Set(out)], head: m.read(0, 4).join(',') });
    `);
    const script = `
      import { Worker } from 'node:worker_threads';
      const results = await Promise.all([1, 2, 3, 4].map((n) => new Promise((resolve, reject) => {
        const w = new Worker(${JSON.stringify(worker)}, { workerData: n, execArgv: [] });
        w.once('message', resolve);
        w.once('error', reject);
      })));
      console.log(JSON.stringify(results));
    `;
    try {
      const r = runChild(script);
      expect(r.stderr).toBe('');
      expect(r.signal).toBe(null);
      expect(JSON.parse(r.stdout)).toEqual([1, 2, 3, 4].map((n) => ({ out: ['8192:8192'], head: `${n},${n},${n},${n}` })));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a SIGBUS sent with kill() still kills the process once the handler is installed', () => {
    const native = distModule('core/native', 'MapSharedFlag');
    const r = runChild(`
      import { native } from ${native};
      const m = native.mapAnonymous(4096);
      if (native.guardedFill(m.buffer, 0, 4096, 1) !== undefined) throw new Error('unexpected fault');
      process.kill(process.pid, 'SIGBUS');
      setTimeout(() => console.log('survived'), 200);
    `);
    expect(r.stdout).toBe('');
    expect(r.signal).toBe('SIGBUS');
  });

  it('an unguarded access past the end of a file still kills the process with SIGBUS', () => {
    const native = distModule('core/native', 'MapSharedFlag');
    const r = runChild(`
      import { native } from ${native};
      const fd = native.memfdCreate('kvm-gmem-empty');
      const m = native.mapShared(fd, 0, 8192, 1); // past the end: the addon is told to allow it
      const f = native.guardedRead(m.buffer, 0, new Uint8Array(1));
      console.log('guarded', f.sigCode);
      new Uint8Array(m.buffer)[0] = 1; // no guard: the default action
      console.log('survived');
    `);
    expect(r.stdout.trim()).toBe('guarded 2');
    expect(r.signal).toBe('SIGBUS');
  });

  it('chains to a handler installed before it, and reinstalls itself over one installed after it', () => {
    const native = distModule('core/native', 'MapSharedFlag');
    // process.on('SIGBUS') makes libuv install a handler; a kill()ed SIGBUS reaches the listener.
    const r = runChild(`
      import { native } from ${native};
      const fd = native.memfdCreate('kvm-gmem-empty');
      const m = native.mapShared(fd, 0, 8192, 1);
      const order = process.argv.at(-1);
      let heard = 0;
      const listen = () => process.on('SIGBUS', () => { heard++; });
      const guarded = () => native.guardedFill(m.buffer, 4096, 4096, 0)?.bytesDone;
      listen();                               // before: ours chains to libuv's
      console.log('fault', guarded());
      process.kill(process.pid, 'SIGBUS');
      await new Promise((r) => setTimeout(r, 100));
      process.removeAllListeners('SIGBUS');   // libuv resets SIGBUS to SIG_DFL
      listen();                               // and installs its handler again, over nothing of ours
      console.log('fault', guarded());        // ours is back, and chains to libuv's
      process.kill(process.pid, 'SIGBUS');
      await new Promise((r) => setTimeout(r, 100));
      console.log('heard', heard);
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['fault 0', 'fault 0', 'heard 2']);
    expect(r.status).toBe(0);
  });
});

describe('the SIGBUS handler and the rest of the process', () => {
  it('a SIGBUS that a process.on listener handles does not interrupt a blocking system call (SA_RESTART kept)', () => {
    // libuv installs its handler with SA_RESTART: a blocking read that the signal interrupts is
    // restarted. The guarded-access handler, installed over it and chaining to it, must keep that,
    // or readSync fails with EINTR once a guarded access has been made.
    const native = distModule('core/native', 'MapSharedFlag');
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-restart-'));
    const fifo = join(dir, 'fifo');
    try {
      expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
      const r = runChild(`
        import { native } from ${native};
        import { spawn } from 'node:child_process';
        import { constants, openSync, readSync } from 'node:fs';
        let heard = 0;
        process.on('SIGBUS', () => { heard++; });
        const m = native.mapAnonymous(4096);
        native.guardedFill(m.buffer, 0, 1, 0); // installs the guarded-access handler
        const fd = openSync(${JSON.stringify(fifo)}, constants.O_RDWR);
        // The main thread blocks in read(); the signal arrives during it, the data after it.
        spawn('sh', ['-c', 'sleep 0.3; kill -BUS ' + process.pid + '; sleep 0.3; printf ok > ${fifo}'], { stdio: 'ignore' });
        const buf = Buffer.alloc(2);
        try {
          console.log('read', buf.toString('utf8', 0, readSync(fd, buf, 0, 2, null)));
        } catch (e) {
          console.log('read failed', e.code);
        }
        // The listener runs from the event loop once read() is back: wait for it (bounded), not
        // for a fixed time, which a slow machine overruns.
        const report = () => console.log('heard', heard);
        if (heard > 0) report();
        else {
          const t = setTimeout(report, 5000);
          process.once('SIGBUS', () => { clearTimeout(t); setImmediate(report); });
        }
      `);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim().split('\n')).toEqual(['read ok', 'heard 1']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('two copies of the addon in one process', () => {
  // Two copies (two versions of the package, or both builds) each install their handler over the
  // other's and chain to it: A chains to B, B to A. A SIGBUS that neither caused went round that
  // cycle until the stack overflowed (SIGSEGV), even with a listener that should have handled it.
  function twoCopies(listen: boolean) {
    const native = distModule('core/native', 'MapSharedFlag');
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-copy-'));
    try {
      const copy = join(dir, 'kvm_gmem.node'); // another file: dlopen() loads it a second time
      return runChild(`
        import { native as a, addonPath } from ${native};
        import { copyFileSync } from 'node:fs';
        import { createRequire } from 'node:module';
        copyFileSync(addonPath, ${JSON.stringify(copy)});
        const b = createRequire(import.meta.url)(${JSON.stringify(copy)});
        let heard = 0;
        if (${listen}) process.on('SIGBUS', () => { heard++; });
        const fd = a.memfdCreate('kvm-gmem-empty');
        const ma = a.mapShared(fd, 0, 4096, 1);
        const mb = b.mapShared(fd, 0, 4096, 1);
        const faults = [];
        for (const [n, m] of [[a, ma], [b, mb], [a, ma], [b, mb], [a, ma]]) faults.push(n.guardedRead(m.buffer, 0, new Uint8Array(1))?.sigCode);
        console.log('faults', faults.join(','));
        process.kill(process.pid, 'SIGBUS');
        setTimeout(() => console.log('heard', heard), 200);
      `);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('each catches its own faults, and a SIGBUS neither caused reaches the listener', () => {
    const r = twoCopies(true);
    expect(r.stderr).toBe('');
    expect(r.signal).toBe(null);
    expect(r.stdout.trim().split('\n')).toEqual(['faults 2,2,2,2,2', 'heard 1']);
  });

  it('without a listener, a SIGBUS neither caused kills the process with SIGBUS', () => {
    const r = twoCopies(false);
    expect(r.stdout.trim()).toBe('faults 2,2,2,2,2');
    expect(r.signal).toBe('SIGBUS');
  });
});

describe('gmem.map alignment', () => {
  it('places the mapping at a multiple of align, and refuses bad alignments', (ctx) => {
    using vm = gmemVm(ctx, SHARED);
    using g = vm.createGuestMemfd({ size: 4 * MiB, flags: SHARED });
    for (const align of [PAGE_SIZE, 64 * 1024, 2 * MiB, 1n << 30n]) {
      using m = g.map(0, 2 * MiB, { align });
      expect(m.address % BigInt(align)).toBe(0n);
      m.bytes.fill(1);
      expect(m.residentPages()).toBe((2 * MiB) / PAGE_SIZE);
    }
    // Combined with beyondEnd and an offset.
    using past = g.map(2 * MiB, 4 * MiB, { align: 2 * MiB, beyondEnd: true });
    expect(past.address % BigInt(2 * MiB)).toBe(0n);
    expect(fault(() => past.fill(2)).offset).toBe(2 * MiB);
    for (const align of [0, 1, 2048, 3 * PAGE_SIZE, 2 ** 31, -PAGE_SIZE]) {
      expect(() => g.map(0, MiB, { align }), `align ${align}`).toThrow(RangeError);
    }
    expect(() => g.map(0, MiB, { align: '4096' as never })).toThrow(TypeError);
  });
});

describe('gmem.map alignment under concurrency', () => {
  it('a failing aligned map() never unmaps memory another thread mapped meanwhile', (ctx) => {
    // map() with align on a guest_memfd without MMAP fails with ENODEV from the file's ->mmap,
    // which the kernel calls after clearing the target range. With the file mapped by MAP_FIXED
    // over a reservation, that left a hole inside the reservation for a moment, another thread's
    // mmap could land in it, and the clean-up unmapped the whole reservation: that thread's
    // memory was gone (here: mincore answers ENOMEM for it). MAP_FIXED_NOREPLACE leaves nothing.
    openKvm(ctx).close();
    const index = distModule('index', 'Kvm');
    const native = distModule('core/native', 'MapSharedFlag');
    const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-align-'));
    const worker = join(dir, 'worker.mjs');
    writeFileSync(worker, `
      import { native } from ${native};
      import { workerData as stop, parentPort } from 'node:worker_threads';
      const held = [];
      let lost = 0;
      // mincore fails (ENOMEM) on a range that is no longer mapped; and once a range was unmapped
      // behind its record's back, the record may no longer be found either.
      const check = (m) => { try { native.mincore(m.buffer); native.unmap(m.buffer); } catch { lost++; } };
      parentPort.postMessage('ready');
      while (Atomics.load(stop, 0) === 0) {
        held.push(native.mapAnonymous(1 << 20));
        if (held.length > 32) check(held.shift());
      }
      held.forEach(check);
      parentPort.postMessage(lost);
    `);
    const script = `
      import { Kvm } from ${index};
      import { Worker } from 'node:worker_threads';
      const vm = Kvm.open().createVm();
      const g = vm.createGuestMemfd({ size: 1 << 20 }); // no MMAP: mmap() is ENODEV
      const stop = new Int32Array(new SharedArrayBuffer(4));
      const w = new Worker(${JSON.stringify(worker)}, { workerData: stop, execArgv: [] });
      await new Promise((r) => w.once('message', r));
      let failures = 0;
      for (const end = Date.now() + 500; Date.now() < end;) {
        try { g.map(0, 1 << 20, { align: 1 << 21 }); } catch (e) { if (e.code !== 'ENODEV') throw e; failures++; }
      }
      Atomics.store(stop, 0, 1);
      const lost = await new Promise((r) => w.once('message', r));
      console.log(JSON.stringify({ lost, failed: failures > 0 }));
    `;
    try {
      const r = runChild(script);
      expect(r.stderr).toBe('');
      expect(r.signal).toBe(null);
      expect(JSON.parse(r.stdout)).toEqual({ lost: 0, failed: true });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
