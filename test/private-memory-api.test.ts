// The private-memory API: memory attributes (and the library's record of them), KVM_ENABLE_CAP,
// hypercall exits and MAP_GPA_RANGE, memory faults with EHWPOISON, the conversion helper and the
// ucall loop's privateMemory option. Decoding, layout and argument checks run everywhere; the
// kernel calls need KVM, and a SW_PROTECTED VM for anything private (a skip naming the missing
// capability elsewhere, a failure under KVM_GMEM_REQUIRE_KVM=1).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bootGuest, runUntilUcallSync } from '../lib/guest/index.js';
import {
  Cap, ExitReason, Hypercall, HypercallError, HypercallExitFlag, KvmError, MapGpaRangeAttr, Mapping, MemoryAttribute,
  RunLayout, mapGpaRange, type HypercallExit,
} from '../lib/index.js';
import { decodeExit } from '../lib/kvm/exits.js';
import { native } from '../lib/core/native.js';
import { fakeVm, filePages, preFaultVm, privateSlot, swProtectedVm } from './private-memory-host.js';
import { expectKvmError, needCap, openKvm, skipOrFail, thrown } from './kvm-host.js';

const MiB = 1 << 20;

/** A fake kvm_run page with a hypercall exit in it. */
function hypercallPage(nr: bigint, args: bigint[], flags: bigint): { v: DataView; buf: ArrayBuffer } {
  const buf = new ArrayBuffer(4096);
  const v = new DataView(buf);
  v.setUint32(RunLayout.exit_reason, ExitReason.HYPERCALL, true);
  v.setBigUint64(RunLayout['hypercall.nr'], nr, true);
  args.forEach((a, i) => v.setBigUint64(RunLayout['hypercall.args'] + 8 * i, a, true));
  v.setBigUint64(RunLayout['hypercall.flags'], flags, true);
  return { v, buf };
}

describe('hypercall and memory-fault exits (decoding)', () => {
  it('kvm_run.hypercall offsets are the addon\'s, from its static_asserted struct', () => {
    const k = native.uapiLayout().kvm_run!;
    for (const f of ['hypercall.nr', 'hypercall.args', 'hypercall.ret', 'hypercall.flags'] as const) expect(k[f], f).toBe(RunLayout[f]);
    expect([RunLayout['hypercall.nr'], RunLayout['hypercall.args'], RunLayout['hypercall.ret'], RunLayout['hypercall.flags']]).toEqual([32, 40, 88, 96]);
  });

  it('a MAP_GPA_RANGE hypercall decodes, and ret is a view of kvm_run.hypercall.ret', () => {
    const { v, buf } = hypercallPage(12n, [0x200000n, 3n, MapGpaRangeAttr.ENCRYPTED | MapGpaRangeAttr.PAGE_SZ_2M, 0n, 0n, 7n], 1n);
    const exit = decodeExit(v, buf, 0)!;
    expect(exit.reason).toBe('hypercall');
    const h = exit as HypercallExit;
    expect(h).toMatchObject({ nr: 12n, flags: HypercallExitFlag.LONG_MODE, longMode: true });
    expect(h.args).toEqual([0x200000n, 3n, 0x11n, 0n, 0n, 7n]);
    expect(h.ret.length).toBe(1);
    h.ret[0] = BigInt(HypercallError.EINVAL);
    expect(v.getBigUint64(RunLayout['hypercall.ret'], true)).toBe(22n);
    expect(mapGpaRange(h)).toEqual({ gpa: 0x200000n, size: 3n * 4096n, attributes: 0x11n, private: true, pageSize: 2 * MiB });
    // Shared, 4 KiB pages, 1 GiB pages.
    const shared = hypercallPage(BigInt(Hypercall.MAP_GPA_RANGE), [0x1000n, 1n, MapGpaRangeAttr.DECRYPTED], 0n);
    const s = decodeExit(shared.v, shared.buf, 0) as HypercallExit;
    expect(s.longMode).toBe(false);
    expect(mapGpaRange(s)).toEqual({ gpa: 0x1000n, size: 4096n, attributes: 0n, private: false, pageSize: 4096 });
    const huge = hypercallPage(12n, [0n, 1n, MapGpaRangeAttr.PAGE_SZ_1G], 1n);
    expect(mapGpaRange(decodeExit(huge.v, huge.buf, 0)!)!.pageSize).toBe(1 << 30);
  });

  it('mapGpaRange is undefined for another hypercall number or another exit', () => {
    const other = hypercallPage(5n, [1n, 2n, 3n], 1n);
    expect(mapGpaRange(decodeExit(other.v, other.buf, 0)!)).toBeUndefined();
    expect(mapGpaRange({ reason: 'hlt', exitReason: ExitReason.HLT })).toBeUndefined();
  });

  it('a memory fault decodes with EFAULT and EHWPOISON (and says which), never with another errno', () => {
    const buf = new ArrayBuffer(4096);
    const v = new DataView(buf);
    v.setUint32(RunLayout.exit_reason, ExitReason.MEMORY_FAULT, true);
    v.setBigUint64(RunLayout['memory_fault.flags'], 8n, true);
    v.setBigUint64(RunLayout['memory_fault.gpa'], 0x5000n, true);
    v.setBigUint64(RunLayout['memory_fault.size'], 4096n, true);
    expect(decodeExit(v, buf, 14)).toMatchObject({ reason: 'memory_fault', errno: 'EFAULT', private: true, gpa: 0x5000n, size: 4096n });
    expect(decodeExit(v, buf, 133)).toMatchObject({ reason: 'memory_fault', errno: 'EHWPOISON', private: true });
    // exit_reason is stale for any other errno (api.rst): not an exit.
    expect(decodeExit(v, buf, 22)).toBeUndefined();
  });
});

