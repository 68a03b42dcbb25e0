// Shared by the private-memory tests: SW_PROTECTED VMs, private-capable memslots, a pre-fault
// setup, guest_memfd page counts and a Vm object that reaches no KVM.
import { spawnSync } from 'node:child_process';
import { expect, type TestContext } from 'vitest';
import { Cap, Mapping, MemoryAttribute, Vm, VmType, type GuestMemfd, type Kvm } from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { fixture } from './c-fixtures.js';
import { needCap, openKvm, skipOrFail } from './kvm-host.js';

const MiB = 1 << 20;

/** A Vm object on a memfd: the library's checks run, and any ioctl that gets through fails (ENOTTY). */
export function fakeVm(): Vm {
  return Vm.fromCreated(native.memfdCreate('kvm-gmem-not-a-vm'), VmType.DEFAULT, 4096, () => []);
}

/** A SW_PROTECTED VM whose KVM_CAP_MEMORY_ATTRIBUTES has PRIVATE, or a skip naming what is missing. */
export function swProtectedVm(ctx: TestContext, kvm: Kvm): Vm {
  const types = kvm.checkExtension(Cap.VM_TYPES);
  skipOrFail(ctx, types & (1 << VmType.SW_PROTECTED) ? undefined : `KVM_CAP_VM_TYPES 0x${types.toString(16)} lacks KVM_X86_SW_PROTECTED_VM`);
  const vm = kvm.createVm(VmType.SW_PROTECTED);
  const attrs = BigInt(vm.checkExtension(Cap.MEMORY_ATTRIBUTES));
  if (!(attrs & MemoryAttribute.PRIVATE)) {
    vm.close();
    skipOrFail(ctx, `KVM_CAP_MEMORY_ATTRIBUTES on a SW_PROTECTED VM (0x${attrs.toString(16)}) lacks PRIVATE`);
  }
  return vm;
}

/** A private-capable memslot: anonymous host memory for the shared side, a guest_memfd (flags 0) for the private side. */
export function privateSlot(vm: Vm, slot: number, gpa: number, size: number): { anon: Mapping; gmem: GuestMemfd } & Disposable {
  const anon = Mapping.anonymous(size);
  const gmem = vm.createGuestMemfd({ size });
  vm.setUserMemoryRegion2({ slot, guestPhysAddr: gpa, memorySize: size, userspaceAddr: anon, guestMemfd: gmem });
  return { anon, gmem, [Symbol.dispose]: () => { anon.close(); gmem.close(); } };
}

/** A default VM with a 2 MiB anonymous memslot at 0 and vCPU 0, or a skip without PRE_FAULT_MEMORY. */
export function preFaultVm(ctx: TestContext) {
  const kvm = openKvm(ctx);
  needCap(ctx, kvm, Cap.PRE_FAULT_MEMORY, 'PRE_FAULT_MEMORY');
  const vm = kvm.createVm();
  const mem = Mapping.anonymous(2 * MiB);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: mem });
  const vcpu = vm.createVcpu(0);
  vcpu.setCpuid2(kvm.getSupportedCpuid());
  return { kvm, vm, mem, vcpu, [Symbol.dispose]: () => { vcpu.close(); vm.close(); mem.close(); kvm.close(); } };
}

/**
 * The pages a guest_memfd holds, from cachestat(2) (test/fixtures/cachestat.c): fstat's st_blocks
 * stays 0 for guest_memfd, so it cannot show a punch.
 */
export function filePages(g: GuestMemfd): number {
  const r = spawnSync(fixture('cachestat'), [], { stdio: ['ignore', 'pipe', 'pipe', g.fd], encoding: 'utf8' });
  expect(r.stderr, 'cachestat(2) on the guest_memfd').toBe('');
  expect(r.status).toBe(0);
  return (JSON.parse(r.stdout) as { cache: number }).cache;
}
