#include "util/args.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace kg {
namespace {

constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

Napi::Value Arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length()) {
    throw Napi::TypeError::New(info.Env(), std::string("missing argument: ") + name);
  }
  return info[i];
}

[[noreturn]] void BadType(Napi::Env env, const char* name, const char* want) {
  throw Napi::TypeError::New(env, std::string("The \"") + name + "\" argument must be " + want);
}

[[noreturn]] void BadRange(Napi::Env env, const char* name, const char* want) {
  throw Napi::RangeError::New(env, std::string("The \"") + name + "\" argument must be " + want);
}

// The factory set by lib/errors.ts. One per environment (main thread or worker).
struct ErrorData {
  Napi::FunctionReference factory;
};

}  // namespace

// The readers below call napi_get_value_double/bigint directly: one Node-API call per argument
// (the type check is the status of that call), since these run on every kernel call.

int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = Arg(info, i, name);
  double d;
  if (napi_get_value_double(info.Env(), v, &d) != napi_ok) BadType(info.Env(), name, "a file descriptor (integer)");
  if (!(d >= 0 && d <= 2147483647.0) || std::floor(d) != d) {
    BadRange(info.Env(), name, "a file descriptor (integer >= 0 and <= 2147483647)");
  }
  return static_cast<int>(d);
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
  Napi::Value v = Arg(info, i, name);
  double d;
  if (napi_get_value_double(info.Env(), v, &d) != napi_ok) BadType(info.Env(), name, "an integer");
  if (!(d >= 0 && d <= 4294967295.0) || std::floor(d) != d) {
    BadRange(info.Env(), name, "an integer >= 0 and <= 4294967295");
  }
  return static_cast<uint32_t>(d);
}

int32_t ArgI32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = Arg(info, i, name);
  if (!v.IsNumber()) BadType(info.Env(), name, "an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= -2147483648.0 && d <= 2147483647.0) || std::floor(d) != d) {
    BadRange(info.Env(), name, "a 32-bit signed integer");
  }
  return static_cast<int32_t>(d);
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), Fmt("The \"%s\" argument must be a Uint8Array", name));
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  if (a.ArrayBuffer().IsDetached()) {
    throw Napi::TypeError::New(info.Env(), Fmt("The \"%s\" argument is detached", name));
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

Napi::Value U64(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

std::string Fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

void ThrowSys(Napi::Env env, int err, const char* syscall, const char* request,
              const std::string& detail) {
  auto* data = env.GetInstanceData<ErrorData>();
  const char* text = strerror(err);
  if (data != nullptr && !data->factory.IsEmpty()) {
    Napi::Value e = data->factory.Call({
        Napi::Number::New(env, err),
        Napi::String::New(env, syscall),
        request ? Napi::String::New(env, request) : env.Undefined(),
        Napi::String::New(env, detail),
        Napi::String::New(env, text),
    });
    throw Napi::Error(env, e);
  }
  // lib/ always installs the factory; this path only serves direct users of the addon.
  Napi::Error e = Napi::Error::New(env, std::string(request ? request : syscall) + " failed: " +
                                            text + " (" + detail + ")");
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

// Node-API has no "is stopping" query, but every call that may run JavaScript starts by asking
// the environment whether it still can (Node: can_call_into_js, false from the moment a stop is
// requested) and answers napi_pending_exception when not. napi_has_own_property on a fresh plain
// object is such a call, and runs no JavaScript otherwise.
bool EnvStopping(napi_env env) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  napi_value obj, key;
  bool has = false;
  napi_status st = napi_create_object(env, &obj);
  if (st == napi_ok) st = napi_create_string_utf8(env, "k", 1, &key);
  if (st == napi_ok) st = napi_has_own_property(env, obj, key, &has);
  napi_close_handle_scope(env, scope);
  return st == napi_pending_exception;
}

static Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) {
    throw Napi::TypeError::New(info.Env(), "The \"factory\" argument must be a function");
  }
  auto* data = info.Env().GetInstanceData<ErrorData>();
  if (data == nullptr) {
    data = new ErrorData();
    info.Env().SetInstanceData(data);
  }
  data->factory = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory, "setErrorFactory"));
}

}  // namespace kg