describe('host CPUID', () => {
  it('hostCpuid(0, 0) gives the vendor /proc/cpuinfo names', () => {
    const r = native.hostCpuid(0, 0);
    expect(r).toBeInstanceOf(Uint32Array);
    expect(r.length).toBe(4);
    const vendor = Buffer.from(new Uint32Array([r[1]!, r[3]!, r[2]!]).buffer).toString('latin1');
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('vendor_id'));
    if (line !== undefined) expect(vendor).toBe(line.split(':')[1]!.trim());
  });
});

describe('argument checks (before any ioctl)', () => {
  it('enableCap', () => {
    using vm = fakeVm();
    expect(thrown(() => vm.enableCap(-1))).toBeInstanceOf(RangeError);
    expect(thrown(() => vm.enableCap(Cap.EXIT_HYPERCALL, [1, 2, 3, 4, 5]))).toBeInstanceOf(RangeError);
    expect(thrown(() => vm.enableCap(Cap.EXIT_HYPERCALL, 'x' as unknown as number[]))).toBeInstanceOf(TypeError);
    expect(thrown(() => vm.enableCap(Cap.EXIT_HYPERCALL, [-1]))).toBeInstanceOf(RangeError);
    expect(thrown(() => vm.enableCap(Cap.EXIT_HYPERCALL, [1n << 64n]))).toBeInstanceOf(RangeError);
    expect(thrown(() => vm.enableCap(Cap.EXIT_HYPERCALL, [], 1.5))).toBeInstanceOf(RangeError);
    const e = expectKvmError(() => vm.enableCap(Cap.EXIT_HYPERCALL, [0x1000n]), 'ENOTTY', { request: 'KVM_ENABLE_CAP' });
    expect(e.detail).toContain('cap=201');
  });

  it('setMemoryAttributes and memoryAttributes', () => {
    using vm = fakeVm();
    expect(thrown(() => vm.setMemoryAttributes(-4096, 4096, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => vm.setMemoryAttributes(0, 4096, 'x' as unknown as number))).toBeInstanceOf(TypeError);
    expect(thrown(() => vm.setMemoryAttributes(0, 2 ** 64, 0))).toBeInstanceOf(RangeError);
    const e = expectKvmError(() => vm.setMemoryAttributes(0, 4096, MemoryAttribute.PRIVATE), 'ENOTTY', { request: 'KVM_SET_MEMORY_ATTRIBUTES' });
    expect(e.hint).toContain('KVM_SET_MEMORY_ATTRIBUTES');
    // Nothing was recorded for a failed call.
    expect(vm.memoryAttributes()).toEqual([]);
    expect(vm.memoryAttributes(0, 8192)).toEqual([{ start: 0n, end: 8192n, attributes: 0n }]);
    expect(thrown(() => vm.memoryAttributes(0))).toBeInstanceOf(TypeError);
  });

  it('guestMemfdRanges and convertMemory refuse a range outside guest_memfd memslots before anything changes', () => {
    using vm = fakeVm();
    const e = thrown(() => vm.guestMemfdRanges(0, 4096));
    expect(e).toBeInstanceOf(RangeError);
    expect(e.code).toBe('ERR_KVM_NOT_GUEST_MEMFD');
    expect(thrown(() => vm.convertMemory(0, 4096, 'private'))).toBeInstanceOf(RangeError);
    expect(thrown(() => vm.convertMemory(0, 4096, 'secret' as 'private'))).toBeInstanceOf(TypeError);
    expect(thrown(() => vm.convertMemory(0, 4096, 'shared', { discard: 1 as unknown as boolean }))).toBeInstanceOf(TypeError);
    expect(vm.guestMemfdRanges(0, 0)).toEqual([]);
  });
});

// ---- Real KVM ----

describe('KVM_SET_MEMORY_ATTRIBUTES', () => {
  it('makes a range private on a SW_PROTECTED VM, with or without a memslot, and records it', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = swProtectedVm(ctx, kvm);
    using s = privateSlot(vm, 0, 0, 2 * MiB);
    void s;
    vm.setMemoryAttributes(0x1000, 0x3000, MemoryAttribute.PRIVATE);
    // No memslot at all: the kernel does not look (private_mem_kvm_exits_test relies on it).
    vm.setMemoryAttributes(0x4000_0000n, 4096, MemoryAttribute.PRIVATE);
    expect(vm.memoryAttributes()).toEqual([
      { start: 0x1000n, end: 0x4000n, attributes: 8n }, { start: 0x4000_0000n, end: 0x4000_1000n, attributes: 8n },
    ]);
    vm.setMemoryAttributes(0x2000, 0x1000, 0);
    expect(vm.memoryAttributes(0, 0x5000)).toEqual([
      { start: 0n, end: 0x1000n, attributes: 0n }, { start: 0x1000n, end: 0x2000n, attributes: 8n },
      { start: 0x2000n, end: 0x3000n, attributes: 0n }, { start: 0x3000n, end: 0x4000n, attributes: 8n },
      { start: 0x4000n, end: 0x5000n, attributes: 0n },
    ]);
    // Attributes belong to guest frames: deleting the memslot keeps them.
    vm.deleteMemoryRegion(0);
    expect(vm.memoryAttributes(0x1000, 0x1000)).toEqual([{ start: 0x1000n, end: 0x2000n, attributes: 8n }]);
    // Unaligned: EINVAL, and the hint says why.
    const e = expectKvmError(() => vm.setMemoryAttributes(0x800, 4096, MemoryAttribute.PRIVATE), 'EINVAL', { request: 'KVM_SET_MEMORY_ATTRIBUTES' });
    expect(e.hint).toContain('gpa 0x800 is not a multiple of the page size');
  });

  it('refuses PRIVATE on a DEFAULT VM with EINVAL, the hint naming the VM\'s KVM_CAP_MEMORY_ATTRIBUTES', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    // The call exists on this kernel only if 0 passes on a default VM.
    try {
      vm.setMemoryAttributes(0, 4096, 0);
    } catch (e) {
      skipOrFail(ctx, e instanceof KvmError && e.code === 'ENOTTY' ? 'this kernel has no KVM_SET_MEMORY_ATTRIBUTES' : undefined);
      throw e;
    }
    const e = expectKvmError(() => vm.setMemoryAttributes(0, 4096, MemoryAttribute.PRIVATE), 'EINVAL', { request: 'KVM_SET_MEMORY_ATTRIBUTES' });
    expect(e.hint).toContain('KVM_CAP_MEMORY_ATTRIBUTES on the VM = 0x0');
    expect(vm.memoryAttributes()).toEqual([]);
  });
});

