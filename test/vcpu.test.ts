// The vCPU object: creation (KVM_CREATE_VCPU), its fd and kvm_run mapping, register state
// round trips (KVM_GET/SET_REGS, SREGS, FPU), the struct layouts against native/uapi/kvm.h, bad input,
// and use after close.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Cap, KvmError, KvmStateError, MAX_CPUID_ENTRIES, RunLayout, type Kvm, type Vm } from '../lib/index.js';
import { X86 } from '../lib/guest/index.js';
import { native } from '../lib/core/native.js';
import { Layout, REG_NAMES } from '../lib/kvm/x86-state.js';
import { fdLink, isCloexec, openKvm, thrown } from './kvm-host.js';
import type { TestContext } from 'vitest';

function setup(ctx: TestContext): { kvm: Kvm; vm: Vm } & Disposable {
  const kvm = openKvm(ctx);
  const vm = kvm.createVm();
  return { kvm, vm, [Symbol.dispose]: () => { vm.close(); kvm.close(); } };
}

describe('vm.createVcpu', () => {
  it('creates a close-on-exec vCPU fd with its kvm_run area mapped', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    expect(fdLink(vcpu.fd)).toBe('anon_inode:kvm-vcpu:0');
    expect(isCloexec(vcpu.fd)).toBe(true);
    expect(vcpu.id).toBe(0);
    expect(vcpu.vm).toBe(s.vm);
    expect(vcpu.kvmRun.length).toBe(s.kvm.vcpuMmapSize());
    // The mapping is the vCPU file's (a second fd, the runner's own, holds it too).
    const maps = readFileSync('/proc/self/maps', 'utf8');
    expect(maps).toContain('anon_inode:kvm-vcpu:0');
  });

  it('refuses a taken id (EEXIST) and an id past KVM_CAP_MAX_VCPU_ID (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using first = s.vm.createVcpu(3);
    expect(thrown(() => s.vm.createVcpu(3))).toMatchObject({ code: 'EEXIST', request: 'KVM_CREATE_VCPU' });
    const max = s.kvm.checkExtension(Cap.MAX_VCPU_ID);
    expect(thrown(() => s.vm.createVcpu(max))).toMatchObject({ code: 'EINVAL', request: 'KVM_CREATE_VCPU' });
    expect(first.id).toBe(3);
    expect(() => s.vm.createVcpu(-1)).toThrow(RangeError);
    expect(() => s.vm.createVcpu('1' as never)).toThrow(TypeError);
  });

  it('keeps the VM alive in the kernel after the Vm is closed, and is usable then', (ctx) => {
    const kvm = openKvm(ctx);
    const vm = kvm.createVm();
    using vcpu = vm.createVcpu(0);
    vm.close();
    kvm.close();
    const r = vcpu.getRegs();
    r.rax = 42n;
    vcpu.setRegs(r);
    expect(vcpu.getRegs().rax).toBe(42n);
  });

  it('throws ERR_KVM_CLOSED after close, and close is idempotent', (ctx) => {
    using s = setup(ctx);
    const vcpu = s.vm.createVcpu(0);
    const fd = vcpu.fd;
    vcpu.close();
    vcpu.close();
    vcpu[Symbol.dispose]();
    for (const f of [() => vcpu.getRegs(), () => vcpu.run(), () => vcpu.runAsync(), () => vcpu.getSregs(), () => vcpu.kvmRun]) {
      const e = thrown(f);
      expect(e).toBeInstanceOf(KvmStateError);
      expect(e.code).toBe('ERR_KVM_CLOSED');
    }
    expect(() => fdLink(fd)).toThrow(); // the fd is gone
    expect(s.vm.createVcpu(1).id).toBe(1);
  });
});

