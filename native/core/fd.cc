// Plain file-descriptor calls shared by every kernel object: close, close-on-exec, dup, fstatfs,
// and the per-environment record of the fds library objects own (ownFd, disownFd).
#include "core/fd.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "addon.h"
#include "util/args.h"
#include "util/errors.h"

namespace kg {

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
  return NewFd(info.Env(), copy);
}

// memfd_create(name, MFD_CLOEXEC): a plain memory file, the "not a guest_memfd" fd that the
// kernel's selftests offer KVM_SET_USER_MEMORY_REGION2 to check that it is refused.
static Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) ThrowSys(info.Env(), errno, "memfd_create", nullptr, Fmt("'%s', MFD_CLOEXEC", name.c_str()));
  return NewFd(info.Env(), fd);
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
  std::string link;  // with no duplicate for a shared inode: /proc/self/fd's text for it
};

struct EnvFds {
  std::unordered_map<uint64_t, OwnedFd> owned;  // by token; touched only on the environment's thread
  std::unordered_map<int, uint64_t> created;    // fd -> token: made by the addon, not yet owned by an object
  uint64_t next = 1;
};

// The record of the environment whose JavaScript runs on this thread (one per Worker, one for
// the main thread): native calls that make fds reach it without a handle.
static thread_local EnvFds* t_fds = nullptr;

// statfs f_type of the anonymous-inode filesystem (ANON_INODE_FS_MAGIC).
static constexpr uint32_t kAnonInodeFsMagic = 0x09041934;

// What /proc/self/fd/N reads as, or "" when it cannot be read.
static std::string LinkOf(int fd) {
  char buf[256];
  std::string path = Fmt("/proc/self/fd/%d", fd);
  ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// Whether `fd` still names the file `o` recorded.
static bool StillOwned(const OwnedFd& o) {
  if (o.ref >= 0) {
    pid_t pid = getpid();
    return syscall(SYS_kcmp, pid, pid, KCMP_FILE, o.fd, o.ref) == 0;  // no kcmp: keep it open
  }
  struct stat st;
  if (fstat(o.fd, &st) != 0 || st.st_dev != o.dev || st.st_ino != o.ino) return false;
  return o.link.empty() || LinkOf(o.fd) == o.link;
}

static void CloseOwnedAtTeardown(void* arg) {
  auto* fds = static_cast<EnvFds*>(arg);
  if (t_fds == fds) t_fds = nullptr;
  for (const auto& [token, o] : fds->owned) {
    if (o.fd >= 0 && StillOwned(o)) close(o.fd);
    if (o.ref >= 0) close(o.ref);
  }
  delete fds;
}

// Adds `fd` to the record; returns its token, or 0 when fstat fails (nothing to tell it apart by).
// `dup`: whether to take a number for the duplicate now (else the link text stands in for it).
static uint64_t Record(EnvFds* fds, int fd, bool ownInode, bool dup = true) {
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  OwnedFd o{fd, -1, st.st_dev, st.st_ino, {}};
  if (!ownInode) {
    o.ref = dup ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    // No number left for the duplicate: the link text ("anon_inode:kvm-vm") with the shared
    // inode tells it apart from other anonymous files, if not from another file of its kind.
    if (o.ref < 0) o.link = LinkOf(fd);
    if (o.ref < 0 && o.link.empty()) o.fd = -1;  // nothing to tell it apart with
  }
  uint64_t token = fds->next++;
  fds->owned.emplace(token, o);
  return token;
}

// Forgets the entry `token` and closes its duplicate.
static void Forget(EnvFds* fds, uint64_t token) {
  auto it = fds->owned.find(token);
  if (it == fds->owned.end()) return;
  if (it->second.ref >= 0) close(it->second.ref);
  fds->owned.erase(it);
}

void RecordCreated(int fd) {
  EnvFds* fds = t_fds;
  if (fds == nullptr || fd < 0) return;
  // Files that share one inode per kind need the duplicate: anonymous inodes (VM, vCPU, and
  // guest_memfd before Linux 7.2) and device nodes (/dev/kvm).
  struct stat st;
  struct statfs sf;
  bool shared = fstat(fd, &st) != 0 || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || fstatfs(fd, &sf) != 0 ||
                static_cast<uint32_t>(sf.f_type) == kAnonInodeFsMagic;
  auto old = fds->created.find(fd);
  if (old != fds->created.end()) Forget(fds, old->second);  // closed behind the addon's back
  // No duplicate yet: the creation must not need a number more than before (a vCPU's runner
  // takes its own next); ownFd() adds it once an object owns the fd.
  uint64_t token = Record(fds, fd, !shared, false);
  if (token != 0) fds->created[fd] = token;
}

Napi::Value NewFd(Napi::Env env, int fd) {
  RecordCreated(fd);
  return Napi::Number::New(env, fd);
}

static Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  // An fd the addon made that no object took (lib gives it back on an error path).
  if (EnvFds* fds = t_fds) {
    auto made = fds->created.find(fd);
    if (made != fds->created.end()) {
      Forget(fds, made->second);
      fds->created.erase(made);
    }
  }
  // Linux releases the descriptor even when close() reports EINTR, so never retry.
  if (close(fd) != 0 && errno != EINTR) ThrowSys(info.Env(), errno, "close", nullptr, Fmt("fd %d", fd));
  return info.Env().Undefined();
}

// ownFd(fd, ownInode) -> token: records an fd a library object now owns, for this environment's
// teardown, or takes over the record the addon made when it created the fd. ownInode: the file
// has an inode of its own (else a duplicate is kept to compare with). Never fails, so that no
// object's constructor can: an fd that cannot be told apart is recorded as one never to close,
// or not at all (0).
static Napi::Value OwnFd(const Napi::CallbackInfo& info) {
  auto* fds = static_cast<EnvFds*>(info.Data());
  int fd = ArgFd(info, 0, "fd");
  bool ownInode = info.Length() > 1 && info[1].ToBoolean().Value();
  auto made = fds->created.find(fd);
  if (made != fds->created.end()) {
    uint64_t token = made->second;
    fds->created.erase(made);
    auto it = fds->owned.find(token);
    if (it != fds->owned.end() && it->second.ref < 0 && !it->second.link.empty()) {
      it->second.ref = fcntl(fd, F_DUPFD_CLOEXEC, 0);  // the exact identity, if a number is free
      if (it->second.ref >= 0) it->second.link.clear();
    }
    return Napi::Number::New(info.Env(), static_cast<double>(token));
  }
  return Napi::Number::New(info.Env(), static_cast<double>(Record(fds, fd, ownInode)));
}

// disownFd(token): forgets what ownFd recorded (the object closed its fd, or gave it up) and
// closes the duplicate. Unknown tokens (0: nothing was recorded) are ignored.
static Napi::Value DisownFd(const Napi::CallbackInfo& info) {
  auto* fds = static_cast<EnvFds*>(info.Data());
  Forget(fds, ArgU64(info, 0, "token"));
  return info.Env().Undefined();
}

void InitFd(Napi::Env env, Napi::Object exports) {
  auto* fds = new EnvFds();
  if (napi_add_env_cleanup_hook(env, CloseOwnedAtTeardown, fds) != napi_ok) {
    delete fds;
    ThrowState(env, "ERR_KVM_ADDON_INIT", "kvm-gmem: cannot add the environment cleanup hook");
  }
  t_fds = fds;
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
