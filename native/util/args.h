// Argument readers shared by every native file.
//
// The addon never trusts its caller: lib/ validates first and names arguments for users,
// but any value that reaches native code is checked again here, so that nothing passed
// from JavaScript can make a kernel call with a truncated or wrapped value.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace kg {

// A file descriptor: a Number that is an integer in [0, INT32_MAX].
int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name);

// A u64: a non-negative safe-integer Number or a BigInt in [0, 2^64).
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name);

// A u64 that must also fit a signed 64-bit off_t (file offsets and lengths).
int64_t ArgOff(const Napi::CallbackInfo& info, size_t i, const char* name);

// A u32: a Number that is an integer in [0, 2^32).
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);

// A signed 32-bit integer Number.
int32_t ArgI32(const Napi::CallbackInfo& info, size_t i, const char* name);

// A Uint8Array (Buffer included) that is not detached.
Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name);

// A string.
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);

// A u64 as a JavaScript BigInt.
Napi::Value U64(Napi::Env env, uint64_t v);

// printf-style formatting for error details.
std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// A timeout in milliseconds: an integer in [-1, 2^31 - 1], -1 meaning no limit.
int ArgTimeout(const Napi::CallbackInfo& info, size_t i, const char* name);

}  // namespace kg