describe('KVM_ENABLE_CAP', () => {
  it('enables MAP_GPA_RANGE hypercall exits, and refuses a bit the capability lacks (EINVAL, hint with the offer)', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    const offered = needCap(ctx, vm, Cap.EXIT_HYPERCALL, 'EXIT_HYPERCALL');
    expect(offered & 0x1000).toBe(0x1000);
    vm.enableCap(Cap.EXIT_HYPERCALL, [1n << BigInt(Hypercall.MAP_GPA_RANGE)]);
    const e = expectKvmError(() => vm.enableCap(Cap.EXIT_HYPERCALL, [0x2000]), 'EINVAL', { request: 'KVM_ENABLE_CAP' });
    expect(e.hint).toContain(`Cap.EXIT_HYPERCALL offers 0x${offered.toString(16)}`);
    expect(e.hint).toContain('asked 0x2000');
  });
});

describe('KVM_PRE_FAULT_MEMORY', () => {
  it('maps a whole 2 MiB slot, reporting progress; ENOENT outside with the remaining range', (ctx) => {
    using t = preFaultVm(ctx);
    const progress: [bigint, bigint][] = [];
    expect(t.vcpu.preFaultMemory(0, 2 * MiB, { onProgress: (d, l) => progress.push([d, l]) })).toEqual({ mapped: BigInt(2 * MiB) });
    expect(progress.at(-1)).toEqual([BigInt(2 * MiB), 0n]);
    expect(t.vcpu.preFaultMemoryOnce(0, 4096)).toEqual({ gpa: 4096n, size: 0n });
    const once = expectKvmError(() => t.vcpu.preFaultMemoryOnce(0x4000_0000, 4096), 'ENOENT', { request: 'KVM_PRE_FAULT_MEMORY' });
    expect((once as KvmError & { remaining: unknown }).remaining).toEqual({ gpa: 0x4000_0000n, size: 4096n });
    expect(once.hint).toContain('not in any memslot');
    const loop = expectKvmError(() => t.vcpu.preFaultMemory(0x4000_0000, 8192), 'ENOENT');
    expect(loop).toMatchObject({ remaining: { gpa: 0x4000_0000n, size: 8192n }, mapped: 0n });
    // Half in the slot: the first half maps, then ENOENT with the rest.
    const half = expectKvmError(() => t.vcpu.preFaultMemory(MiB, 2 * MiB), 'ENOENT');
    expect(half).toMatchObject({ remaining: { gpa: BigInt(2 * MiB), size: BigInt(MiB) }, mapped: BigInt(MiB) });
    expectKvmError(() => t.vcpu.preFaultMemoryOnce(0x800, 4096), 'EINVAL');
  });

  it('async: on the vCPU thread, busy meanwhile, one call or the loop', async (ctx) => {
    using t = preFaultVm(ctx);
    const p = t.vcpu.preFaultMemoryAsync(0, 2 * MiB);
    expect(t.vcpu.running).toBe(true);
    expect(thrown(() => t.vcpu.getRegs()).code).toBe('ERR_KVM_VCPU_RUNNING');
    expect(thrown(() => t.vcpu.preFaultMemoryOnce(0, 4096)).code).toBe('ERR_KVM_VCPU_RUNNING');
    await expect(p).resolves.toEqual({ mapped: BigInt(2 * MiB) });
    expect(t.vcpu.running).toBe(false);
    await expect(t.vcpu.preFaultMemoryOnceAsync(0, 4096)).resolves.toEqual({ gpa: 4096n, size: 0n });
    const e = await t.vcpu.preFaultMemoryOnceAsync(0x4000_0000, 4096).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(KvmError);
    expect(e).toMatchObject({ code: 'ENOENT', request: 'KVM_PRE_FAULT_MEMORY', remaining: { gpa: 0x4000_0000n, size: 4096n } });
    // An aborted signal rejects with its reason, before any call.
    const ac = new AbortController();
    ac.abort();
    await expect(t.vcpu.preFaultMemoryAsync(0, 4096, { signal: ac.signal })).rejects.toBe(ac.signal.reason);
    expect(thrown(() => t.vcpu.preFaultMemoryAsync(0, 4096, { maxRetries: -1 }))).toBeInstanceOf(RangeError);
  });

  it('async while the main thread deletes the memslot: a defined result, and the vCPU is idle after', async (ctx) => {
    using t = preFaultVm(ctx);
    const p = t.vcpu.preFaultMemoryAsync(0, 2 * MiB);
    t.vm.deleteMemoryRegion(0);
    const r = await p.then((v) => v, (e: unknown) => e);
    if (r instanceof KvmError) {
      // The call raced the deletion: the kernel names the range it had left (ENOENT once the slot is gone).
      expect(['ENOENT', 'EAGAIN', 'EFAULT']).toContain(r.code);
      expect((r as KvmError & { remaining: { size: bigint } }).remaining.size).toBeGreaterThan(0n);
    } else {
      expect(r).toEqual({ mapped: BigInt(2 * MiB) });
    }
    expect(t.vcpu.running).toBe(false);
    // The slot is gone now: ENOENT for certain.
    await expect(t.vcpu.preFaultMemoryAsync(0, 4096)).rejects.toMatchObject({ code: 'ENOENT', mapped: 0n });
  });
});

