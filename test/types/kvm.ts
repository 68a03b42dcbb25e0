// The main entry point as a user's code sees it through the published typings.
import { expectTypeOf } from 'vitest';
import {
  GuestMemfd, GuestMemfdFlag, GuestMemoryFaultError, Kvm, KvmError, KvmStateError, Mapping, Vcpu, Vm,
  type KvmArgCode, type KvmErrorCode, type KvmStateCode, type VcpuExit,
} from 'kvm-gmem';

expectTypeOf<typeof Kvm.open>().toBeFunction();
expectTypeOf<typeof Kvm.open>().returns.toEqualTypeOf<Kvm>();
expectTypeOf<typeof Kvm.open>().toBeCallableWith();
expectTypeOf<typeof Kvm.open>().toBeCallableWith('/dev/kvm');
expectTypeOf<Kvm['createVm']>().returns.toEqualTypeOf<Vm>();
expectTypeOf<Vm['createGuestMemfd']>().returns.toEqualTypeOf<GuestMemfd>();
expectTypeOf<Vm['createGuestMemfd']>().toBeCallableWith({ size: 1 << 20, flags: GuestMemfdFlag.MMAP });
expectTypeOf<Vm['createVcpu']>().returns.toEqualTypeOf<Vcpu>();
expectTypeOf<GuestMemfd['map']>().returns.toEqualTypeOf<Mapping>();
expectTypeOf<Vcpu['run']>().returns.toEqualTypeOf<VcpuExit>();
expectTypeOf<Vcpu['runAsync']>().returns.toEqualTypeOf<Promise<VcpuExit>>();
expectTypeOf<typeof Mapping.anonymous>().returns.toEqualTypeOf<Mapping>();

// Every fd object is disposable, for `using`.
expectTypeOf<Kvm>().toExtend<Disposable>();
expectTypeOf<Vm>().toExtend<Disposable>();
expectTypeOf<GuestMemfd>().toExtend<Disposable>();
expectTypeOf<Vcpu>().toExtend<Disposable>();
expectTypeOf<Mapping>().toExtend<Disposable>();

// Errors carry their facts as typed fields.
expectTypeOf<KvmError>().toExtend<Error>();
expectTypeOf<KvmError['code']>().toExtend<string>();
expectTypeOf<KvmError['errno']>().toEqualTypeOf<number>();
expectTypeOf<KvmError['syscall']>().toEqualTypeOf<string>();
expectTypeOf<KvmStateError>().toExtend<Error>();
expectTypeOf<KvmStateError['code']>().toEqualTypeOf<KvmStateCode>();
expectTypeOf<GuestMemoryFaultError['code']>().toEqualTypeOf<'ERR_KVM_SIGBUS'>();

// The code unions are real unions in the typings (a stripped @internal name would make them any).
expectTypeOf<KvmStateCode>().not.toBeAny();
expectTypeOf<KvmArgCode>().not.toBeAny();
expectTypeOf<KvmErrorCode>().not.toBeAny();
expectTypeOf<'ERR_KVM_CLOSED'>().toExtend<KvmStateCode>();
expectTypeOf<'ERR_KVM_NOT_GUEST_MEMFD'>().toExtend<KvmArgCode>();
expectTypeOf<'EINVAL' | 'ERR_KVM_SIGBUS' | KvmStateCode | KvmArgCode>().toExtend<KvmErrorCode>();
expectTypeOf<'not-a-code'>().not.toExtend<KvmErrorCode>();

// The fd objects come only from their factories (the arguments match the runtime constructors).
declare const vm: Vm;
declare const unknowable: never; // stands for an argument of a type the package does not export
// @ts-expect-error Kvm's constructor is private: Kvm.open()
new Kvm();
// @ts-expect-error a Vm comes from kvm.createVm()
new Vm(3, 0, 4096, () => []);
// @ts-expect-error a GuestMemfd comes from vm.createGuestMemfd() or GuestMemfd.adopt()
new GuestMemfd(3, 4096n, 0n);
// @ts-expect-error a Vcpu comes from vm.createVcpu()
new Vcpu(Symbol(), 3, 0, vm, 4096);
// @ts-expect-error a Mapping comes from gmem.map() or Mapping.anonymous()
new Mapping(unknowable, unknowable);
