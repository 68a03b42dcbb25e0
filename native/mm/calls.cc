// Memory-management calls on live mappings: madvise, the NUMA policy calls (raw syscalls, no
// libnuma: build hosts often lack its headers, and the selftests need the kernel's own answers),
// move_pages as a query, and an mmap probe that reports the kernel's answer to any argument set.
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <vector>

#include "addon.h"
#include "mm/mapping.h"
#include "util/args.h"
#include "util/errors.h"
#include "util/limits.h"

namespace kg {
namespace {

// Nodemasks are passed in a buffer of kMaskWords words; the kernel reads BITS_TO_LONGS(maxnode - 1).
using limits::kMaskWords;
using limits::kMaxMaxnode;
// Bounded so that a huge array cannot make the addon allocate without limit (a failure aborts).
using limits::kMaxPageQueries;

// The advice values madvise() may be given from here: those known (Linux 6.18's
// https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/include/uapi/asm-generic/mman-common.h?h=v6.18)
// to advise the kernel about this process's own mapping, which at worst discards its contents (DONTNEED, FREE, REMOVE)
// or changes how it is inherited or dumped. Anything else is refused before the call, known or not: MADV_HWPOISON (100)
// poisons the physical pages (the next touch is a machine-check SIGBUS, and the host loses the memory),
// MADV_SOFT_OFFLINE (101) takes the physical pages out of service for the whole host,
// MADV_GUARD_INSTALL (102) makes the range raise SIGSEGV on any access, including through the
// mapping's Uint8Array; and a value a newer kernel adds may be as harmful (102 is recent).
bool KnownAdvice(int32_t advice) {
  switch (advice) {
    case 0:    // MADV_NORMAL
    case 1:    // MADV_RANDOM
    case 2:    // MADV_SEQUENTIAL
    case 3:    // MADV_WILLNEED
    case 4:    // MADV_DONTNEED
    case 8:    // MADV_FREE
    case 9:    // MADV_REMOVE
    case 10:   // MADV_DONTFORK
    case 11:   // MADV_DOFORK
    case 12:   // MADV_MERGEABLE
    case 13:   // MADV_UNMERGEABLE
    case 14:   // MADV_HUGEPAGE
    case 15:   // MADV_NOHUGEPAGE
    case 16:   // MADV_DONTDUMP
    case 17:   // MADV_DODUMP
    case 18:   // MADV_WIPEONFORK
    case 19:   // MADV_KEEPONFORK
    case 20:   // MADV_COLD
    case 21:   // MADV_PAGEOUT
    case 22:   // MADV_POPULATE_READ
    case 23:   // MADV_POPULATE_WRITE
    case 24:   // MADV_DONTNEED_LOCKED
    case 25:   // MADV_COLLAPSE
    case 103:  // MADV_GUARD_REMOVE
      return true;
    default:
      return false;
  }
}

// A nodemask: a safe-integer Number or a non-negative BigInt of at most kMaskWords * 64 bits.
void ArgNodemask(const Napi::CallbackInfo& info, size_t i, unsigned long (&mask)[kMaskWords]) {
  for (auto& w : mask) w = 0;
  if (i < info.Length() && info[i].IsBigInt()) {
    Napi::BigInt b = info[i].As<Napi::BigInt>();
    int sign = 0;
    size_t count = b.WordCount();
    if (count > kMaskWords) {
      ThrowArg(info.Env(), ArgError::kRange, "The \"nodemask\" argument must fit in 1024 bits");
    }
    uint64_t words[kMaskWords] = {};
    b.ToWords(&sign, &count, words);
    if (sign != 0) ThrowArg(info.Env(), ArgError::kRange, "The \"nodemask\" argument must not be negative");
    for (size_t w = 0; w < count; w++) mask[w] = words[w];
    return;
  }
  mask[0] = ArgU64(info, i, "nodemask");
}

Napi::Value MaskToBigInt(Napi::Env env, const unsigned long (&mask)[kMaskWords]) {
  uint64_t words[kMaskWords];
  size_t count = 1;
  for (size_t w = 0; w < kMaskWords; w++) {
    words[w] = mask[w];
    if (mask[w] != 0) count = w + 1;
  }
  return Napi::BigInt::New(env, 0, count, words);
}

}  // namespace

// madvise(buffer, offset, length, advice): madvise(2) on [offset, offset + length) of a live
// mapping, for the advice values KnownAdvice() lets through. The kernel checks alignment and
// whether the advice suits the mapping; its errors are thrown as they are.
static Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LiveRange range = ArgLiveRange(info);
  int32_t advice = ArgI32(info, 3, "advice");
  char* p = reinterpret_cast<char*>(range.Check(env));
  uint64_t length = range.length;
  if (!KnownAdvice(advice)) {
    ThrowArg(env, ArgError::kRange,
             Fmt("The \"advice\" argument %d is refused: only the MADV_* values 0-4, 8-25 "
                 "and 103 are passed on (others poison, offline or guard the memory, or "
                 "are unknown here)",
                 advice));
  }
  if (madvise(p, static_cast<size_t>(length), advice) != 0) {
    ThrowSys(env, errno, "madvise", nullptr,
             Fmt("address=%p, length=0x%" PRIx64 ", advice=%d", static_cast<void*>(p), length, advice));
  }
  return env.Undefined();
}

