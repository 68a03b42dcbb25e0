// The addon never trusts its caller: every native function, called directly with hostile
// arguments, throws a TypeError/RangeError (or a KvmError from the kernel) and the process
// lives on. lib/ checks first, but the addon must hold on its own. (One past each limit of
// native/util/limits.h is refused in limits-agree.test.ts.)
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { CPUID_ENTRY_SIZE, KvmError, KvmStateError } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { vmasOf } from './kvm-host.js';

// Values that are never a valid fd, u32 or u64; none can name an open fd of this process.
const hostile: unknown[] = [
  undefined, null, true, 'x', '3', {}, [], [1], Symbol('s'), () => 0,
  -1, -0.5, 1.5, NaN, Infinity, -Infinity, 2 ** 53, 2 ** 64, -1n, 1n << 64n, 1n << 100n,
  new ArrayBuffer(8), new Uint8Array(8),
];

// Arity of each function that takes only fds and numbers (the others are tested below).
const numeric: Record<string, number> = {
  close: 1, ownFd: 1, disownFd: 1, setCloexec: 1, getApiVersion: 1, checkExtension: 2, createVm: 2, getVcpuMmapSize: 1,
  createGuestMemfd: 3, setUserMemoryRegion2: 8, setUserMemoryRegion: 6, fstat: 1, inodeOf: 1, fallocate: 4,
  mapShared: 3, mapAnonymous: 1, createVcpu: 2, mmapProbe: 5, dupCloexec: 1,
  unixAccept: 1, socketType: 1, recvMsg: 3, fsMagic: 1, getSupportedCpuid: 1, getCpuid2: 1,
  setMemoryAttributes: 5, enableCap: 7, hostCpuid: 2,
};

// Functions that act on a live mapping (their first argument): valid arguments for each, given
// the mapping's buffer (a 4-page anonymous mapping).
const onMapping: Record<string, (b: ArrayBuffer) => unknown[]> = {
  guardedRead: (b) => [b, 0, new Uint8Array(8)],
  guardedWrite: (b) => [b, 0, new Uint8Array(8)],
  guardedFill: (b) => [b, 0, 8, 1],
  madvise: (b) => [b, 0, 4096, 0],
  mbind: (b) => [b, 0, 4096, 0, 0n, 64, 0],
  getMempolicy: (b) => [b, 0],
  pageNodes: (b) => [b, [0]],
};

/** Whether a hostile value is in fact valid in that position (so the call may succeed). */
function acceptable(name: string, pos: number, v: unknown): boolean {
  if (name.startsWith('guarded') && name !== 'guardedFill' && pos === 2) return v instanceof Uint8Array;
  if (name === 'pageNodes' && pos === 1) return Array.isArray(v) && v.every((x) => x === 1);
  // A nodemask is up to 1024 bits: a node number above 63 is the kernel's to judge.
  if (name === 'mbind' && pos === 4) return typeof v === 'bigint' && v >= 0n && v < 1n << 1024n;
  return false;
}

// Register ioctls: (fd, Uint8Array of exactly the struct's size; the sizes are held to the
// kernel's headers in uapi-constants.test.ts).
const layout = native.uapiLayout();
const structs: Record<string, number> = {
  getRegs: layout.kvm_regs!.size!, setRegs: layout.kvm_regs!.size!, getSregs: layout.kvm_sregs!.size!,
  setSregs: layout.kvm_sregs!.size!, getFpu: layout.kvm_fpu!.size!, setFpu: layout.kvm_fpu!.size!,
};

function survives(f: () => unknown): void {
  try {
    f();
  } catch (e) {
    expect(e instanceof TypeError || e instanceof RangeError || e instanceof KvmError, String(e)).toBe(true);
  }
}

