// Every error native code throws is built by a factory that lib/ installs (lib/core/errors.ts),
// so JavaScript sees the library's own classes and codes.
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

// Kinds of argument error; lib's nativeArgError maps each to TypeError or RangeError and a code.
enum class ArgError { kType = 0, kRange = 1, kValue = 2, kMissing = 3 };

// Throws a TypeError/RangeError with a code (ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE...).
[[noreturn]] void ThrowArg(Napi::Env env, ArgError kind, const std::string& message);

// Exports setErrorFactory, setStateErrorFactory and setArgErrorFactory (lib/ calls each once per
// environment).
void InitErrors(Napi::Env env, Napi::Object exports);

}  // namespace kg
