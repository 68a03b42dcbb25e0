// The addon never trusts its caller: every native function, called directly with hostile
// arguments, throws a TypeError/RangeError (or a KvmError from the kernel) and the process
// lives on. lib/ checks first, but the addon must hold on its own.
import { describe, expect, it } from 'vitest';
import { KvmError } from '../lib/index.js';
import { native } from '../lib/native.js';

// Values that are never a valid fd, u32 or u64; none can name an open fd of this process.
const hostile: unknown[] = [
  undefined, null, true, 'x', '3', {}, [], [1], Symbol('s'), () => 0,
  -1, -0.5, 1.5, NaN, Infinity, -Infinity, 2 ** 53, 2 ** 64, -1n, 1n << 64n, 1n << 100n,
  new ArrayBuffer(8), new Uint8Array(8),
];

// Arity of each function that takes only fds and numbers (the others are tested below).
const numeric: Record<string, number> = {
  close: 1, setCloexec: 1, getApiVersion: 1, checkExtension: 2, createVm: 2, getVcpuMmapSize: 1,
  createGuestMemfd: 3, setUserMemoryRegion2: 8, setUserMemoryRegion: 6, fstat: 1, inodeOf: 1, fallocate: 4,
  mapShared: 3, mapAnonymous: 1, createVcpu: 2,
};

// Register ioctls: (fd, Uint8Array of exactly the struct's size).
const structs: Record<string, number> = {
  getRegs: 144, setRegs: 144, getSregs: 312, setSregs: 312, getFpu: 416, setFpu: 416,
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
      ...Object.keys(numeric), ...Object.keys(structs), 'open', 'memfdCreate', 'unmap', 'mincore', 'setErrorFactory',
      'uapiLayout', 'VcpuRunner',
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
    new Uint8Array(m.buffer).fill(1); // still safe to touch: a placeholder until collected
  });

  it('mapShared refuses ranges past the end of the file (a touch there would be SIGBUS)', () => {
    const memfd = native.memfdCreate('kvm-gmem-empty'); // 0 bytes
    try {
      expect(() => native.mapShared(memfd, 0, 4096)).toThrow(/past the end/);
    } finally {
      native.close(memfd);
    }
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
    expect(native.uapiLayout().kvm_regs!.size).toBe(144);
  });

  it('setErrorFactory requires a function', () => {
    expect(() => native.setErrorFactory(1 as never)).toThrow(TypeError);
  });
});