describe('native addon argument checks', () => {
  it('covers every exported function', () => {
    const tested = new Set([
      ...Object.keys(numeric), ...Object.keys(structs), ...Object.keys(onMapping), 'open', 'memfdCreate', 'unmap', 'mincore', 'setErrorFactory', 'setStateErrorFactory', 'setArgErrorFactory', 'limits',
      'uapiLayout', 'VcpuRunner', 'socketPair', 'unixListen', 'unixConnect', 'sendMsg', 'FdWatch', 'setCpuid2',
      'preFaultMemory',
    ]);
    expect(Object.keys(native).filter((k) => !tested.has(k))).toEqual([]);
  });

  it.each(Object.entries(numeric))('%s rejects hostile values in every position and with too few arguments', (name, arity) => {
    const f = (native as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!;
    // An fd that is surely closed, and harmless numbers, fill the other positions.
    const fill = (i: number) => (i === 0 ? 0x7ffffff0 : 0);
    for (let pos = 0; pos < arity; pos++) {
      for (const v of hostile) {
        const args = Array.from({ length: arity }, (_, i) => (i === pos ? v : fill(i)));
        expect(() => f(...args), `${name} arg ${pos} = ${String(v)}`).toThrow();
        survives(() => f(...args));
      }
    }
    for (let n = 0; n < arity; n++) expect(() => f(...Array.from({ length: n }, (_, i) => fill(i)))).toThrow(TypeError);
  });

  // (At most maxCpuidEntries entries: limits-agree.test.ts, as for every limit below.)
  it('setCpuid2 takes an fd and a whole number of CPUID entries', () => {
    const closed = 0x7ffffff0;
    for (const v of hostile) {
      expect(() => native.setCpuid2(v as number, new Uint8Array(CPUID_ENTRY_SIZE))).toThrow();
      if (!(v instanceof Uint8Array)) expect(() => native.setCpuid2(closed, v as Uint8Array)).toThrow(TypeError);
    }
    for (const n of [1, CPUID_ENTRY_SIZE - 1, CPUID_ENTRY_SIZE + 1]) expect(() => native.setCpuid2(closed, new Uint8Array(n))).toThrow(RangeError);
    expect(() => native.setCpuid2(closed, new Uint8Array(CPUID_ENTRY_SIZE))).toThrow(KvmError); // EBADF: the checks passed
  });

  it('preFaultMemory takes an fd, three u64s and a BigUint64Array(2) for the range passed back', () => {
    const closed = 0x7ffffff0;
    const out = () => new BigUint64Array(2);
    for (let pos = 0; pos < 4; pos++) {
      for (const v of hostile) {
        const args: unknown[] = [closed, 0, 4096, 0, out()];
        args[pos] = v;
        expect(() => (native.preFaultMemory as (...a: unknown[]) => number)(...args), `arg ${pos} = ${String(v)}`).toThrow();
      }
    }
    for (const bad of [...hostile, new BigUint64Array(1), new BigUint64Array(3), new BigInt64Array(2), new Uint32Array(4)]) {
      expect(() => native.preFaultMemory(closed, 0, 4096, 0, bad as BigUint64Array)).toThrow(TypeError);
    }
    // The checks passed: the ioctl's errno comes back (EBADF), and the range is passed back as given.
    const o = out();
    expect(native.preFaultMemory(closed, 0x1000n, 0x2000n, 0, o)).toBe(9);
    expect([...o]).toEqual([0x1000n, 0x2000n]);
  });

  it('open and memfdCreate take strings without NUL bytes', () => {
    for (const v of hostile.filter((h) => typeof h !== 'string')) expect(() => native.open(v as string)).toThrow(TypeError);
    expect(() => native.open('/dev/kvm\0/x')).toThrow(TypeError);
    expect(() => native.memfdCreate(42 as unknown as string)).toThrow(TypeError);
  });

  it('unmap and mincore refuse any ArrayBuffer the addon did not map', () => {
    for (const v of [...hostile, new ArrayBuffer(4096), new SharedArrayBuffer(4096)]) {
      expect(() => native.unmap(v as ArrayBuffer)).toThrow(TypeError);
      expect(() => native.mincore(v as ArrayBuffer)).toThrow(TypeError);
    }
    // A mapping can be released once; the released buffer is refused afterwards.
    const m = native.mapAnonymous(4096);
    native.unmap(m.buffer);
    expect(() => native.unmap(m.buffer)).toThrow(TypeError);
    expect(() => native.mincore(m.buffer)).toThrow(TypeError);
    const placeholder = new Uint8Array(m.buffer);
    placeholder.fill(1); // still safe to touch: a placeholder until collected
    expect(placeholder.every((b) => b === 1)).toBe(true);
  });

  it('mapShared refuses ranges past the end of the file (a touch there would be SIGBUS)', () => {
    const memfd = native.memfdCreate('kvm-gmem-empty'); // 0 bytes
    try {
      expect(() => native.mapShared(memfd, 0, 4096)).toThrow(/past the end/);
    } finally {
      native.close(memfd);
    }
  });

  it('mapShared checks its optional flags and align, and maps past the end only when told', () => {
    const memfd = native.memfdCreate('kvm-gmem-empty'); // 0 bytes: every page is past the end
    try {
      for (const v of hostile.filter((h) => h !== undefined)) {
        expect(() => native.mapShared(memfd, 0, 4096, v as number), `flags = ${inspect(v)}`).toThrow();
        survives(() => native.mapShared(memfd, 0, 4096, v as number));
        expect(() => native.mapShared(memfd, 0, 4096, 1, v as number), `align = ${inspect(v)}`).toThrow();
        survives(() => native.mapShared(memfd, 0, 4096, 1, v as number));
      }
      expect(() => native.mapShared(memfd, 0, 4096, 2)).toThrow(RangeError); // unknown flag bit
      for (const align of [1, 2048, 4095, 3 * 4096, 2 ** 31, 1n << 40n]) {
        expect(() => native.mapShared(memfd, 0, 4096, 1, align), `align ${align}`).toThrow(RangeError);
      }
      expect(() => native.mapShared(memfd, 0, 4096, 0)).toThrow(/past the end/);
      for (const align of [0, 4096, 1 << 21, 1 << 30]) {
        const m = native.mapShared(memfd, 0, 8192, 1, align);
        if (align) expect(m.address % BigInt(align)).toBe(0n);
        expect(m.buffer.byteLength).toBe(8192);
        native.unmap(m.buffer);
      }
    } finally {
      native.close(memfd);
    }
  });

  it('guarded accessors report a SIGBUS past the end of a file instead of dying', () => {
    const memfd = native.memfdCreate('kvm-gmem-empty');
    try {
      const m = native.mapShared(memfd, 0, 8192, 1);
      const f = native.guardedRead(m.buffer, 4100, new Uint8Array(16));
      expect(f).toMatchObject({ bytesDone: 0, address: m.address + 4100n, sigCode: 2 }); // BUS_ADRERR
      expect(native.guardedWrite(m.buffer, 0, new Uint8Array(3))).toMatchObject({ bytesDone: 0, sigCode: 2 });
      expect(native.guardedFill(m.buffer, 0, 8192, 0)).toMatchObject({ bytesDone: 0, address: m.address });
      expect(native.guardedRead(m.buffer, 0, new Uint8Array(0))).toBeUndefined(); // nothing to touch
      native.unmap(m.buffer);
    } finally {
      native.close(memfd);
    }
  });

  it.each(Object.entries(onMapping))('%s takes a live mapping and checks every other argument', (name, valid) => {
    const f = (native as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!;
    const m = native.mapAnonymous(4 * 4096);
    const released = native.mapAnonymous(4096);
    native.unmap(released.buffer);
    try {
      const good = valid(m.buffer);
      f(...good); // the valid call works
      for (const b of [...hostile, new ArrayBuffer(4 * 4096), new SharedArrayBuffer(4096), released.buffer]) {
        expect(() => f(b, ...good.slice(1)), `${name} buffer = ${String(b)}`).toThrow(TypeError);
      }
      for (let pos = 1; pos < good.length; pos++) {
        for (const v of hostile) {
          const args = good.map((g, i) => (i === pos ? v : g));
          survives(() => f(...args));
          if (!acceptable(name, pos, v)) expect(() => f(...args), `${name} arg ${pos} = ${String(v)}`).toThrow();
        }
      }
      for (let n = 0; n < good.length; n++) expect(() => f(...good.slice(0, n)), `${name} with ${n} arguments`).toThrow(TypeError);
      // Offsets and lengths past the mapping are refused before any access or system call.
      const beyond = 4 * 4096 + 1;
      const past = good.map((g, i) => (i === 1 ? (name === 'pageNodes' ? [beyond] : beyond) : g));
      expect(() => f(...past)).toThrow(RangeError);
    } finally {
      native.unmap(m.buffer);
    }
  });

  it('guarded accessors refuse detached arrays and ranges past the mapping', () => {
    const m = native.mapAnonymous(4096);
    try {
      const detached = new Uint8Array(16);
      structuredClone(detached.buffer, { transfer: [detached.buffer] });
      expect(() => native.guardedRead(m.buffer, 0, detached)).toThrow(TypeError);
      expect(() => native.guardedWrite(m.buffer, 0, detached)).toThrow(TypeError);
      expect(() => native.guardedRead(m.buffer, 4090, new Uint8Array(7))).toThrow(RangeError);
      expect(() => native.guardedFill(m.buffer, 1, 4096, 0)).toThrow(RangeError);
      expect(() => native.guardedFill(m.buffer, 0, 1, 256)).toThrow(RangeError);
      expect(() => native.guardedRead(m.buffer, 0, new Uint16Array(4) as never)).toThrow(TypeError);
      expect(() => native.guardedRead(m.buffer, 2n ** 64n - 1n, new Uint8Array(1))).toThrow(RangeError);
      // Views over the mapping itself are ordinary memory to copy from and to.
      const own = new Uint8Array(m.buffer);
      own.fill(7, 0, 16);
      expect(native.guardedWrite(m.buffer, 100, own.subarray(0, 16))).toBeUndefined();
      expect(own[115]).toBe(7);
    } finally {
      native.unmap(m.buffer);
    }
  });

  it('madvise refuses the advice values that poison, offline or guard memory; mmapProbe refuses MAP_FIXED', () => {
    const m = native.mapAnonymous(4096);
    try {
      for (const advice of [100, 101, 102]) expect(() => native.madvise(m.buffer, 0, 4096, advice)).toThrow(RangeError);
      // Only advice the addon knows to be harmless reaches the kernel: a value it does not know
      // (unused, or added by a newer kernel, as HWPOISON and GUARD_INSTALL once were) is refused.
      for (const advice of [-1, 5, 6, 7, 26, 99, 104, 105, 2 ** 31 - 1, -(2 ** 31)]) {
        expect(() => native.madvise(m.buffer, 0, 4096, advice), `advice ${advice}`).toThrow(/"advice" argument/);
        expect(() => native.madvise(m.buffer, 0, 4096, advice)).toThrow(RangeError);
      }
      // The harmless ones reach the kernel: each leaves its mark in the mapping's VmFlags (smaps)
      // or in its contents, and none loses data it should keep.
      const page = new Uint8Array(m.buffer);
      const marks = ['rr', 'sr', 'dc', 'dd'];
      const seen = [0, 1, 2, 3, 4, 10, 11, 16, 17, 103].map((advice) => {
        page.fill(7);
        native.madvise(m.buffer, 0, 4096, advice);
        return { advice, flags: marks.filter((f) => vmasOf(m.address, 4096)[0]!.flags.includes(f)), byte: page[4095] };
      });
      expect(seen).toEqual([
        { advice: 0, flags: [], byte: 7 }, // NORMAL
        { advice: 1, flags: ['rr'], byte: 7 }, // RANDOM
        { advice: 2, flags: ['sr'], byte: 7 }, // SEQUENTIAL
        { advice: 3, flags: ['sr'], byte: 7 }, // WILLNEED
        { advice: 4, flags: ['sr'], byte: 0 }, // DONTNEED: private anonymous memory reads back as zeros
        { advice: 10, flags: ['sr', 'dc'], byte: 7 }, // DONTFORK
        { advice: 11, flags: ['sr'], byte: 7 }, // DOFORK
        { advice: 16, flags: ['sr', 'dd'], byte: 7 }, // DONTDUMP
        { advice: 17, flags: ['sr'], byte: 7 }, // DODUMP
        { advice: 103, flags: ['sr'], byte: 7 }, // GUARD_REMOVE: there was no guard
      ]);
      expect(() => native.mbind(m.buffer, 0, 4096, 0, 1n << 1024n, 64, 0)).toThrow(RangeError);
      expect(() => native.pageNodes(m.buffer, ['0'] as never)).toThrow(TypeError);
      expect(() => native.getMempolicy(m.buffer, 4096)).toThrow(RangeError);
    } finally {
      native.unmap(m.buffer);
    }
    expect(() => native.mmapProbe(0x7ffffff0, 0, 4096, 3, 0x10 | 0x01)).toThrow(RangeError); // MAP_FIXED|MAP_SHARED
    expect(native.mmapProbe(0x7ffffff0, 0, 4096, 3, 1)).toBe(9); // EBADF: an answer, not an exception
  });

  it.each(Object.entries(structs))('%s takes an fd and a Uint8Array of exactly %i bytes', (name, size) => {
    const f = (native as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!;
    for (const v of hostile) {
      survives(() => f(v, new Uint8Array(size)));
      expect(() => f(0x7ffffff0, v)).toThrow(v instanceof Uint8Array ? RangeError : TypeError);
    }
    for (const bad of [new Uint8Array(size - 1), new Uint8Array(size + 1), new Uint8Array(0)]) expect(() => f(0x7ffffff0, bad)).toThrow(RangeError);
    for (const bad of [new Uint16Array(size / 2), new DataView(new ArrayBuffer(size)), Buffer.alloc(size).buffer]) {
      expect(() => f(0x7ffffff0, bad)).toThrow(TypeError);
    }
    // The right shape reaches the kernel, which answers for the closed fd.
    expect(() => f(0x7ffffff0, new Uint8Array(size))).toThrow(KvmError);
  });

  it('VcpuRunner refuses hostile arguments and must be constructed with new', () => {
    const R = native.VcpuRunner as unknown as new (...a: unknown[]) => unknown;
    for (const v of hostile) {
      survives(() => new R(v, 4096));
      expect(() => new R(v, 4096)).toThrow();
      expect(() => new R(0, v)).toThrow();
    }
    expect(() => new R()).toThrow(TypeError);
    expect(() => (R as unknown as () => unknown)()).toThrow(TypeError);
  });

  it('fd passing: socket calls take paths, arrays of fds and bounded sizes', () => {
    // Paths: strings without NUL bytes, 1..maxSocketPathBytes bytes (sun_path).
    for (const v of [...hostile.filter((h) => typeof h !== 'string'), '', 'a'.repeat(native.limits.maxSocketPathBytes + 1), '/tmp/x\0y']) {
      survives(() => native.unixListen(v as string, 1));
      expect(() => native.unixListen(v as string, 1), `unixListen path ${String(v)}`).toThrow();
      expect(() => native.unixConnect(v as string), `unixConnect path ${String(v)}`).toThrow();
    }
    for (const v of [...hostile, 0, -5]) expect(() => native.unixListen('/nonexistent-dir/s', v as number)).toThrow();
    expect(() => native.unixConnect('/nonexistent-dir/s')).toThrow(KvmError); // ENOENT from the kernel
    // unixAccept/socketType/recvMsg on a socket pair: real values, and bounds.
    const [a, b] = native.socketPair();
    try {
      expect(native.socketType(a)).toEqual({ domain: 1, type: 5, listening: false });
      expect(native.recvMsg(a, 16, 4)).toBeUndefined(); // nothing waiting: EAGAIN is an answer
      expect(() => native.recvMsg(a, 0, 4)).toThrow(RangeError);
      expect(() => native.unixAccept(a)).toThrow(KvmError); // EINVAL: not listening
      // sendMsg(fd, bytes, fds, timeoutMs): each argument checked.
      const good: unknown[] = [a, new Uint8Array(4), [], 0];
      for (let pos = 0; pos < 4; pos++) {
        for (const v of hostile) {
          if (pos === 1 && v instanceof Uint8Array) continue; // a valid payload
          if (pos === 2 && Array.isArray(v)) continue; // [] and [1] are valid fd lists
          if (pos === 3 && v === -1) continue; // no time limit: valid
          const args = good.map((g, i) => (i === pos ? v : g));
          survives(() => native.sendMsg(...(args as Parameters<typeof native.sendMsg>)));
          expect(() => native.sendMsg(...(args as Parameters<typeof native.sendMsg>)), `sendMsg arg ${pos} = ${String(v)}`).toThrow();
        }
      }
      for (let n = 0; n < 4; n++) expect(() => (native.sendMsg as (...x: unknown[]) => unknown)(...good.slice(0, n))).toThrow(TypeError);
      for (const el of hostile) {
        if (typeof el === 'number' && Number.isInteger(el) && el >= 0 && el < 2 ** 31) continue;
        expect(() => native.sendMsg(a, new Uint8Array(1), [el as number], 0), `fds element ${String(el)}`).toThrow();
      }
      expect(() => native.sendMsg(a, new Uint8Array(1), [], -2)).toThrow(RangeError);
      expect(() => native.sendMsg(a, new Uint8Array(1), [0x7ffffff0], 0)).toThrow(KvmError); // EBADF
      const detached = new Uint8Array(4);
      structuredClone(detached.buffer, { transfer: [detached.buffer] });
      expect(() => native.sendMsg(a, detached, [], 0)).toThrow(TypeError);
      expect(native.recvMsg(b, 16, 4)).toBeUndefined(); // nothing of the refused calls arrived
      expect(native.sendMsg(a, new Uint8Array([1, 2]), [], 0)).toBe(2);
      expect(native.recvMsg(b, 16, 4)).toMatchObject({ fds: [], flags: 0, closed: 0 });
    } finally {
      native.close(a);
      native.close(b);
    }
  });

  it('FdWatch refuses hostile arguments, must be constructed with new, and one wait at a time', async () => {
    const W = native.FdWatch as unknown as new (...a: unknown[]) => { wait(t: unknown): Promise<number>; close(): void };
    for (const v of hostile) {
      survives(() => new W(v));
      expect(() => new W(v)).toThrow();
    }
    expect(() => new W(0x7ffffff0)).toThrow(KvmError); // EBADF from the dup
    expect(() => new W()).toThrow(TypeError);
    expect(() => (W as unknown as () => unknown)()).toThrow(TypeError);
    const [a, b] = native.socketPair();
    const w = new W(a);
    try {
      for (const v of [...hostile.filter((h) => h !== -1), -2]) expect(() => w.wait(v), `wait(${String(v)})`).toThrow();
      await expect(w.wait(0)).resolves.toBe(0); // timeout
      const p = w.wait(-1);
      expect(() => w.wait(-1)).toThrow(/already in flight/);
      expect(() => w.wait(-1)).toThrow(expect.objectContaining({ name: 'KvmStateError', code: 'ERR_KVM_BUSY' }));
      native.sendMsg(b, new Uint8Array([1]), [], 0);
      await expect(p).resolves.toBe(1); // readable
      native.recvMsg(a, 16, 0); // nothing left to read
      const q = w.wait(-1);
      w.close();
      await expect(q).resolves.toBe(2); // closed while waiting
      expect(() => w.wait(0)).toThrow(/closed/);
      expect(() => w.wait(0)).toThrow(expect.objectContaining({ name: 'KvmStateError', code: 'ERR_KVM_CLOSED' }));
      w.close();
    } finally {
      native.close(a);
      native.close(b);
    }
  });

  it('native argument errors carry a code, as the library\'s own do (before: no code)', () => {
    const codeOf = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return [(e as Error).constructor.name, (e as { code?: string }).code];
      }
      return ['no error', undefined];
    };
    expect(codeOf(() => native.close('3' as never))).toEqual(['TypeError', 'ERR_INVALID_ARG_TYPE']);
    expect(codeOf(() => native.close(-1))).toEqual(['RangeError', 'ERR_OUT_OF_RANGE']);
    expect(codeOf(() => (native.close as (...a: unknown[]) => void)())).toEqual(['TypeError', 'ERR_MISSING_ARGS']);
    const detached = new Uint8Array(new ArrayBuffer(8));
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    expect(codeOf(() => native.getRegs(0, detached))).toEqual(['TypeError', 'ERR_INVALID_ARG_VALUE']);
  });

  it('setErrorFactory, setStateErrorFactory and setArgErrorFactory require a function; state errors are KvmStateErrors', () => {
    expect(() => native.setErrorFactory(1 as never)).toThrow(TypeError);
    expect(() => native.setStateErrorFactory(1 as never)).toThrow(TypeError);
    expect(() => native.setArgErrorFactory(1 as never)).toThrow(TypeError);
    const [a, b] = native.socketPair();
    const w = new native.FdWatch(a);
    w.close();
    try {
      void w.wait(0);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e).toMatchObject({ code: 'ERR_KVM_CLOSED', message: 'wait: the fd watch is closed' });
    } finally {
      native.close(a);
      native.close(b);
    }
  });
});
