// CPUID tables: what KVM can offer (KVM_GET_SUPPORTED_CPUID on /dev/kvm) and what one vCPU
// shows its guest (KVM_SET_CPUID2 / KVM_GET_CPUID2). Entries cross into JavaScript as the
// kernel's struct kvm_cpuid_entry2 bytes, 40 per entry; lib names the fields. And the host CPU's
// own CPUID, which KVM's tables are derived from (vendor, physical address bits).
#include <cpuid.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "addon.h"
#include "uapi/kvm.h"
#include "util/args.h"
#include "util/errors.h"

namespace kg {

namespace {

// A kvm_cpuid2 header followed by room for `n` entries, as one 8-byte-aligned buffer.
std::vector<uint64_t> CpuidBuffer(uint32_t n) {
  size_t bytes = sizeof(kvm_cpuid2) + size_t{n} * sizeof(kvm_cpuid_entry2);
  std::vector<uint64_t> buf((bytes + 7) / 8, 0);
  reinterpret_cast<kvm_cpuid2*>(buf.data())->nent = n;
  return buf;
}

Napi::Value EntriesOf(Napi::Env env, const std::vector<uint64_t>& buf) {
  auto* head = reinterpret_cast<const kvm_cpuid2*>(buf.data());
  // Never more than the buffer holds, whatever the kernel wrote into nent.
  uint32_t n = head->nent < KVM_MAX_CPUID_ENTRIES ? head->nent : KVM_MAX_CPUID_ENTRIES;
  size_t bytes = size_t{n} * sizeof(kvm_cpuid_entry2);
  Napi::Uint8Array out = Napi::Uint8Array::New(env, bytes);
  if (bytes > 0) memcpy(out.Data(), reinterpret_cast<const uint8_t*>(buf.data()) + sizeof(kvm_cpuid2), bytes);
  return out;
}

// A GET ioctl on a table: asks with the kernel's maximum, so one call is enough (E2BIG then
// means the kernel's maximum grew past ours, and is reported as it is).
Napi::Value GetTable(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  int fd = ArgFd(info, 0, "fd");
  std::vector<uint64_t> buf = CpuidBuffer(KVM_MAX_CPUID_ENTRIES);
  if (ioctl(fd, request, buf.data()) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "ioctl", name, Fmt("fd %d", fd));
  }
  return EntriesOf(info.Env(), buf);
}

}  // namespace

// getSupportedCpuid(kvmFd) -> entry bytes.
static Napi::Value GetSupportedCpuid(const Napi::CallbackInfo& info) {
  return GetTable(info, KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID");
}

// getCpuid2(vcpuFd) -> entry bytes (none before KVM_SET_CPUID2).
static Napi::Value GetCpuid2(const Napi::CallbackInfo& info) {
  return GetTable(info, KVM_GET_CPUID2, "KVM_GET_CPUID2");
}

// setCpuid2(vcpuFd, entryBytes): a whole number of entries, at most KVM_MAX_CPUID_ENTRIES.
static Napi::Value SetCpuid2(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array entries = ArgBytes(info, 1, "entries");
  size_t len = entries.ByteLength();
  if (len % sizeof(kvm_cpuid_entry2) != 0 || len / sizeof(kvm_cpuid_entry2) > KVM_MAX_CPUID_ENTRIES) {
    ThrowArg(info.Env(), ArgError::kRange,
             Fmt("The \"entries\" argument must be a whole number of %zu-byte "
                 "entries, at most %u (got %zu bytes)",
                 sizeof(kvm_cpuid_entry2), KVM_MAX_CPUID_ENTRIES, len));
  }
  uint32_t n = static_cast<uint32_t>(len / sizeof(kvm_cpuid_entry2));
  std::vector<uint64_t> buf = CpuidBuffer(n);
  if (len > 0) memcpy(reinterpret_cast<uint8_t*>(buf.data()) + sizeof(kvm_cpuid2), entries.Data(), len);
  if (ioctl(fd, KVM_SET_CPUID2, buf.data()) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "ioctl", "KVM_SET_CPUID2", Fmt("vcpu fd %d, %u entries", fd, n));
  }
  return info.Env().Undefined();
}

// hostCpuid(leaf, subleaf) -> Uint32Array [eax, ebx, ecx, edx] of the CPU this thread runs on.
// The upstream selftests compute the guest's largest GPA from the host's CPUID (vendor, family,
// MAXPHYADDR), not from KVM's table, so the mirrors need the raw instruction. A leaf above the
// CPU's maximum returns what the CPU returns for it (Intel: the highest basic leaf's values).
static Napi::Value HostCpuid(const Napi::CallbackInfo& info) {
  uint32_t leaf = ArgU32(info, 0, "leaf");
  uint32_t subleaf = ArgU32(info, 1, "subleaf");
  unsigned int a = 0, b = 0, c = 0, d = 0;
  __cpuid_count(leaf, subleaf, a, b, c, d);
  Napi::Uint32Array out = Napi::Uint32Array::New(info.Env(), 4);
  out[0] = a;
  out[1] = b;
  out[2] = c;
  out[3] = d;
  return out;
}

void InitCpuid(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"getSupportedCpuid", GetSupportedCpuid},
                   {"getCpuid2", GetCpuid2},
                   {"setCpuid2", SetCpuid2},
                   {"hostCpuid", HostCpuid}});
}

}  // namespace kg
