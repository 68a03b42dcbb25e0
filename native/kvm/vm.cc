// The VM fd: guest_memfd creation, memslots (legacy and region2), memory attributes, capabilities.
#include <sys/ioctl.h>

#include <cerrno>
#include <cinttypes>

#include "addon.h"
#include "core/fd.h"
#include "core/private_fd.h"
#include "uapi/kvm.h"
#include "util/args.h"
#include "util/errors.h"

namespace kg {

struct GuestMemfdCall {
  int vmfd;
  kvm_create_guest_memfd args;
};

static int IoctlCreateGuestMemfd(void* p) {
  auto* c = static_cast<GuestMemfdCall*>(p);
  return ioctl(c->vmfd, KVM_CREATE_GUEST_MEMFD, &c->args);
}

// KVM_CREATE_GUEST_MEMFD. The kernel creates the file without O_CLOEXEC (there is no flag for
// it in the struct), and setting FD_CLOEXEC afterwards would leave it open to a child forked
// from another thread meanwhile: so the ioctl runs where no fork can see it (private_fd.cc) and
// the fd arrives close-on-exec.
static Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  GuestMemfdCall c{};
  c.vmfd = ArgFd(info, 0, "vmFd");
  c.args.size = ArgU64(info, 1, "size");
  c.args.flags = ArgU64(info, 2, "flags");
  FdError e;
  int fd = CreateFdPrivately(c.vmfd, IoctlCreateGuestMemfd, &c, &e);
  if (fd < 0) {
    std::string detail = Fmt("vm fd %d, size=%" PRIu64 ", flags=0x%" PRIx64, c.vmfd, c.args.size, c.args.flags);
    if (e.syscall == nullptr) ThrowSys(info.Env(), e.err, "ioctl", "KVM_CREATE_GUEST_MEMFD", detail);
    // The machinery around the ioctl failed (no thread, no memory): named for what it was doing.
    ThrowSys(info.Env(), e.err, e.syscall, nullptr, "a private fd table for KVM_CREATE_GUEST_MEMFD: " + detail);
  }
  return NewFd(info.Env(), fd);
}

// The fields both memslot calls share, from arguments 1-5 (argument 0 is the VM fd).
template <typename Region>
static Region ArgRegion(const Napi::CallbackInfo& info) {
  Region r{};
  r.slot = ArgU32(info, 1, "slot");
  r.flags = ArgU32(info, 2, "flags");
  r.guest_phys_addr = ArgU64(info, 3, "guestPhysAddr");
  r.memory_size = ArgU64(info, 4, "memorySize");
  r.userspace_addr = ArgU64(info, 5, "userspaceAddr");
  return r;
}

template <typename Region>
static std::string RegionDetail(int vmfd, const Region& r) {
  return Fmt("vm fd %d, slot=%u, flags=0x%x, guest_phys_addr=0x%" PRIx64 ", memory_size=0x%" PRIx64
             ", userspace_addr=0x%" PRIx64,
             vmfd, r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr);
}

// KVM_SET_USER_MEMORY_REGION2(vmFd, slot, flags, gpa, size, userspaceAddr, gmemOffset, gmemFd).
// A size of 0 deletes the slot. gmemFd is passed through unchecked on purpose: the kernel's
// answer for a foreign fd (EINVAL) or a closed one (EBADF) is what callers test for.
static Napi::Value SetUserMemoryRegion2(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  auto r = ArgRegion<kvm_userspace_memory_region2>(info);
  r.guest_memfd_offset = ArgU64(info, 6, "guestMemfdOffset");
  r.guest_memfd = ArgU32(info, 7, "guestMemfd");
  if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION2, &r) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "ioctl", "KVM_SET_USER_MEMORY_REGION2",
             RegionDetail(vmfd, r) +
                 Fmt(", guest_memfd=%u, guest_memfd_offset=0x%" PRIx64, r.guest_memfd, r.guest_memfd_offset));
  }
  return info.Env().Undefined();
}

// KVM_SET_USER_MEMORY_REGION(vmFd, slot, flags, gpa, size, userspaceAddr): the legacy call.
static Napi::Value SetUserMemoryRegion(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  auto r = ArgRegion<kvm_userspace_memory_region>(info);
  if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "ioctl", "KVM_SET_USER_MEMORY_REGION", RegionDetail(vmfd, r));
  }
  return info.Env().Undefined();
}

// KVM_SET_MEMORY_ATTRIBUTES(vmFd, gpa, size, attributes, flags). Every value goes to the kernel
// as given: which attributes a VM takes, and the alignment, are the kernel's to judge (EINVAL).
static Napi::Value SetMemoryAttributes(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  kvm_memory_attributes a{};
  a.address = ArgU64(info, 1, "gpa");
  a.size = ArgU64(info, 2, "size");
  a.attributes = ArgU64(info, 3, "attributes");
  a.flags = ArgU64(info, 4, "flags");
  if (ioctl(vmfd, KVM_SET_MEMORY_ATTRIBUTES, &a) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "ioctl", "KVM_SET_MEMORY_ATTRIBUTES",
             Fmt("vm fd %d, address=0x%" PRIx64 ", size=0x%" PRIx64 ", attributes=0x%" PRIx64 ", flags=0x%" PRIx64,
                 vmfd, a.address, a.size, a.attributes, a.flags));
  }
  return info.Env().Undefined();
}

// KVM_ENABLE_CAP(fd, cap, flags, a0, a1, a2, a3) on a VM or vCPU fd (the kernel decides which
// capabilities each takes).
static Napi::Value EnableCap(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  kvm_enable_cap c{};
  c.cap = ArgU32(info, 1, "cap");
  c.flags = ArgU32(info, 2, "flags");
  for (size_t i = 0; i < 4; i++) {
    static const char* const names[] = {"a0", "a1", "a2", "a3"};
    c.args[i] = ArgU64(info, 3 + i, names[i]);
  }
  if (ioctl(fd, KVM_ENABLE_CAP, &c) != 0) {
    int err = errno;  // before Fmt, which may change it
    ThrowSys(info.Env(), err, "ioctl", "KVM_ENABLE_CAP",
             Fmt("fd %d, cap=%u, flags=0x%x, args=[0x%" PRIx64 ", 0x%" PRIx64 ", 0x%" PRIx64 ", 0x%" PRIx64 "]", fd,
                 c.cap, c.flags, c.args[0], c.args[1], c.args[2], c.args[3]));
  }
  return info.Env().Undefined();
}

void InitVm(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"createGuestMemfd", CreateGuestMemfd},
                   {"setUserMemoryRegion2", SetUserMemoryRegion2},
                   {"setUserMemoryRegion", SetUserMemoryRegion},
                   {"setMemoryAttributes", SetMemoryAttributes},
                   {"enableCap", EnableCap}});
}

}  // namespace kg
