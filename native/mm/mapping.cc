// Shared mappings exposed to JavaScript without copying: an external ArrayBuffer whose
// backing store is the mmap()ed range itself.
//
// Every live mapping is recorded here. Release (unmap) only acts on an ArrayBuffer whose data
// pointer and length match a live record, so JavaScript can never make the addon unmap memory it
// did not map.
//
// Releasing does not munmap() at once: a job on the libuv pool (crypto.randomFill, zlib, fs) may
// still hold a raw pointer into the buffer, and would fault on an unmapped range. Instead the
// range is replaced in place (MAP_FIXED) by private anonymous memory: the file is no longer
// mapped from that moment, and late writers land in harmless memory. The address range itself is
// unmapped by the ArrayBuffer's finalizer, once nothing in JavaScript (or a pending job, which
// holds the buffer object) can reach it. The same finalizer is the safety net for mappings that
// are dropped without being released.
#include "mm/mapping.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <mutex>
#include <string>
#include <unordered_map>

#include "addon.h"
#include "util/args.h"
#include "util/errors.h"
#include "util/limits.h"

namespace kg {
namespace {

struct MapRecord {
  void* addr;
  size_t length;
  bool live;  // still maps the file; false once released (a placeholder until finalized)
};

std::mutex g_mu;
std::unordered_map<void*, MapRecord*> g_live;  // addr -> record, for live mappings only

void FinalizeMapping(Napi::Env, void*, MapRecord* rec) {
  {
    std::lock_guard<std::mutex> lk(g_mu);
    if (rec->live) g_live.erase(rec->addr);
    munmap(rec->addr, rec->length);  // the file mapping, or the placeholder left by a release
  }
  delete rec;
}

// Wraps a fresh mapping in an ArrayBuffer; on failure the mapping is undone.
Napi::Value Expose(Napi::Env env, void* addr, size_t length) {
  auto* rec = new MapRecord{addr, length, true};
  Napi::ArrayBuffer ab;
  try {
    ab = Napi::ArrayBuffer::New(env, addr, length, FinalizeMapping, rec);
  } catch (...) {
    munmap(addr, length);
    delete rec;
    throw;
  }
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_live[addr] = rec;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("buffer", ab);
  o.Set("address", U64(env, reinterpret_cast<uintptr_t>(addr)));
  return o;
}

// A longer mapping cannot be exposed without copying, so it is refused before mmap().
size_t ArgLength(const Napi::CallbackInfo& info, size_t i) {
  uint64_t length = ArgU64(info, i, "length");
  if (length == 0 || length > limits::kMaxMappingLength) {
    ThrowArg(info.Env(), ArgError::kRange,
             "The \"length\" argument must be > 0 and <= 4 GiB (the largest "
             "ArrayBuffer Node allows)");
  }
  return static_cast<size_t>(length);
}

}  // namespace

// See mapping.h.
Napi::ArrayBuffer LiveBuffer(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsArrayBuffer()) {
    ThrowArg(env, ArgError::kType, "The \"buffer\" argument must be an ArrayBuffer");
  }
  Napi::ArrayBuffer ab = info[i].As<Napi::ArrayBuffer>();
  bool known;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_live.find(ab.Data());
    known = ab.Data() != nullptr && it != g_live.end() && it->second->length == ab.ByteLength();
  }
  if (!known) ThrowArg(env, ArgError::kValue, "The \"buffer\" argument is not a live kvm-gmem mapping");
  return ab;
}

LiveRange ArgLiveRange(const Napi::CallbackInfo& info) {
  Napi::ArrayBuffer ab = LiveBuffer(info, 0);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  return LiveRange{ab, offset, length};
}

void CheckRange(Napi::Env env, uint64_t offset, uint64_t length, size_t size) {
  if (offset > size || length > size - offset) {
    ThrowArg(env, ArgError::kRange,
             Fmt("The range [offset 0x%" PRIx64 ", length 0x%" PRIx64 ") is outside the mapping "
                 "(length 0x%zx)",
                 offset, length, size));
  }
}

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000  // Linux 4.17; older C libraries lack the name
#endif

