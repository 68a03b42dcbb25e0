// One Init function per native file that exports something; addon.cc calls them all.
#pragma once

#include <napi.h>

#include <initializer_list>

namespace kg {

// exports[name] = a function calling fn, for each entry.
struct Export {
  const char* name;
  Napi::Value (*fn)(const Napi::CallbackInfo&);
};
void ExportFunctions(Napi::Env env, Napi::Object exports, std::initializer_list<Export> list);

void InitErrors(Napi::Env env, Napi::Object exports);      // util/errors.cc: the error factories
void InitLimits(Napi::Env env, Napi::Object exports);      // util/limits.cc: the limits object
void InitFd(Napi::Env env, Napi::Object exports);          // core/fd.cc: plain fd calls, fd ownership
void InitSystem(Napi::Env env, Napi::Object exports);      // kvm/system.cc: /dev/kvm
void InitVm(Napi::Env env, Napi::Object exports);          // kvm/vm.cc: the VM fd
void InitGuestMemfd(Napi::Env env, Napi::Object exports);  // kvm/guest_memfd.cc
void InitVcpu(Napi::Env env, Napi::Object exports);        // kvm/vcpu.cc: the vCPU fd, registers
void InitCpuid(Napi::Env env, Napi::Object exports);       // kvm/cpuid.cc: supported and per-vCPU CPUID
void InitVcpuRunner(Napi::Env env, Napi::Object exports);  // kvm/vcpu_runner.cc: KVM_RUN, threads, kick
void InitMapping(Napi::Env env, Napi::Object exports);     // mm/mapping.cc: mmap/munmap
void InitGuarded(Napi::Env env, Napi::Object exports);     // mm/guarded.cc: SIGBUS-guarded access
void InitMm(Napi::Env env, Napi::Object exports);          // mm/calls.cc: madvise, NUMA policy, mmap probe
void InitFdPass(Napi::Env env, Napi::Object exports);      // ipc/fdpass.cc: SCM_RIGHTS over Unix sockets
void InitFdWatch(Napi::Env env, Napi::Object exports);     // ipc/fd_watch.cc: waiting for a readable fd
}  // namespace kg
