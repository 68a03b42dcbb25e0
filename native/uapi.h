// The KVM uapi this addon needs, defined here rather than taken from <linux/kvm.h>:
// build hosts often carry kernel headers older than guest_memfd (Debian 12's predate it),
// while the running kernel has it. Everything lives in namespace kg so that a newer
// system header can be included beside this one without clashes. The ioctl numbers are pinned
// below to the values the kernel's header produces.
//
// Values follow include/uapi/linux/kvm.h of Linux 6.18 (x86_64).
#pragma once

#include <cstddef>
#include <cstdint>
#include <linux/ioctl.h>

namespace kg {

constexpr unsigned int KVMIO = 0xAE;

// System ioctls (on /dev/kvm).
constexpr unsigned long KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
constexpr unsigned long KVM_CREATE_VM = _IO(KVMIO, 0x01);
constexpr unsigned long KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
constexpr unsigned long KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);

// The legacy memslot call (KVM_CAP_USER_MEMORY).
struct kvm_userspace_memory_region {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
};
static_assert(sizeof(kvm_userspace_memory_region) == 32, "kvm_userspace_memory_region size");
static_assert(offsetof(kvm_userspace_memory_region, slot) == 0, "slot offset");
static_assert(offsetof(kvm_userspace_memory_region, flags) == 4, "flags offset");
static_assert(offsetof(kvm_userspace_memory_region, guest_phys_addr) == 8, "gpa offset");
static_assert(offsetof(kvm_userspace_memory_region, memory_size) == 16, "size offset");
static_assert(offsetof(kvm_userspace_memory_region, userspace_addr) == 24, "uaddr offset");
constexpr unsigned long KVM_SET_USER_MEMORY_REGION =
    _IOW(KVMIO, 0x46, kvm_userspace_memory_region);

// KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2, Linux 6.8).
struct kvm_userspace_memory_region2 {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t guest_memfd_offset;
  uint32_t guest_memfd;
  uint32_t pad1;
  uint64_t pad2[14];
};
static_assert(sizeof(kvm_userspace_memory_region2) == 160, "kvm_userspace_memory_region2 size");
static_assert(offsetof(kvm_userspace_memory_region2, slot) == 0, "slot offset");
static_assert(offsetof(kvm_userspace_memory_region2, flags) == 4, "flags offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_phys_addr) == 8, "gpa offset");
static_assert(offsetof(kvm_userspace_memory_region2, memory_size) == 16, "size offset");
static_assert(offsetof(kvm_userspace_memory_region2, userspace_addr) == 24, "uaddr offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd_offset) == 32, "offset offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd) == 40, "guest_memfd offset");
static_assert(offsetof(kvm_userspace_memory_region2, pad1) == 44, "pad1 offset");
static_assert(offsetof(kvm_userspace_memory_region2, pad2) == 48, "pad2 offset");
constexpr unsigned long KVM_SET_USER_MEMORY_REGION2 =
    _IOW(KVMIO, 0x49, kvm_userspace_memory_region2);

// Memslot flags.
constexpr uint32_t KVM_MEM_LOG_DIRTY_PAGES = 1u << 0;
constexpr uint32_t KVM_MEM_READONLY = 1u << 1;
constexpr uint32_t KVM_MEM_GUEST_MEMFD = 1u << 2;

// KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD, Linux 6.8).
struct kvm_create_guest_memfd {
  uint64_t size;
  uint64_t flags;
  uint64_t reserved[6];
};
static_assert(sizeof(kvm_create_guest_memfd) == 64, "kvm_create_guest_memfd size");
static_assert(offsetof(kvm_create_guest_memfd, size) == 0, "size offset");
static_assert(offsetof(kvm_create_guest_memfd, flags) == 8, "flags offset");
static_assert(offsetof(kvm_create_guest_memfd, reserved) == 16, "reserved offset");
constexpr unsigned long KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xd4, kvm_create_guest_memfd);

// guest_memfd creation flags (KVM_CAP_GUEST_MEMFD_FLAGS, Linux 6.18).
constexpr uint64_t GUEST_MEMFD_FLAG_MMAP = 1ull << 0;
constexpr uint64_t GUEST_MEMFD_FLAG_INIT_SHARED = 1ull << 1;

// Capability numbers this addon's callers name (see lib/constants.ts for the full list).
constexpr long KVM_CAP_USER_MEMORY2 = 231;
constexpr long KVM_CAP_GUEST_MEMFD = 234;
constexpr long KVM_CAP_GUEST_MEMFD_FLAGS = 244;

// The ioctl numbers were computed from the struct sizes above; pin them to the values the
// kernel's header produces on x86_64, so a wrong struct can never yield a plausible request.
static_assert(KVM_CREATE_GUEST_MEMFD == 0xc040aed4ul, "KVM_CREATE_GUEST_MEMFD number");
static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40a0ae49ul, "KVM_SET_USER_MEMORY_REGION2 number");
static_assert(KVM_SET_USER_MEMORY_REGION == 0x4020ae46ul, "KVM_SET_USER_MEMORY_REGION number");

}  // namespace kg
