// Plain file-descriptor calls shared by every kernel object: close and close-on-exec.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "args.h"
#include "objects.h"

namespace kg {

static Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  // Linux releases the descriptor even when close() reports EINTR, so never retry.
  if (close(fd) != 0 && errno != EINTR) ThrowSys(info.Env(), errno, "close", nullptr, Fmt("fd %d", fd));
  return info.Env().Undefined();
}

static Napi::Value SetCloexec(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0) {
    ThrowSys(info.Env(), errno, "fcntl", nullptr, Fmt("fd %d, F_SETFD FD_CLOEXEC", fd));
  }
  return info.Env().Undefined();
}

void InitFd(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
}

}  // namespace kg
