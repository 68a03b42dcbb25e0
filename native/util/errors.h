// Every error native code throws at runtime, other than argument errors, is built by a factory
// that lib/ installs, so JavaScript sees the library's own classes (KvmError, KvmStateError).
#pragma once

#include <napi.h>

#include <string>

namespace kg {

// Throws the library's KvmError for a failed system call. `err` is the positive errno,
// `syscall` the libc call ("ioctl", "mmap"...), `request` the ioctl name or nullptr,
// `detail` the arguments in words.
[[noreturn]] void ThrowSys(Napi::Env env, int err, const char* syscall, const char* request, const std::string& detail);

// Throws the library's KvmStateError: `code` is one of lib's KvmStateCode values
// ("ERR_KVM_CLOSED"...), `message` says what was refused and why.
[[noreturn]] void ThrowState(Napi::Env env, const char* code, const std::string& message);

// Exports setErrorFactory and setStateErrorFactory (lib/ calls each once per environment).
void InitErrors(Napi::Env env, Napi::Object exports);

}  // namespace kg