// mapShared's flags (a u32; lib names them in MapSharedFlag).
constexpr uint32_t kMapBeyondEnd = 1u << 0;  // skip the end-of-file check below
constexpr uint32_t kMapKnownFlags = kMapBeyondEnd;

// How many times MapShared looks for an aligned free range before giving up (each attempt only
// fails when another thread maps into the range it found, between finding and mapping it).
constexpr int kAlignAttempts = 16;

// mmap(NULL, length, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset) -> { buffer, address }.
//
// mapShared(fd, offset, length, flags = 0, align = 0):
// - By default a range past the end of the file is refused before mmap(): a host access there
//   raises SIGBUS. With kMapBeyondEnd the check is skipped; such a mapping must only be touched
//   through the guarded accessors (guarded.cc).
// - align (0: none; else a power of two in [page size, 1 GiB]) places the mapping at an address
//   that is a multiple of it, as the kernel selftests do for huge pages (a PMD-aligned address):
//   find a free range of length + align (a PROT_NONE reservation, released at once), and map the
//   file at the aligned address inside it with MAP_FIXED_NOREPLACE, which never replaces
//   anything. If another thread mapped into the range meanwhile (EEXIST), look again.
//
//   The file is never mapped with MAP_FIXED over a reservation: when such an mmap fails after the
//   kernel has already cleared the range (ENODEV from a guest_memfd's ->mmap without
//   GUEST_MEMFD_FLAG_MMAP, for one), the range is left a hole; another thread can map its own
//   memory into it before the reservation is unmapped, and unmapping the reservation then
//   destroys that memory. A failed MAP_FIXED_NOREPLACE leaves nothing behind.
static Napi::Value MapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOff(info, 1, "offset");
  size_t length = ArgLength(info, 2);
  uint32_t flags = info.Length() > 3 && !info[3].IsUndefined() ? ArgU32(info, 3, "flags") : 0;
  uint64_t align = info.Length() > 4 && !info[4].IsUndefined() ? ArgU64(info, 4, "align") : 0;
  if ((flags & ~kMapKnownFlags) != 0) {
    ThrowArg(env, ArgError::kRange, Fmt("The \"flags\" argument has unknown bits 0x%x", flags & ~kMapKnownFlags));
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (align != 0 && (align < page || align > limits::kMaxMapAlign || (align & (align - 1)) != 0)) {
    ThrowArg(env, ArgError::kRange,
             Fmt("The \"align\" argument must be 0 or a power of two in [0x%" PRIx64 ", 1 GiB]; "
                 "received 0x%" PRIx64,
                 page, align));
  }
  if ((flags & kMapBeyondEnd) == 0) {
    // A host access past the end of the file raises SIGBUS; refuse such a range up front.
    struct stat st;
    if (fstat(fd, &st) != 0) ThrowSys(env, errno, "fstat", nullptr, Fmt("fd %d", fd));
    if (static_cast<uint64_t>(offset) + length > static_cast<uint64_t>(st.st_size)) {
      ThrowArg(env, ArgError::kRange,
               Fmt("The range [0x%" PRIx64 ", 0x%" PRIx64 ") extends past the end of the file "
                   "(size 0x%" PRIx64 "); a host access there would raise SIGBUS",
                   static_cast<uint64_t>(offset), static_cast<uint64_t>(offset) + length,
                   static_cast<uint64_t>(st.st_size)));
    }
  }
  const std::string what = Fmt("fd %d, offset=0x%" PRIx64 ", length=0x%zx, PROT_READ|PROT_WRITE, MAP_SHARED", fd,
                               static_cast<uint64_t>(offset), length);
  if (align == 0) {
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
    if (p == MAP_FAILED) ThrowSys(env, errno, "mmap", nullptr, what);
    return Expose(env, p, length);
  }
  // Room for `length` at any address that is a multiple of align.
  const size_t reserve = static_cast<size_t>(((length + page - 1) & ~(page - 1)) + align);
  for (int attempt = 0; attempt < kAlignAttempts; attempt++) {
    void* r = mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
      ThrowSys(env, errno, "mmap", nullptr,
               Fmt("anonymous PROT_NONE reservation, length=0x%zx (align 0x%" PRIx64 ")", reserve, align));
    }
    const uintptr_t at = (reinterpret_cast<uintptr_t>(r) + align - 1) & ~static_cast<uintptr_t>(align - 1);
    // The whole reservation is one mapping of ours: unmapping it needs no split and cannot fail
    // for want of memory. Should it fail anyway, it is left in place (address space, no memory).
    if (munmap(r, reserve) != 0) {
      ThrowSys(env, errno, "munmap", nullptr, Fmt("the PROT_NONE reservation at %p, length=0x%zx", r, reserve));
    }
    void* p =
        mmap(reinterpret_cast<void*>(at), length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, offset);
    if (p == MAP_FAILED) {
      if (errno == EEXIST) continue;  // another thread took part of the range: look again
      ThrowSys(env, errno, "mmap", nullptr,
               what + Fmt(", MAP_FIXED_NOREPLACE at %p (align 0x%" PRIx64 ")", reinterpret_cast<void*>(at), align));
    }
    // A kernel older than 4.17 takes MAP_FIXED_NOREPLACE as a hint, and may map elsewhere.
    if ((reinterpret_cast<uintptr_t>(p) & (align - 1)) == 0) return Expose(env, p, length);
    munmap(p, length);
  }
  ThrowSys(env, EEXIST, "mmap", nullptr,
           what + Fmt(": no free range aligned to 0x%" PRIx64 " stayed free for long enough (%d attempts)", align,
                      kAlignAttempts));
}

