// Plain file-descriptor calls shared by every kernel object: close, close-on-exec, dup, fstatfs,
// and the per-environment record of the fds library objects own (ownFd, disownFd).
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <unordered_map>

#include "addon.h"
#include "util/args.h"
#include "util/errors.h"

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

// dupCloexec(fd): a close-on-exec copy (F_DUPFD_CLOEXEC), for adopting an fd someone else keeps.
static Napi::Value DupCloexec(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "fcntl", nullptr, Fmt("fd %d, F_DUPFD_CLOEXEC", fd));
  }
  return Napi::Number::New(info.Env(), copy);
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

// The fds that library objects of one environment own and have not closed.
//
// A Worker that ends without closing its objects never runs their FinalizationRegistry, so their
// fds would stay open (and their guest memory allocated) for the life of the process. The
// environment's cleanup hook closes what is still recorded here, but only a number that still
// names the object's file: it may have been closed behind the library's back and reused, even
// by another environment. Files with an inode of their own (guest_memfd, sockets) are recognised
// by device and inode; files that share one inode per kind (/dev/kvm, VM and vCPU fds) by
// kcmp(KCMP_FILE) against a close-on-exec duplicate kept here for as long as the entry lives.
struct OwnedFd {
  int fd;   // -1: never closed at teardown
  int ref;  // the duplicate, or -1 (a file with an inode of its own, or no fd was left to dup)
  dev_t dev;
  ino_t ino;
};

struct EnvFds {
  std::unordered_map<uint64_t, OwnedFd> owned;  // by token; touched only on the environment's thread
  uint64_t next = 1;
};

// Whether `fd` still names the file `o` recorded.
static bool StillOwned(const OwnedFd& o) {
  if (o.ref >= 0) {
    pid_t pid = getpid();
    return syscall(SYS_kcmp, pid, pid, KCMP_FILE, o.fd, o.ref) == 0;  // no kcmp: keep it open
  }
  struct stat st;
  return fstat(o.fd, &st) == 0 && st.st_dev == o.dev && st.st_ino == o.ino;
}

static void CloseOwnedAtTeardown(void* arg) {
  auto* fds = static_cast<EnvFds*>(arg);
  for (const auto& [token, o] : fds->owned) {
    if (o.fd >= 0 && StillOwned(o)) close(o.fd);
    if (o.ref >= 0) close(o.ref);
  }
  delete fds;
}

// ownFd(fd, ownInode) -> token: records an fd a library object now owns, for this environment's
// teardown. ownInode: the file has an inode of its own (else a duplicate is kept to compare
// with). Never fails, so that no object's constructor can: an fd that cannot be told apart
// (fstat fails, or no fd is left to dup) is recorded as one never to close, or not at all (0).
static Napi::Value OwnFd(const Napi::CallbackInfo& info) {
  auto* fds = static_cast<EnvFds*>(info.Data());
  int fd = ArgFd(info, 0, "fd");
  bool ownInode = info.Length() > 1 && info[1].ToBoolean().Value();
  struct stat st;
  if (fstat(fd, &st) != 0) return Napi::Number::New(info.Env(), 0);
  OwnedFd o{fd, -1, st.st_dev, st.st_ino};
  if (!ownInode) {
    o.ref = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (o.ref < 0) o.fd = -1;  // nothing to tell it apart with: never closed at teardown
  }
  uint64_t token = fds->next++;
  fds->owned.emplace(token, o);
  return Napi::Number::New(info.Env(), static_cast<double>(token));
}

// disownFd(token): forgets what ownFd recorded (the object closed its fd, or gave it up) and
// closes the duplicate. Unknown tokens (0: nothing was recorded) are ignored.
static Napi::Value DisownFd(const Napi::CallbackInfo& info) {
  auto* fds = static_cast<EnvFds*>(info.Data());
  auto it = fds->owned.find(ArgU64(info, 0, "token"));
  if (it != fds->owned.end()) {
    if (it->second.ref >= 0) close(it->second.ref);
    fds->owned.erase(it);
  }
  return info.Env().Undefined();
}

void InitFd(Napi::Env env, Napi::Object exports) {
  auto* fds = new EnvFds();
  if (napi_add_env_cleanup_hook(env, CloseOwnedAtTeardown, fds) != napi_ok) {
    delete fds;
    ThrowState(env, "ERR_KVM_ADDON_INIT", "kvm-gmem: cannot add the environment cleanup hook");
  }
  exports.Set("ownFd", Napi::Function::New(env, OwnFd, "ownFd", fds));
  exports.Set("disownFd", Napi::Function::New(env, DisownFd, "disownFd", fds));
  ExportFunctions(env, exports,
                  {{"close", Close},
                   {"memfdCreate", MemfdCreate},
                   {"fsMagic", FsMagic},
                   {"setCloexec", SetCloexec},
                   {"dupCloexec", DupCloexec}});
}

}  // namespace kg
