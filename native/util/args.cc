#include "util/args.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>

#include "util/errors.h"

namespace kg {
namespace {

constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

Napi::Value Arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length()) {
    ThrowArg(info.Env(), ArgError::kMissing, std::string("missing argument: ") + name);
  }
  return info[i];
}

[[noreturn]] void BadType(Napi::Env env, const char* name, const char* want) {
  ThrowArg(env, ArgError::kType, std::string("The \"") + name + "\" argument must be " + want);
}

[[noreturn]] void BadRange(Napi::Env env, const char* name, const char* want) {
  ThrowArg(env, ArgError::kRange, std::string("The \"") + name + "\" argument must be " + want);
}

}  // namespace

// The readers below call napi_get_value_double/bigint directly: one Node-API call per argument
// (the type check is the status of that call), since these run on every kernel call.

// An integer Number in [lo, hi]; `type` and `range` say what was wanted in each error.
static double ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, double lo, double hi,
                         const char* type, const char* range) {
  Napi::Value v = Arg(info, i, name);
  double d;
  if (napi_get_value_double(info.Env(), v, &d) != napi_ok) BadType(info.Env(), name, type);
  if (!(d >= lo && d <= hi) || std::floor(d) != d) BadRange(info.Env(), name, range);
  return d;
}

int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<int>(ArgInteger(info, i, name, 0, 2147483647.0, "a file descriptor (integer)",
                                     "a file descriptor (integer >= 0 and <= 2147483647)"));
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = Arg(info, i, name);
  double d;
  napi_status st = napi_get_value_double(info.Env(), v, &d);
  if (st == napi_ok) {
    if (!(d >= 0 && d <= kMaxSafe) || std::floor(d) != d) {
      BadRange(info.Env(), name, "a non-negative safe integer or a bigint in [0, 2^64)");
    }
    return static_cast<uint64_t>(d);
  }
  uint64_t r;
  bool lossless = false;
  if (napi_get_value_bigint_uint64(info.Env(), v, &r, &lossless) == napi_ok) {
    if (!lossless) BadRange(info.Env(), name, "a bigint in [0, 2^64)");
    return r;
  }
  BadType(info.Env(), name, "a number or a bigint");
}

int64_t ArgOff(const Napi::CallbackInfo& info, size_t i, const char* name) {
  uint64_t v = ArgU64(info, i, name);
  if (v > static_cast<uint64_t>(INT64_MAX)) BadRange(info.Env(), name, "at most 2^63 - 1");
  return static_cast<int64_t>(v);
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint32_t>(
      ArgInteger(info, i, name, 0, 4294967295.0, "an integer", "an integer >= 0 and <= 4294967295"));
}

int32_t ArgI32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<int32_t>(
      ArgInteger(info, i, name, -2147483648.0, 2147483647.0, "an integer", "a 32-bit signed integer"));
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowArg(info.Env(), ArgError::kType, Fmt("The \"%s\" argument must be a Uint8Array", name));
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  if (a.ArrayBuffer().IsDetached()) {
    ThrowArg(info.Env(), ArgError::kValue, Fmt("The \"%s\" argument is detached", name));
  }
  return a;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = Arg(info, i, name);
  if (!v.IsString()) BadType(info.Env(), name, "a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) BadType(info.Env(), name, "a string without NUL bytes");
  return s;
}

int ArgTimeout(const Napi::CallbackInfo& info, size_t i, const char* name) {
  int32_t t = ArgI32(info, i, name);
  if (t < -1) {
    ThrowArg(info.Env(), ArgError::kRange, Fmt("The \"%s\" argument must be -1 (no limit) or >= 0 (got %d)", name, t));
  }
  return t;
}

Napi::Value U64(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

std::string Fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

}  // namespace kg
