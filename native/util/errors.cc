#include "util/errors.h"

#include <cstring>

#include "addon.h"

namespace kg {
namespace {

// The factories lib sets, one pair per environment (main thread or worker).
struct ErrorData {
  Napi::FunctionReference system;
  Napi::FunctionReference state;
};

ErrorData* Data(Napi::Env env) {
  auto* data = env.GetInstanceData<ErrorData>();
  if (data == nullptr) {
    data = new ErrorData();
    env.SetInstanceData(data);
  }
  return data;
}

Napi::FunctionReference* Factory(Napi::Env env, bool state) {
  auto* data = env.GetInstanceData<ErrorData>();
  if (data == nullptr) return nullptr;
  Napi::FunctionReference& f = state ? data->state : data->system;
  return f.IsEmpty() ? nullptr : &f;
}

Napi::Value SetFactory(const Napi::CallbackInfo& info, bool state) {
  if (info.Length() < 1 || !info[0].IsFunction()) {
    throw Napi::TypeError::New(info.Env(), "The \"factory\" argument must be a function");
  }
  ErrorData* data = Data(info.Env());
  (state ? data->state : data->system) = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) { return SetFactory(info, false); }
Napi::Value SetStateErrorFactory(const Napi::CallbackInfo& info) { return SetFactory(info, true); }

}  // namespace

void ThrowSys(Napi::Env env, int err, const char* syscall, const char* request, const std::string& detail) {
  const char* text = strerror(err);
  if (Napi::FunctionReference* f = Factory(env, false)) {
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
  if (Napi::FunctionReference* f = Factory(env, true)) {
    throw Napi::Error(env, f->Call({Napi::String::New(env, code), Napi::String::New(env, message)}));
  }
  // Before lib/ installs the factory (while the addon loads), or for direct users of the addon.
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports, {{"setErrorFactory", SetErrorFactory}, {"setStateErrorFactory", SetStateErrorFactory}});
}

}  // namespace kg
