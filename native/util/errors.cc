#include "util/errors.h"

#include <cstring>

#include "addon.h"

namespace kg {
namespace {

// The factories lib sets, one set per environment (main thread or worker).
struct ErrorData {
  Napi::FunctionReference system;
  Napi::FunctionReference state;
  Napi::FunctionReference arg;
};

enum class Which { kSystem, kState, kArg };

Napi::FunctionReference& Slot(ErrorData* data, Which which) {
  return which == Which::kSystem ? data->system : which == Which::kState ? data->state : data->arg;
}

ErrorData* Data(Napi::Env env) {
  auto* data = env.GetInstanceData<ErrorData>();
  if (data == nullptr) {
    data = new ErrorData();
    env.SetInstanceData(data);
  }
  return data;
}

Napi::FunctionReference* Factory(Napi::Env env, Which which) {
  auto* data = env.GetInstanceData<ErrorData>();
  if (data == nullptr) return nullptr;
  Napi::FunctionReference& f = Slot(data, which);
  return f.IsEmpty() ? nullptr : &f;
}

Napi::Value SetFactory(const Napi::CallbackInfo& info, Which which) {
  if (info.Length() < 1 || !info[0].IsFunction()) {
    ThrowArg(info.Env(), ArgError::kType, "The \"factory\" argument must be a function");
  }
  Slot(Data(info.Env()), which) = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) { return SetFactory(info, Which::kSystem); }
Napi::Value SetStateErrorFactory(const Napi::CallbackInfo& info) { return SetFactory(info, Which::kState); }
Napi::Value SetArgErrorFactory(const Napi::CallbackInfo& info) { return SetFactory(info, Which::kArg); }

}  // namespace

void ThrowSys(Napi::Env env, int err, const char* syscall, const char* request, const std::string& detail) {
  const char* text = strerror(err);
  if (Napi::FunctionReference* f = Factory(env, Which::kSystem)) {
    Napi::Value e = f->Call({
        Napi::Number::New(env, err),
        Napi::String::New(env, syscall),
        request ? Napi::String::New(env, request) : env.Undefined(),
        Napi::String::New(env, detail),
        Napi::String::New(env, text),
    });
    throw Napi::Error(env, e);
  }
  // lib/ always installs the factory; this path only serves direct users of the addon.
  Napi::Error e =
      Napi::Error::New(env, std::string(request ? request : syscall) + " failed: " + text + " (" + detail + ")");
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

void ThrowState(Napi::Env env, const char* code, const std::string& message) {
  if (Napi::FunctionReference* f = Factory(env, Which::kState)) {
    throw Napi::Error(env, f->Call({Napi::String::New(env, code), Napi::String::New(env, message)}));
  }
  // Before lib/ installs the factory (while the addon loads), or for direct users of the addon.
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

void ThrowArg(Napi::Env env, ArgError kind, const std::string& message) {
  if (Napi::FunctionReference* f = Factory(env, Which::kArg)) {
    throw Napi::Error(env, f->Call({Napi::Number::New(env, static_cast<int>(kind)), Napi::String::New(env, message)}));
  }
  // Before lib/ installs the factory (while the addon loads), or for direct users of the addon.
  if (kind == ArgError::kRange) ThrowArg(env, ArgError::kRange, message);
  ThrowArg(env, ArgError::kType, message);
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"setErrorFactory", SetErrorFactory},
                   {"setStateErrorFactory", SetStateErrorFactory},
                   {"setArgErrorFactory", SetArgErrorFactory}});
}

}  // namespace kg
