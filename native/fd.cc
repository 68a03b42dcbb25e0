// Plain file-descriptor calls shared by every kernel object: close, close-on-exec, fstatfs.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/vfs.h>
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
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {  // FD_CLOEXEC is the only fd flag
    ThrowSys(info.Env(), errno, "fcntl", nullptr, Fmt("fd %d, F_SETFD FD_CLOEXEC", fd));
  }
  return info.Env().Undefined();
}

// memfd_create(name, MFD_CLOEXEC): a plain memory file, the "not a guest_memfd" fd that the
// kernel's selftests offer KVM_SET_USER_MEMORY_REGION2 to check that it is refused.
static Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) ThrowSys(info.Env(), errno, "memfd_create", nullptr, Fmt("'%s', MFD_CLOEXEC", name.c_str()));
  return Napi::Number::New(info.Env(), fd);
}

// fsMagic(fd) -> statfs f_type of the file's filesystem: how a guest_memfd is recognised without
// trusting its /proc link text (anon_inode fs before Linux 7.2, guest_memfd's own fs since).
static Napi::Value FsMagic(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  struct statfs st;
  if (fstatfs(fd, &st) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "fstatfs", nullptr, Fmt("fd %d", fd));
  }
  return Napi::Number::New(info.Env(), static_cast<double>(static_cast<uint32_t>(st.f_type)));
}

void InitFd(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("fsMagic", Napi::Function::New(env, FsMagic, "fsMagic"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
}

}  // namespace kg