describe('vCPU register state', () => {
  it('writes and reads back every general-purpose register (KVM_SET_REGS / KVM_GET_REGS)', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    const r = vcpu.getRegs();
    REG_NAMES.forEach((n, i) => (r[n] = 0x1111_0000_0000_0000n + BigInt(i)));
    r.rflags = 0x2n | 0x40n;
    vcpu.setRegs(r);
    expect(vcpu.getRegs()).toEqual(r);
    // Numbers are accepted as well as bigints; results are always bigints.
    vcpu.setRegs({ ...r, rax: 7 });
    expect(vcpu.getRegs().rax).toBe(7n);
  });

  it('writes and reads back special registers, and KVM refuses an inconsistent long mode (EINVAL)', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    // Linux 7.2 refuses long mode on a vCPU whose CPUID lacks it: give it what KVM supports.
    vcpu.setCpuid2(s.vm.supportedCpuid());
    const sr = vcpu.getSregs();
    expect(sr.cr0 & X86.CR0_PE).toBe(0n); // a new vCPU starts in real mode
    sr.cr3 = 0x5000n;
    sr.cr4 = X86.CR4_PAE;
    sr.cr0 = X86.CR0_PE | X86.CR0_PG | X86.CR0_ET | X86.CR0_NE;
    sr.efer = X86.EFER_LME | X86.EFER_LMA;
    sr.cs = { ...sr.cs, l: 1, db: 0, type: 11, selector: 8, base: 0n, limit: 0xffffffff, g: 1, present: 1, s: 1 };
    sr.gdt = { base: 0x1234000n, limit: 0x7f };
    vcpu.setSregs(sr);
    const back = vcpu.getSregs();
    expect(back.cr3).toBe(0x5000n);
    expect(back.efer & (X86.EFER_LME | X86.EFER_LMA)).toBe(X86.EFER_LME | X86.EFER_LMA);
    expect(back.cs).toMatchObject({ l: 1, selector: 8, type: 11 });
    expect(back.gdt).toEqual({ base: 0x1234000n, limit: 0x7f });
    // Paging in long mode without PAE: the kernel's kvm_is_valid_sregs() refuses it.
    const bad = { ...back, cr4: 0n };
    expect(thrown(() => vcpu.setSregs(bad))).toMatchObject({ code: 'EINVAL', request: 'KVM_SET_SREGS' });
  });

  it('CPUID: KVM_GET_SUPPORTED_CPUID offers long mode; KVM_SET_CPUID2 / KVM_GET_CPUID2 round-trip it; bad tables are refused', (ctx) => {
    using s = setup(ctx);
    const kvm = s.kvm;
    const supported = kvm.getSupportedCpuid();
    expect(supported.length).toBeGreaterThan(10);
    expect(supported.length).toBeLessThanOrEqual(MAX_CPUID_ENTRIES);
    const ext = supported.find((e) => e.function === 0x80000001);
    expect(ext, 'leaf 0x80000001').toBeDefined();
    expect((ext!.edx >>> 29) & 1).toBe(1); // LM: 64-bit long mode
    expect(kvm.getSupportedCpuid()).toEqual(supported); // a copy each time, the same answer
    using vcpu = s.vm.createVcpu(0);
    expect(vcpu.getCpuid2()).toEqual([]); // none before KVM_SET_CPUID2
    vcpu.setCpuid2(supported);
    const back = vcpu.getCpuid2();
    expect(back.length).toBe(supported.length);
    // KVM keeps the leaves, indexes and flags as given (it may adjust some register values).
    expect(back.map((e) => [e.function, e.index, e.flags])).toEqual(supported.map((e) => [e.function, e.index, e.flags]));
    expect(back.find((e) => e.function === 0x80000001)!.edx).toBe(ext!.edx);
    expect(thrown(() => vcpu.setCpuid2(new Array(MAX_CPUID_ENTRIES + 1).fill(supported[0])))).toBeInstanceOf(RangeError);
    expect(thrown(() => vcpu.setCpuid2([{ ...supported[0]!, eax: 2 ** 32 }]))).toBeInstanceOf(RangeError);
    expect(thrown(() => vcpu.setCpuid2([null as never]))).toBeInstanceOf(TypeError);
    expect(vcpu.getCpuid2().length).toBe(supported.length); // nothing changed by the refusals
  });

  it('writes and reads back x87/SSE state (KVM_SET_FPU / KVM_GET_FPU); MXCSR is not carried by these ioctls', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    const f = vcpu.getFpu();
    expect(f.fpr.length).toBe(128);
    expect(f.xmm.length).toBe(256);
    f.xmm[0] = 0xab;
    f.xmm[255] = 0xcd;
    f.mxcsr = 0x1f80 | 0x6000; // round toward zero
    f.fcw = 0x37f;
    vcpu.setFpu(f);
    const back = vcpu.getFpu();
    expect(back.xmm[0]).toBe(0xab);
    expect(back.xmm[255]).toBe(0xcd);
    expect(back.fcw).toBe(0x37f);
    // kvm_arch_vcpu_ioctl_get_fpu/set_fpu copy neither way: MXCSR travels only with KVM_GET/SET_XSAVE.
    expect(back.mxcsr).toBe(0);
  });

  it('rejects malformed state before any system call', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    const r = vcpu.getRegs();
    expect(() => vcpu.setRegs({ ...r, rip: -1 })).toThrow(RangeError);
    expect(() => vcpu.setRegs({ ...r, rip: 1n << 64n })).toThrow(RangeError);
    expect(() => vcpu.setRegs({ ...r, rip: '1' as never })).toThrow(TypeError);
    const { rax: _drop, ...missing } = r;
    expect(() => vcpu.setRegs(missing as never)).toThrow(/regs\.rax/);
    const sr = vcpu.getSregs();
    expect(() => vcpu.setSregs({ ...sr, cs: { ...sr.cs, selector: 0x10000 } })).toThrow(RangeError);
    expect(() => vcpu.setSregs({ ...sr, interruptBitmap: [0n] })).toThrow(TypeError);
    const f = vcpu.getFpu();
    expect(() => vcpu.setFpu({ ...f, xmm: new Uint8Array(10) })).toThrow(TypeError);
    expect(() => vcpu.setFpu({ ...f, mxcsr: 2 ** 32 })).toThrow(RangeError);
  });
});