describe('vm.convertMemory', () => {
  it('to private drops the shared pages (anonymous: MADV_DONTNEED); to shared punches the guest_memfd (cachestat)', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = swProtectedVm(ctx, kvm);
    using s = privateSlot(vm, 0, 0, 2 * MiB);
    expect(vm.guestMemfdRanges(MiB, 2 * MiB - MiB)).toEqual([{ slot: 0, guestMemfd: s.gmem, offset: BigInt(MiB), length: BigInt(MiB), gpa: BigInt(MiB) }]);
    s.anon.fill(0xaa);
    s.gmem.allocate(0, 2 * MiB);
    expect(s.anon.residentPages()).toBe(512);
    expect(filePages(s.gmem)).toBe(512);
    vm.convertMemory(0, MiB, 'private');
    expect(vm.memoryAttributes()).toEqual([{ start: 0n, end: BigInt(MiB), attributes: MemoryAttribute.PRIVATE }]);
    expect(s.anon.residentPages()).toBe(256);
    expect(s.anon.read(0, 1)[0]).toBe(0); // dropped: reads back as fresh zero pages
    expect(filePages(s.gmem)).toBe(512); // the private side is kept
    vm.convertMemory(0, MiB, 'shared');
    expect(vm.memoryAttributes()).toEqual([]);
    expect(filePages(s.gmem)).toBe(256);
    // discard: false changes only the attributes.
    // (The read above mapped the zero page at 0, which mincore counts: compare with before.)
    const resident = s.anon.residentPages();
    vm.convertMemory(MiB, MiB, 'private', { discard: false });
    expect(s.anon.residentPages()).toBe(resident); // the second MiB's pages stay
    expect(vm.memoryAttributes(MiB, MiB)).toEqual([{ start: BigInt(MiB), end: BigInt(2 * MiB), attributes: 8n }]);
    // Past the slot: refused before anything changes.
    expect(thrown(() => vm.convertMemory(MiB, 2 * MiB, 'shared')).code).toBe('ERR_KVM_NOT_GUEST_MEMFD');
    expect(vm.memoryAttributes(MiB, MiB)).toEqual([{ start: BigInt(MiB), end: BigInt(2 * MiB), attributes: 8n }]);
  });
});

