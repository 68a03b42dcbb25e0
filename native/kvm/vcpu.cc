// The vCPU fd: creation, register state and pre-faulting. Running it lives in vcpu_runner.cc.
//
// Register state crosses into JavaScript as the kernel's struct bytes (a Uint8Array of exactly
// the struct's size); lib names the fields, at the offsets uapiLayout() exports from the same
// definitions that the static_asserts in uapi/kvm.h pin.
#include <sys/ioctl.h>

#include <cerrno>
#include <cstddef>

#include "addon.h"
#include "core/fd.h"
#include "uapi/kvm.h"
#include "util/args.h"
#include "util/errors.h"

namespace kg {

// KVM_CREATE_VCPU(vmFd, id) -> vCPU fd (the kernel sets O_CLOEXEC on it).
static Napi::Value CreateVcpu(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  uint32_t id = ArgU32(info, 1, "id");
  int fd = ioctl(vmfd, KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) ThrowSys(info.Env(), errno, "ioctl", "KVM_CREATE_VCPU", Fmt("vm fd %d, id %u", vmfd, id));
  return NewFd(info.Env(), fd);
}

// The register struct calls: (fd, bytes), bytes a Uint8Array of exactly the struct's size.
// GET fills it, SET reads it. One callback serves them all, told which by its data.
struct StructCall {
  const char* name;  // the export
  unsigned long request;
  const char* requestName;
  size_t size;
};
constexpr StructCall kStructCalls[] = {
    {"getRegs", KVM_GET_REGS, "KVM_GET_REGS", sizeof(kvm_regs)},
    {"setRegs", KVM_SET_REGS, "KVM_SET_REGS", sizeof(kvm_regs)},
    {"getSregs", KVM_GET_SREGS, "KVM_GET_SREGS", sizeof(kvm_sregs)},
    {"setSregs", KVM_SET_SREGS, "KVM_SET_SREGS", sizeof(kvm_sregs)},
    {"getFpu", KVM_GET_FPU, "KVM_GET_FPU", sizeof(kvm_fpu)},
    {"setFpu", KVM_SET_FPU, "KVM_SET_FPU", sizeof(kvm_fpu)},
};

static Napi::Value StructIoctl(const Napi::CallbackInfo& info) {
  const auto* call = static_cast<const StructCall*>(info.Data());
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array bytes = ArgBytes(info, 1, "bytes");
  if (bytes.ByteLength() != call->size) {
    ThrowArg(info.Env(), ArgError::kRange,
             Fmt("The \"bytes\" argument must be exactly %zu bytes (got %zu)", call->size, bytes.ByteLength()));
  }
  if (ioctl(fd, call->request, bytes.Data()) != 0) {
    ThrowSys(info.Env(), errno, "ioctl", call->requestName, Fmt("vcpu fd %d", fd));
  }
  return info.Env().Undefined();
}

// preFaultMemory(vcpuFd, gpa, size, flags, out: BigUint64Array(2)) -> 0 or the errno.
// KVM_PRE_FAULT_MEMORY may stop early (a signal, a racing memslot change) and always passes the
// remaining range back, on failure too: so the errno is returned, not thrown, and out gets
// [gpa, size] in every case, for lib to loop or to build its error with the remaining range.
// https://docs.kernel.org/virt/kvm/api.html#kvm-pre-fault-memory
static Napi::Value PreFaultMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "vcpuFd");
  kvm_pre_fault_memory r{};
  r.gpa = ArgU64(info, 1, "gpa");
  r.size = ArgU64(info, 2, "size");
  r.flags = ArgU64(info, 3, "flags");
  if (info.Length() <= 4 || !info[4].IsTypedArray() ||
      info[4].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array ||
      info[4].As<Napi::TypedArray>().ElementLength() != 2) {
    ThrowArg(env, ArgError::kType, "The \"out\" argument must be a BigUint64Array of 2 elements");
  }
  auto out = info[4].As<Napi::BigUint64Array>();
  int err = ioctl(fd, KVM_PRE_FAULT_MEMORY, &r) < 0 ? errno : 0;
  out[0] = r.gpa;
  out[1] = r.size;
  return Napi::Number::New(env, err);
}