describe('uapi layouts', () => {
  it('the TypeScript offsets equal the addon\'s (native/uapi/kvm.h, pinned by static_asserts)', () => {
    const n = native.uapiLayout();
    expect(n.kvm_regs!.size).toBe(Layout.regs.size);
    expect(n.kvm_regs!.rip).toBe(REG_NAMES.indexOf('rip') * 8);
    expect(n.kvm_regs!.rflags).toBe(REG_NAMES.indexOf('rflags') * 8);
    expect(n.kvm_segment).toMatchObject({ size: Layout.segment.size, base: Layout.segment.base, limit: Layout.segment.limit,
      selector: Layout.segment.selector, type: Layout.segment.type, present: Layout.segment.present, unusable: Layout.segment.unusable });
    expect(n.kvm_sregs).toMatchObject({ size: Layout.sregs.size, gdt: Layout.sregs.gdt, idt: Layout.sregs.idt, cr0: Layout.sregs.cr0,
      cr8: Layout.sregs.cr8, efer: Layout.sregs.efer, apic_base: Layout.sregs.apicBase, interrupt_bitmap: Layout.sregs.interruptBitmap,
      tr: 6 * Layout.segment.size, ldt: 7 * Layout.segment.size });
    expect(n.kvm_fpu).toMatchObject({ size: Layout.fpu.size, fcw: Layout.fpu.fcw, fsw: Layout.fpu.fsw, ftwx: Layout.fpu.ftwx,
      last_opcode: Layout.fpu.lastOpcode, last_ip: Layout.fpu.lastIp, last_dp: Layout.fpu.lastDp, xmm: Layout.fpu.xmm, mxcsr: Layout.fpu.mxcsr });
    for (const [k, v] of Object.entries(RunLayout)) expect(n.kvm_run![k], `kvm_run.${k}`).toBe(v);
  });
});

describe('the native vCPU runner', () => {
  it('refuses an fd that is not a vCPU, and mapping sizes that could reach past the vCPU file', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    expect(() => new native.VcpuRunner(s.vm.fd, 4096)).toThrow(/must be a KVM vCPU fd/);
    expect(() => new native.VcpuRunner(s.kvm.fd, 4096)).toThrow(TypeError);
    expect(() => new native.VcpuRunner(vcpu.fd, 4 * 4096)).toThrow(RangeError);
    expect(() => new native.VcpuRunner(vcpu.fd, 100)).toThrow(RangeError);
    expect(() => new native.VcpuRunner(0x7ffffff0, 4096)).toThrow(KvmError); // readlink: EBADF... as ENOENT
  });

  it('refuses a second runner on a vCPU that has one (two would block each other in KVM_RUN), and a Vcpu made by hand', (ctx) => {
    using s = setup(ctx);
    using vcpu = s.vm.createVcpu(0);
    expect(() => new native.VcpuRunner(vcpu.fd, vcpu.kvmRun.length)).toThrow(/already has a runner/);
    expect(() => new native.VcpuRunner(vcpu.fd, vcpu.kvmRun.length)).toThrow(
      expect.objectContaining({ name: 'KvmStateError', code: 'ERR_KVM_VCPU_HAS_RUNNER' }),
    );
    // The constructor is private (TypeScript); from plain JavaScript, a second Vcpu made by hand
    // over the same fd is still refused, by the addon's one-runner rule.
    const VcpuClass = vcpu.constructor as new (...a: unknown[]) => unknown;
    expect(() => new VcpuClass(vcpu.fd, 0, s.vm, vcpu.kvmRun.length)).toThrow(
      expect.objectContaining({ name: 'KvmStateError', code: 'ERR_KVM_VCPU_HAS_RUNNER' }),
    );
    // Another vCPU of the same VM is another file: it gets its own runner.
    using other = s.vm.createVcpu(1);
    expect(other.kvmRun.length).toBe(vcpu.kvmRun.length);
  });
});