// A guest of a few bytes (the images' loader takes raw bytes): two MAP_GPA_RANGE hypercalls, the
// first for 0x200000 (in the slot), the second for 1 GiB (in none), answers in r8 and r9, then HLT.
function mapGpaRangeGuest(): Uint8Array {
  const id = native.hostCpuid(0, 0);
  const amd = id[1] === 0x68747541 || id[1] === 0x6f677948; // "Auth"enticAMD, "Hygo"nGenuine
  const call = amd ? [0x0f, 0x01, 0xd9] : [0x0f, 0x01, 0xc1]; // vmmcall : vmcall
  const hypercall = (gpa: number) => [
    0xb8, 12, 0, 0, 0, // mov eax, KVM_HC_MAP_GPA_RANGE
    0xbb, ...new Uint8Array(new Uint32Array([gpa]).buffer), // mov ebx, gpa
    0xb9, 1, 0, 0, 0, // mov ecx, 1 (page)
    0xba, 0x10, 0, 0, 0, // mov edx, KVM_MAP_GPA_RANGE_ENCRYPTED
    ...call,
  ];
  return new Uint8Array([...hypercall(0x200000), 0x49, 0x89, 0xc0, ...hypercall(0x4000_0000), 0x49, 0x89, 0xc1, 0xf4]);
}