// The struct sizes and offsets the TypeScript side decodes with, straight from uapi/kvm.h.
static Napi::Value UapiLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto obj = [&](std::initializer_list<std::pair<const char*, size_t>> kv) {
    Napi::Object o = Napi::Object::New(env);
    for (auto& [k, v] : kv) o.Set(k, Napi::Number::New(env, static_cast<double>(v)));
    return o;
  };
  constexpr size_t U = KVM_RUN_EXIT_UNION;
  Napi::Object o = Napi::Object::New(env);
  o.Set("kvm_regs",
        obj({{"size", sizeof(kvm_regs)}, {"rip", offsetof(kvm_regs, rip)}, {"rflags", offsetof(kvm_regs, rflags)}}));
  o.Set("kvm_segment", obj({{"size", sizeof(kvm_segment)},
                            {"base", offsetof(kvm_segment, base)},
                            {"limit", offsetof(kvm_segment, limit)},
                            {"selector", offsetof(kvm_segment, selector)},
                            {"type", offsetof(kvm_segment, type)},
                            {"present", offsetof(kvm_segment, present)},
                            {"unusable", offsetof(kvm_segment, unusable)}}));
  o.Set("kvm_sregs", obj({{"size", sizeof(kvm_sregs)},
                          {"tr", offsetof(kvm_sregs, tr)},
                          {"ldt", offsetof(kvm_sregs, ldt)},
                          {"gdt", offsetof(kvm_sregs, gdt)},
                          {"idt", offsetof(kvm_sregs, idt)},
                          {"cr0", offsetof(kvm_sregs, cr0)},
                          {"cr8", offsetof(kvm_sregs, cr8)},
                          {"efer", offsetof(kvm_sregs, efer)},
                          {"apic_base", offsetof(kvm_sregs, apic_base)},
                          {"interrupt_bitmap", offsetof(kvm_sregs, interrupt_bitmap)}}));
  o.Set("kvm_fpu", obj({{"size", sizeof(kvm_fpu)},
                        {"fcw", offsetof(kvm_fpu, fcw)},
                        {"fsw", offsetof(kvm_fpu, fsw)},
                        {"ftwx", offsetof(kvm_fpu, ftwx)},
                        {"last_opcode", offsetof(kvm_fpu, last_opcode)},
                        {"last_ip", offsetof(kvm_fpu, last_ip)},
                        {"last_dp", offsetof(kvm_fpu, last_dp)},
                        {"xmm", offsetof(kvm_fpu, xmm)},
                        {"mxcsr", offsetof(kvm_fpu, mxcsr)}}));
  o.Set("kvm_run", obj({{"immediate_exit", offsetof(kvm_run_head, immediate_exit)},
                        {"exit_reason", offsetof(kvm_run_head, exit_reason)},
                        {"if_flag", offsetof(kvm_run_head, if_flag)},
                        {"flags", offsetof(kvm_run_head, flags)},
                        {"cr8", offsetof(kvm_run_head, cr8)},
                        {"apic_base", offsetof(kvm_run_head, apic_base)},
                        {"exit", U},
                        {"io.direction", U + offsetof(kvm_run_io, direction)},
                        {"io.size", U + offsetof(kvm_run_io, size)},
                        {"io.port", U + offsetof(kvm_run_io, port)},
                        {"io.count", U + offsetof(kvm_run_io, count)},
                        {"io.data_offset", U + offsetof(kvm_run_io, data_offset)},
                        {"mmio.phys_addr", U + offsetof(kvm_run_mmio, phys_addr)},
                        {"mmio.data", U + offsetof(kvm_run_mmio, data)},
                        {"mmio.len", U + offsetof(kvm_run_mmio, len)},
                        {"mmio.is_write", U + offsetof(kvm_run_mmio, is_write)},
                        {"fail_entry.hardware_entry_failure_reason",
                         U + offsetof(kvm_run_fail_entry, hardware_entry_failure_reason)},
                        {"fail_entry.cpu", U + offsetof(kvm_run_fail_entry, cpu)},
                        {"internal.suberror", U + offsetof(kvm_run_internal, suberror)},
                        {"internal.ndata", U + offsetof(kvm_run_internal, ndata)},
                        {"internal.data", U + offsetof(kvm_run_internal, data)},
                        {"system_event.type", U + offsetof(kvm_run_system_event, type)},
                        {"system_event.ndata", U + offsetof(kvm_run_system_event, ndata)},
                        {"system_event.data", U + offsetof(kvm_run_system_event, data)},
                        {"memory_fault.flags", U + offsetof(kvm_run_memory_fault, flags)},
                        {"memory_fault.gpa", U + offsetof(kvm_run_memory_fault, gpa)},
                        {"memory_fault.size", U + offsetof(kvm_run_memory_fault, size)},
                        {"hypercall.nr", U + offsetof(kvm_run_hypercall, nr)},
                        {"hypercall.args", U + offsetof(kvm_run_hypercall, args)},
                        {"hypercall.ret", U + offsetof(kvm_run_hypercall, ret)},
                        {"hypercall.flags", U + offsetof(kvm_run_hypercall, flags)},
                        {"kvm_valid_regs", KVM_RUN_VALID_REGS},
                        {"kvm_dirty_regs", KVM_RUN_DIRTY_REGS}}));
  return o;
}

void InitVcpu(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"createVcpu", CreateVcpu}, {"uapiLayout", UapiLayout}, {"preFaultMemory", PreFaultMemory}});
  for (const StructCall& c : kStructCalls) {
    exports.Set(c.name, Napi::Function::New(env, StructIoctl, c.name, const_cast<StructCall*>(&c)));
  }
}

}  // namespace kg
