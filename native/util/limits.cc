// limits: the object lib/ reads its limits from (see util/limits.h).
#include "util/limits.h"

#include "addon.h"
#include "uapi/kvm.h"

namespace kg {

void InitLimits(Napi::Env env, Napi::Object exports) {
  Napi::Object o = Napi::Object::New(env);
  auto set = [&](const char* name, uint64_t v) { o.Set(name, Napi::Number::New(env, static_cast<double>(v))); };
  set("maxPayload", limits::kMaxPayload);
  set("maxFdsPerMessage", limits::kMaxFdsPerMessage);
  set("maxSocketPathBytes", limits::kMaxSocketPathBytes);
  set("maxMappingLength", limits::kMaxMappingLength);
  set("maxMapAlign", limits::kMaxMapAlign);
  set("maxMaxnode", limits::kMaxMaxnode);
  set("maxPageQueries", limits::kMaxPageQueries);
  set("maxGuardedThreads", limits::kMaxGuardedThreads);
  set("maxCpuidEntries", KVM_MAX_CPUID_ENTRIES);
  o.Freeze();
  exports.Set("limits", o);
}

}  // namespace kg