// mmap(NULL, length, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS) -> { buffer, address }:
// ordinary memory for legacy memslots and for comparisons.
static Napi::Value MapAnonymous(const Napi::CallbackInfo& info) {
  size_t length = ArgLength(info, 0);
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    ThrowSys(info.Env(), errno, "mmap", nullptr,
             Fmt("anonymous, length=0x%zx, PROT_READ|PROT_WRITE, MAP_PRIVATE", length));
  }
  return Expose(info.Env(), p, length);
}

// unmap(buffer): releases a live mapping that MapShared/MapAnonymous returned. The file is
// unmapped at once (the range becomes private anonymous memory, see the top of this file);
// the address range is freed when the buffer is garbage-collected.
static Napi::Value Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = LiveBuffer(info);
  void* addr = ab.Data();
  size_t length = ab.ByteLength();
  // Nothing that can run JavaScript (and so a finalizer that takes g_mu) happens under the lock.
  // The record cannot go away meanwhile: its finalizer needs `ab`, which is alive here.
  int err = 0;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    void* p =
        mmap(addr, length, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      err = errno;
    } else {
      auto it = g_live.find(addr);
      it->second->live = false;
      g_live.erase(it);
    }
  }
  if (err != 0) {
    ThrowSys(env, err, "mmap", nullptr,
             Fmt("address=%p, length=0x%zx, MAP_FIXED|MAP_PRIVATE|MAP_ANONYMOUS (release)", addr, length));
  }
  return env.Undefined();
}

// mincore(buffer) -> Uint8Array, one byte per page: 1 where the page is resident. For a
// guest_memfd mapping that is a page the file holds up to date: faulted in by a host or guest
// access (pages only reserved by fallocate, not yet touched, count as 0), and gone again once
// punched.
static Napi::Value Mincore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = LiveBuffer(info);
  size_t length = ab.ByteLength();
  size_t pages = (length + 4095) / 4096;
  Napi::Uint8Array out = Napi::Uint8Array::New(env, pages);
  if (mincore(ab.Data(), length, out.Data()) != 0) {
    ThrowSys(env, errno, "mincore", nullptr, Fmt("address=%p, length=0x%zx", ab.Data(), length));
  }
  for (size_t i = 0; i < pages; i++) out[i] &= 1;
  return out;
}

void InitMapping(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"mapShared", MapShared}, {"mapAnonymous", MapAnonymous}, {"mincore", Mincore}, {"unmap", Unmap}});
}

}  // namespace kg
