// One Init function per native file; addon.cc calls them all.
#pragma once

#include <napi.h>

namespace kg {
void InitErrors(Napi::Env env, Napi::Object exports);  // args.cc
void InitFd(Napi::Env env, Napi::Object exports);      // fd.cc
void InitSystem(Napi::Env env, Napi::Object exports);  // system.cc: /dev/kvm
void InitVm(Napi::Env env, Napi::Object exports);      // vm.cc: the VM fd
void InitGuestMemfd(Napi::Env env, Napi::Object exports);  // guest_memfd.cc
void InitMapping(Napi::Env env, Napi::Object exports);     // mapping.cc: mmap/munmap
void InitGuarded(Napi::Env env, Napi::Object exports);     // guarded.cc: SIGBUS-guarded access
void InitMm(Napi::Env env, Napi::Object exports);          // mm.cc: madvise, NUMA policy, mmap probe
void InitVcpu(Napi::Env env, Napi::Object exports);        // vcpu.cc: the vCPU fd, registers
void InitCpuid(Napi::Env env, Napi::Object exports);       // cpuid.cc: supported and per-vCPU CPUID
void InitVcpuRunner(Napi::Env env, Napi::Object exports);  // vcpu_runner.cc: KVM_RUN, threads, kick
void InitFdPass(Napi::Env env, Napi::Object exports);      // fdpass.cc: SCM_RIGHTS over Unix sockets
void InitDup(Napi::Env env, Napi::Object exports);         // dup.cc: F_DUPFD_CLOEXEC

// fd.cc: records an fd the addon just made in this environment's fd record, before JavaScript
// sees it, so that a Worker ended before the owning object exists still closes it; ownFd(fd)
// then takes that record over. NewFd records and returns the number.
void RecordCreated(int fd);
Napi::Value NewFd(Napi::Env env, int fd);
}  // namespace kg
