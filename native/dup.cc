// dupCloexec(fd): a second fd for the same open file, close-on-exec (fcntl F_DUPFD_CLOEXEC), so
// that lib/ can adopt a copy of an fd that someone else keeps owning ({ dup: true }).
#include <fcntl.h>

#include <cerrno>

#include "args.h"
#include "objects.h"

namespace kg {

static Napi::Value DupCloexec(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "fcntl", nullptr, Fmt("fd %d, F_DUPFD_CLOEXEC", fd));
  }
  return NewFd(info.Env(), copy);
}

void InitDup(Napi::Env env, Napi::Object exports) {
  exports.Set("dupCloexec", Napi::Function::New(env, DupCloexec, "dupCloexec"));
}

}  // namespace kg
