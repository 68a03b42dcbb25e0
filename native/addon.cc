// The addon's entry point: gathers each kernel object's functions into one exports object.
#include "addon.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  kg::InitErrors(env, exports);
  kg::InitFd(env, exports);
  kg::InitSystem(env, exports);
  kg::InitVm(env, exports);
  kg::InitGuestMemfd(env, exports);
  kg::InitMapping(env, exports);
  kg::InitGuarded(env, exports);
  kg::InitMm(env, exports);
  kg::InitVcpu(env, exports);
  kg::InitCpuid(env, exports);
  kg::InitVcpuRunner(env, exports);
  kg::InitFdPass(env, exports);
  kg::InitDup(env, exports);
  return exports;
}

NODE_API_MODULE(kvm_gmem, Init)