class Halted extends Error {}

describe('the ucall loop and hypercall exits', () => {
  it('privateMemory converts a MAP_GPA_RANGE range and answers 0, or KVM_EINVAL outside guest_memfd; onHypercall sees it first', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = swProtectedVm(ctx, kvm);
    needCap(ctx, vm, Cap.EXIT_HYPERCALL, 'EXIT_HYPERCALL');
    using s = privateSlot(vm, 0, 0, 4 * MiB);
    vm.enableCap(Cap.EXIT_HYPERCALL, [1n << BigInt(Hypercall.MAP_GPA_RANGE)]);
    using vcpu = vm.createVcpu(0);
    bootGuest(vcpu, { image: mapGpaRangeGuest(), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000 });
    s.anon.fill(0x55, 0x200000, 4096);
    const seen: unknown[] = [];
    const onExit = (e: { reason: string }) => {
      if (e.reason === 'hlt') throw new Halted();
      return false;
    };
    expect(() => runUntilUcallSync(vcpu, {
      privateMemory: true, onExit,
      onHypercall: (h) => {
        seen.push(mapGpaRange(h));
        expect(h.longMode).toBe(true);
        return false; // on to privateMemory
      },
    })).toThrow(Halted);
    expect(seen).toEqual([
      { gpa: 0x200000n, size: 4096n, attributes: 0x10n, private: true, pageSize: 4096 },
      { gpa: 0x4000_0000n, size: 4096n, attributes: 0x10n, private: true, pageSize: 4096 },
    ]);
    const regs = vcpu.getRegs();
    expect(regs.r8).toBe(0n);
    expect(regs.r9).toBe(BigInt(HypercallError.EINVAL));
    expect(vm.memoryAttributes()).toEqual([{ start: 0x200000n, end: 0x201000n, attributes: 8n }]);
    expect(s.anon.read(0x200000, 1)[0]).toBe(0); // the shared copy was dropped
  });

  it('onHypercall answers through exit.ret', (ctx) => {
    using kvm = openKvm(ctx);
    using vm = kvm.createVm();
    needCap(ctx, vm, Cap.EXIT_HYPERCALL, 'EXIT_HYPERCALL');
    using mem = Mapping.anonymous(4 * MiB);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 4 * MiB, userspaceAddr: mem });
    vm.enableCap(Cap.EXIT_HYPERCALL, [1n << BigInt(Hypercall.MAP_GPA_RANGE)]);
    using vcpu = vm.createVcpu(0);
    bootGuest(vcpu, { image: mapGpaRangeGuest(), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000 });
    let n = 0;
    expect(() => runUntilUcallSync(vcpu, {
      onExit: (e) => { if (e.reason === 'hlt') throw new Halted(); return false; },
      onHypercall: (h) => { h.ret[0] = BigInt(0x1234 + n++); return true; },
    })).toThrow(Halted);
    expect(n).toBe(2);
    expect([vcpu.getRegs().r8, vcpu.getRegs().r9]).toEqual([0x1234n, 0x1235n]);
  });
});
