// The KVM system fd (/dev/kvm): open, API version, extensions, VM creation.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

#include "addon.h"
#include "core/fd.h"
#include "uapi/kvm.h"
#include "util/args.h"
#include "util/errors.h"

namespace kg {

// open(path, O_RDWR | O_CLOEXEC): the only way the library obtains a system fd.
static Napi::Value Open(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "path");
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowSys(info.Env(), errno, "open", nullptr, Fmt("'%s', O_RDWR|O_CLOEXEC", path.c_str()));
  return NewFd(info.Env(), fd);
}

// An ioctl on the system fd without an argument, whose answer is its return value.
static Napi::Value QueryIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  int fd = ArgFd(info, 0, "fd");
  int r = ioctl(fd, request, 0);
  if (r < 0) ThrowSys(info.Env(), errno, "ioctl", name, Fmt("fd %d", fd));
  return Napi::Number::New(info.Env(), r);
}

static Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  return QueryIoctl(info, KVM_GET_API_VERSION, "KVM_GET_API_VERSION");
}

// KVM_CHECK_EXTENSION works on the system fd and on a VM fd (per-VM answers).
static Napi::Value CheckExtension(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  uint32_t cap = ArgU32(info, 1, "cap");
  int r = ioctl(fd, KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
  if (r < 0) ThrowSys(info.Env(), errno, "ioctl", "KVM_CHECK_EXTENSION", Fmt("fd %d, cap %u", fd, cap));
  return Napi::Number::New(info.Env(), r);
}

// KVM_CREATE_VM returns a VM fd that the kernel already marks O_CLOEXEC.
static Napi::Value CreateVm(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  uint32_t type = ArgU32(info, 1, "type");
  int r;
  do {
    r = ioctl(fd, KVM_CREATE_VM, static_cast<unsigned long>(type));
  } while (r < 0 && errno == EINTR);  // the kernel returns EINTR if a signal lands mid-create
  if (r < 0) ThrowSys(info.Env(), errno, "ioctl", "KVM_CREATE_VM", Fmt("fd %d, type %u", fd, type));
  return NewFd(info.Env(), r);
}

static Napi::Value GetVcpuMmapSize(const Napi::CallbackInfo& info) {
  return QueryIoctl(info, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE");
}

void InitSystem(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"open", Open},
                   {"getApiVersion", GetApiVersion},
                   {"checkExtension", CheckExtension},
                   {"createVm", CreateVm},
                   {"getVcpuMmapSize", GetVcpuMmapSize}});
}

}  // namespace kg