// mbind(buffer, offset, length, mode, nodemask, maxnode, flags): mbind(2) on [offset,
// offset + length) of a live mapping. mode may carry the MPOL_F_* mode flags; flags are the
// MPOL_MF_* flags.
static Napi::Value Mbind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LiveRange range = ArgLiveRange(info);
  uint32_t mode = ArgU32(info, 3, "mode");
  unsigned long mask[kMaskWords];
  ArgNodemask(info, 4, mask);
  uint32_t maxnode = ArgU32(info, 5, "maxnode");
  uint32_t flags = ArgU32(info, 6, "flags");
  char* p = reinterpret_cast<char*>(range.Check(env));
  uint64_t length = range.length;
  if (maxnode > kMaxMaxnode) {
    // The kernel would read past the nodemask buffer.
    ThrowArg(env, ArgError::kRange, Fmt("The \"maxnode\" argument must be at most %u", kMaxMaxnode));
  }
  // maxnode 0 means no nodemask: pass NULL, as the kernel's own callers do. With a pointer the
  // kernel takes maxnode - 1 (wrapped to ULONG_MAX) as the mask's size and refuses it (EINVAL).
  unsigned long* nodes = maxnode == 0 ? nullptr : mask;
  if (syscall(SYS_mbind, p, static_cast<unsigned long>(length), static_cast<unsigned long>(mode), nodes,
              static_cast<unsigned long>(maxnode), flags) != 0) {
    ThrowSys(env, errno, "mbind", nullptr,
             Fmt("address=%p, length=0x%" PRIx64 ", mode=%u, nodemask=0x%lx%s, maxnode=%u, flags=0x%x",
                 static_cast<void*>(p), length, mode, mask[0], mask[1] != 0 ? "..." : "", maxnode, flags));
  }
  return env.Undefined();
}

// getMempolicy(buffer, offset) -> { mode, nodemask }: get_mempolicy(2) with MPOL_F_ADDR for the
// page at `offset` of a live mapping. mode includes any MPOL_F_* mode flags; nodemask is a BigInt
// (asked with 1024 bits, enough for any x86_64 kernel's nr_node_ids).
static Napi::Value GetMempolicy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = LiveBuffer(info, 0);
  uint64_t offset = ArgU64(info, 1, "offset");
  if (offset >= ab.ByteLength()) {
    ThrowArg(
        env, ArgError::kRange,
        Fmt("The \"offset\" argument 0x%" PRIx64 " is outside the mapping (length 0x%zx)", offset, ab.ByteLength()));
  }
  char* p = static_cast<char*>(ab.Data()) + offset;
  int mode = 0;
  unsigned long mask[kMaskWords] = {};
  constexpr unsigned long kMpolFAddr = 1 << 1;  // MPOL_F_ADDR
  if (syscall(SYS_get_mempolicy, &mode, mask, static_cast<unsigned long>(kMaxMaxnode), p, kMpolFAddr) != 0) {
    ThrowSys(env, errno, "get_mempolicy", nullptr,
             Fmt("address=%p, maxnode=%u, MPOL_F_ADDR", static_cast<void*>(p), kMaxMaxnode));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("mode", Napi::Number::New(env, mode));
  o.Set("nodemask", MaskToBigInt(env, mask));
  return o;
}

