// Shared mappings exposed to JavaScript without copying: an external ArrayBuffer whose
// backing store is the mmap()ed range itself.
//
// Every live mapping is recorded here. munmap() only acts on an ArrayBuffer whose data
// pointer and length match a live record, so JavaScript can never make the addon unmap
// memory it did not map. After munmap the ArrayBuffer is detached, so no JS view can touch
// the range again. If JS drops a mapping without unmapping it, the ArrayBuffer's finalizer
// unmaps it (a safety net; lib/ unmaps explicitly on close/dispose).
#include <sys/mman.h>

#include <cerrno>
#include <cinttypes>
#include <mutex>
#include <unordered_map>

#include "args.h"
#include "objects.h"

namespace kg {
namespace {

struct MapRecord {
  void* addr;
  size_t length;
  bool live;
};

std::mutex g_mu;
std::unordered_map<void*, MapRecord*> g_live;  // addr -> record, for live mappings only

void FinalizeMapping(Napi::Env, void*, MapRecord* rec) {
  {
    std::lock_guard<std::mutex> lk(g_mu);
    if (rec->live) {
      munmap(rec->addr, rec->length);
      g_live.erase(rec->addr);
    }
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

// Node 20 caps an ArrayBuffer at 4 GiB (buffer.constants.MAX_LENGTH); larger mappings
// cannot be exposed without copying, so they are refused before mmap().
constexpr uint64_t kMaxExposed = 1ull << 32;

size_t ArgLength(const Napi::CallbackInfo& info, size_t i) {
  uint64_t length = ArgU64(info, i, "length");
  if (length == 0 || length > kMaxExposed) {
    throw Napi::RangeError::New(info.Env(),
                                "The \"length\" argument must be > 0 and <= 4 GiB (the largest "
                                "ArrayBuffer Node allows)");
  }
  return static_cast<size_t>(length);
}

}  // namespace

// mmap(NULL, length, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset) -> { buffer, address }.
static Napi::Value MapShared(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOff(info, 1, "offset");
  size_t length = ArgLength(info, 2);
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) {
    ThrowSys(info.Env(), errno, "mmap", nullptr,
             Fmt("fd %d, offset=0x%" PRIx64 ", length=0x%zx, PROT_READ|PROT_WRITE, MAP_SHARED", fd,
                 static_cast<uint64_t>(offset), length));
  }
  return Expose(info.Env(), p, length);
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

// The ArrayBuffer argument, checked to be a live mapping of ours: its data pointer and length
// must match a record. Anything else (a plain ArrayBuffer, a detached one) is a TypeError.
static Napi::ArrayBuffer LiveBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) {
    throw Napi::TypeError::New(env, "The \"buffer\" argument must be an ArrayBuffer");
  }
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  bool known;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_live.find(ab.Data());
    known = ab.Data() != nullptr && it != g_live.end() && it->second->length == ab.ByteLength();
  }
  if (!known) throw Napi::TypeError::New(env, "The \"buffer\" argument is not a live kvm-gmem mapping");
  return ab;
}

// munmap(buffer): only for a buffer that MapShared/MapAnonymous returned and that is still
// mapped. Detaches the buffer so every view over it reads as length 0 afterwards.
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
    if (munmap(addr, length) != 0) {
      err = errno;
    } else {
      auto it = g_live.find(addr);
      it->second->live = false;
      g_live.erase(it);
    }
  }
  if (err != 0) ThrowSys(env, err, "munmap", nullptr, Fmt("address=%p, length=0x%zx", addr, length));
  ab.Detach();
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
  exports.Set("mapShared", Napi::Function::New(env, MapShared, "mapShared"));
  exports.Set("mapAnonymous", Napi::Function::New(env, MapAnonymous, "mapAnonymous"));
  exports.Set("mincore", Napi::Function::New(env, Mincore, "mincore"));
  exports.Set("unmap", Napi::Function::New(env, Unmap, "unmap"));
}

}  // namespace kg
