// The VM fd: guest_memfd creation and memslots (legacy and region2).
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>

#include "args.h"
#include "objects.h"
#include "uapi.h"

namespace kg {

// KVM_CREATE_GUEST_MEMFD. The kernel creates the file without O_CLOEXEC (there is no flag
// for it in the struct), so set FD_CLOEXEC at once: a child spawned later must never
// inherit guest memory. If that fails the fd is closed, never handed out half-set.
static Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  kvm_create_guest_memfd args{};
  args.size = ArgU64(info, 1, "size");
  args.flags = ArgU64(info, 2, "flags");
  int fd = ioctl(vmfd, KVM_CREATE_GUEST_MEMFD, &args);
  if (fd < 0) {
    ThrowSys(info.Env(), errno, "ioctl", "KVM_CREATE_GUEST_MEMFD",
             Fmt("vm fd %d, size=%" PRIu64 ", flags=0x%" PRIx64, vmfd, args.size, args.flags));
  }
  // FD_CLOEXEC is the only fd flag, so it is set outright (no F_GETFD round trip).
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    int err = errno;
    close(fd);
    ThrowSys(info.Env(), err, "fcntl", nullptr, Fmt("guest_memfd %d, F_SETFD FD_CLOEXEC", fd));
  }
  return Napi::Number::New(info.Env(), fd);
}

// KVM_SET_USER_MEMORY_REGION2(vmFd, slot, flags, gpa, size, userspaceAddr, gmemOffset, gmemFd).
// A size of 0 deletes the slot. gmemFd is passed through unchecked on purpose: the kernel's
// answer for a foreign fd (EINVAL) or a closed one (EBADF) is what callers test for.
static Napi::Value SetUserMemoryRegion2(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  kvm_userspace_memory_region2 r{};
  r.slot = ArgU32(info, 1, "slot");
  r.flags = ArgU32(info, 2, "flags");
  r.guest_phys_addr = ArgU64(info, 3, "guestPhysAddr");
  r.memory_size = ArgU64(info, 4, "memorySize");
  r.userspace_addr = ArgU64(info, 5, "userspaceAddr");
  r.guest_memfd_offset = ArgU64(info, 6, "guestMemfdOffset");
  r.guest_memfd = ArgU32(info, 7, "guestMemfd");
  if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION2, &r) != 0) {
    ThrowSys(info.Env(), errno, "ioctl", "KVM_SET_USER_MEMORY_REGION2",
             Fmt("vm fd %d, slot=%u, flags=0x%x, guest_phys_addr=0x%" PRIx64
                 ", memory_size=0x%" PRIx64 ", userspace_addr=0x%" PRIx64
                 ", guest_memfd=%u, guest_memfd_offset=0x%" PRIx64,
                 vmfd, r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr,
                 r.guest_memfd, r.guest_memfd_offset));
  }
  return info.Env().Undefined();
}

// KVM_SET_USER_MEMORY_REGION(vmFd, slot, flags, gpa, size, userspaceAddr): the legacy call.
static Napi::Value SetUserMemoryRegion(const Napi::CallbackInfo& info) {
  int vmfd = ArgFd(info, 0, "vmFd");
  kvm_userspace_memory_region r{};
  r.slot = ArgU32(info, 1, "slot");
  r.flags = ArgU32(info, 2, "flags");
  r.guest_phys_addr = ArgU64(info, 3, "guestPhysAddr");
  r.memory_size = ArgU64(info, 4, "memorySize");
  r.userspace_addr = ArgU64(info, 5, "userspaceAddr");
  if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r) != 0) {
    ThrowSys(info.Env(), errno, "ioctl", "KVM_SET_USER_MEMORY_REGION",
             Fmt("vm fd %d, slot=%u, flags=0x%x, guest_phys_addr=0x%" PRIx64
                 ", memory_size=0x%" PRIx64 ", userspace_addr=0x%" PRIx64,
                 vmfd, r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr));
  }
  return info.Env().Undefined();
}

void InitVm(Napi::Env env, Napi::Object exports) {
  exports.Set("createGuestMemfd", Napi::Function::New(env, CreateGuestMemfd, "createGuestMemfd"));
  exports.Set("setUserMemoryRegion2",
              Napi::Function::New(env, SetUserMemoryRegion2, "setUserMemoryRegion2"));
  exports.Set("setUserMemoryRegion",
              Napi::Function::New(env, SetUserMemoryRegion, "setUserMemoryRegion"));
}

}  // namespace kg
