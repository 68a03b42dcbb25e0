// The addon's entry point: gathers each file's functions into one exports object.
//
// Both builds define NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS (binding.gyp): an exception thrown
// while an environment is torn down cannot reach JavaScript, and would otherwise abort the process.
#include "addon.h"

void kg::ExportFunctions(Napi::Env env, Napi::Object exports, std::initializer_list<Export> list) {
  for (const Export& e : list) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  kg::InitErrors(env, exports);
  kg::InitLimits(env, exports);
  kg::InitFd(env, exports);
  kg::InitSystem(env, exports);
  kg::InitVm(env, exports);
  kg::InitGuestMemfd(env, exports);
  kg::InitVcpu(env, exports);
  kg::InitCpuid(env, exports);
  kg::InitVcpuRunner(env, exports);
  kg::InitMapping(env, exports);
  kg::InitGuarded(env, exports);
  kg::InitMm(env, exports);
  kg::InitFdPass(env, exports);
  kg::InitFdWatch(env, exports);
  return exports;
}

NODE_API_MODULE(kvm_gmem, Init)