// pageNodes(buffer, offsets) -> number[]: move_pages(0, n, pages, NULL, status, 0), which moves
// nothing and reports, for the page at each offset of a live mapping, the node that holds it or a
// negative errno (-ENOENT: not present, -EFAULT: not mapped...).
static Napi::Value PageNodes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = LiveBuffer(info, 0);
  if (info.Length() < 2 || !info[1].IsArray()) {
    ThrowArg(env, ArgError::kType, "The \"offsets\" argument must be an array of offsets");
  }
  Napi::Array offsets = info[1].As<Napi::Array>();
  uint32_t n = offsets.Length();
  if (n > kMaxPageQueries) {
    ThrowArg(env, ArgError::kRange, Fmt("The \"offsets\" argument must have at most %u entries", kMaxPageQueries));
  }
  const size_t size = ab.ByteLength();
  char* const base = static_cast<char*>(ab.Data());
  std::vector<void*> pages(n);
  for (uint32_t i = 0; i < n; i++) {
    // Element reads may run getters (JavaScript) that release the mapping or worse; the values
    // are all checked first, and the pointers only ever reach the kernel, which answers -EFAULT
    // in the status of a page that is no longer mapped.
    Napi::Value v = offsets.Get(i);
    uint64_t off;
    double d;
    bool lossless = false;
    if (v.IsNumber()) {
      d = v.As<Napi::Number>().DoubleValue();
      if (!(d >= 0 && d < static_cast<double>(size)) || static_cast<double>(static_cast<uint64_t>(d)) != d) {
        ThrowArg(env, ArgError::kRange,
                 Fmt("offsets[%u] must be an integer offset within the mapping (length 0x%zx)", i, size));
      }
      off = static_cast<uint64_t>(d);
    } else if (v.IsBigInt()) {
      off = v.As<Napi::BigInt>().Uint64Value(&lossless);
      if (!lossless || off >= size) {
        ThrowArg(env, ArgError::kRange,
                 Fmt("offsets[%u] must be an offset within the mapping (length 0x%zx)", i, size));
      }
    } else {
      ThrowArg(env, ArgError::kType, Fmt("offsets[%u] must be a number or a bigint", i));
    }
    pages[i] = base + off;
  }
  std::vector<int> status(n, 0);
  if (n != 0 &&
      syscall(SYS_move_pages, 0, static_cast<unsigned long>(n), pages.data(), nullptr, status.data(), 0) != 0) {
    ThrowSys(env, errno, "move_pages", nullptr,
             Fmt("pid 0, %u pages of the mapping at %p, query only", n, static_cast<void*>(base)));
  }
  Napi::Array out = Napi::Array::New(env, n);
  for (uint32_t i = 0; i < n; i++) out.Set(i, Napi::Number::New(env, status[i]));
  return out;
}

// mmapProbe(fd, offset, length, prot, flags) -> 0 or errno: mmap(NULL, length, prot, flags, fd,
// offset) exactly as given; a mapping that succeeds is unmapped at once. For observing what the
// kernel accepts (MAP_PRIVATE of a guest_memfd...). MAP_FIXED is refused: at address NULL it
// would replace whatever this process has mapped low (the node binary itself).
static Napi::Value MmapProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOff(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  // Bit sets: read as u32 (every PROT_* and MAP_* bit is below bit 31) and passed on as int.
  const int prot = static_cast<int>(ArgU32(info, 3, "prot"));
  const int flags = static_cast<int>(ArgU32(info, 4, "flags"));
  if (length > limits::kMaxMappingLength) ThrowArg(env, ArgError::kRange, "The \"length\" argument must be <= 4 GiB");
  if (flags & MAP_FIXED) ThrowArg(env, ArgError::kRange, "The \"flags\" argument must not contain MAP_FIXED");
  void* p = mmap(nullptr, static_cast<size_t>(length), prot, flags, fd, offset);
  if (p == MAP_FAILED) return Napi::Number::New(env, errno);
  munmap(p, static_cast<size_t>(length));
  return Napi::Number::New(env, 0);
}

void InitMm(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"madvise", Madvise},
                   {"mbind", Mbind},
                   {"getMempolicy", GetMempolicy},
                   {"pageNodes", PageNodes},
                   {"mmapProbe", MmapProbe}});
}

}  // namespace kg
