// The guest_memfd file: fstat and fallocate. (mmap lives in mapping.cc.)
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cinttypes>

#include "addon.h"
#include "util/args.h"
#include "util/errors.h"

namespace kg {

// fstat(fd) -> { size, blksize, blocks, ino, dev, mode, nlink }. size and ino are BigInt
// (u64 by convention); the small fields are Numbers.
static Napi::Value Fstat(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowSys(info.Env(), errno, "fstat", nullptr, Fmt("fd %d", fd));
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("size", U64(env, static_cast<uint64_t>(st.st_size)));
  o.Set("blksize", Napi::Number::New(env, static_cast<double>(st.st_blksize)));
  o.Set("blocks", U64(env, static_cast<uint64_t>(st.st_blocks)));
  o.Set("ino", U64(env, static_cast<uint64_t>(st.st_ino)));
  o.Set("dev", U64(env, static_cast<uint64_t>(st.st_dev)));
  o.Set("mode", Napi::Number::New(env, st.st_mode));
  o.Set("nlink", Napi::Number::New(env, static_cast<double>(st.st_nlink)));
  return o;
}

// inodeOf(fd) -> st_ino as a Number (a BigInt if above 2^53): the file's identity, which the
// leak safety net compares before closing a number that may have been reused.
static Napi::Value InodeOf(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowSys(info.Env(), errno, "fstat", nullptr, Fmt("fd %d", fd));
  uint64_t ino = static_cast<uint64_t>(st.st_ino);
  if (ino <= (1ull << 53)) return Napi::Number::New(info.Env(), static_cast<double>(ino));
  return U64(info.Env(), ino);
}

// fallocate(fd, mode, offset, length). lib/ passes FALLOC_FL_KEEP_SIZE (allocate) or
// FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE (punch); other modes reach the kernel as given
// so that its refusals can be observed.
static Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int32_t mode = ArgI32(info, 1, "mode");
  int64_t offset = ArgOff(info, 2, "offset");
  int64_t length = ArgOff(info, 3, "length");
  int r;
  do {
    r = fallocate(fd, mode, offset, length);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    ThrowSys(info.Env(), errno, "fallocate", nullptr,
             Fmt("fd %d, mode=0x%x, offset=0x%" PRIx64 ", length=0x%" PRIx64, fd, mode, static_cast<uint64_t>(offset),
                 static_cast<uint64_t>(length)));
  }
  return info.Env().Undefined();
}

void InitGuestMemfd(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports, {{"fstat", Fstat}, {"inodeOf", InodeOf}, {"fallocate", Fallocate}});
}

}  // namespace kg
