// The KVM uapi this addon needs, defined here rather than taken from <linux/kvm.h>:
// build hosts often carry kernel headers older than guest_memfd (Debian 12's predate it),
// while the running kernel has it. Everything lives in namespace kg so that a newer
// system header can be included beside this one without clashes. The ioctl numbers are pinned
// below to the values the kernel's header produces.
//
// Values follow Linux 6.18's uapi header (x86_64):
// https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/include/uapi/linux/kvm.h?h=v6.18
#pragma once

#include <linux/ioctl.h>

#include <cstddef>
#include <cstdint>

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
constexpr unsigned long KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region);

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
constexpr unsigned long KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2);

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

// Capability numbers this addon's callers name (lib's constants list them all).
constexpr long KVM_CAP_USER_MEMORY2 = 231;
constexpr long KVM_CAP_GUEST_MEMFD = 234;
constexpr long KVM_CAP_GUEST_MEMFD_FLAGS = 244;

// The ioctl numbers were computed from the struct sizes above; pin them to the values the
// kernel's header produces on x86_64, so a wrong struct can never yield a plausible request.
static_assert(KVM_CREATE_GUEST_MEMFD == 0xc040aed4ul, "KVM_CREATE_GUEST_MEMFD number");
static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40a0ae49ul, "KVM_SET_USER_MEMORY_REGION2 number");
static_assert(KVM_SET_USER_MEMORY_REGION == 0x4020ae46ul, "KVM_SET_USER_MEMORY_REGION number");

// ---- Private memory (x86_64) ----
// KVM_SET_MEMORY_ATTRIBUTES (VM ioctl, KVM_CAP_MEMORY_ATTRIBUTES, Linux 6.8): overwrites the
// attributes of [address, address + size); the kernel has no "get", so lib keeps its own record.
// https://docs.kernel.org/virt/kvm/api.html#kvm-set-memory-attributes
struct kvm_memory_attributes {
  uint64_t address;
  uint64_t size;
  uint64_t attributes;
  uint64_t flags;
};
static_assert(sizeof(kvm_memory_attributes) == 32, "kvm_memory_attributes size");
static_assert(offsetof(kvm_memory_attributes, address) == 0, "address offset");
static_assert(offsetof(kvm_memory_attributes, size) == 8, "size offset");
static_assert(offsetof(kvm_memory_attributes, attributes) == 16, "attributes offset");
static_assert(offsetof(kvm_memory_attributes, flags) == 24, "flags offset");
constexpr unsigned long KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xd2, kvm_memory_attributes);
constexpr uint64_t KVM_MEMORY_ATTRIBUTE_PRIVATE = 1ull << 3;

// KVM_PRE_FAULT_MEMORY (vCPU ioctl, KVM_CAP_PRE_FAULT_MEMORY, Linux 6.11): gpa/size are in/out,
// the kernel writes the remaining range back whether the call succeeded or not.
// https://docs.kernel.org/virt/kvm/api.html#kvm-pre-fault-memory
struct kvm_pre_fault_memory {
  uint64_t gpa;
  uint64_t size;
  uint64_t flags;
  uint64_t padding[5];
};
static_assert(sizeof(kvm_pre_fault_memory) == 64, "kvm_pre_fault_memory size");
static_assert(offsetof(kvm_pre_fault_memory, gpa) == 0, "gpa offset");
static_assert(offsetof(kvm_pre_fault_memory, size) == 8, "size offset");
static_assert(offsetof(kvm_pre_fault_memory, flags) == 16, "flags offset");
static_assert(offsetof(kvm_pre_fault_memory, padding) == 24, "padding offset");
constexpr unsigned long KVM_PRE_FAULT_MEMORY = _IOWR(KVMIO, 0xd5, kvm_pre_fault_memory);

// KVM_ENABLE_CAP (VM or vCPU ioctl): a capability number and up to four u64 arguments.
struct kvm_enable_cap {
  uint32_t cap;
  uint32_t flags;
  uint64_t args[4];
  uint8_t pad[64];
};
static_assert(sizeof(kvm_enable_cap) == 104, "kvm_enable_cap size");
static_assert(offsetof(kvm_enable_cap, cap) == 0, "cap offset");
static_assert(offsetof(kvm_enable_cap, flags) == 4, "flags offset");
static_assert(offsetof(kvm_enable_cap, args) == 8, "args offset");
static_assert(offsetof(kvm_enable_cap, pad) == 40, "pad offset");
constexpr unsigned long KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, kvm_enable_cap);

constexpr long KVM_CAP_EXIT_HYPERCALL = 201;
constexpr long KVM_CAP_MEMORY_ATTRIBUTES = 233;
constexpr long KVM_CAP_PRE_FAULT_MEMORY = 236;
constexpr uint32_t KVM_X86_SW_PROTECTED_VM = 1;
// KVM_HC_MAP_GPA_RANGE (include/uapi/linux/kvm_para.h) and the KVM_E* codes a guest sees negated
// in RAX after a hypercall.
constexpr uint64_t KVM_HC_MAP_GPA_RANGE = 12;
constexpr uint64_t KVM_EPERM = 1;
constexpr uint64_t KVM_EINVAL = 22;
constexpr uint64_t KVM_ENOSYS = 1000;
// The errno KVM_RUN fails with for a memory fault on poisoned memory (asm-generic/errno.h).
constexpr int KG_EHWPOISON = 133;

static_assert(KVM_SET_MEMORY_ATTRIBUTES == 0x4020aed2ul, "KVM_SET_MEMORY_ATTRIBUTES number");
static_assert(KVM_PRE_FAULT_MEMORY == 0xc040aed5ul, "KVM_PRE_FAULT_MEMORY number");
static_assert(KVM_ENABLE_CAP == 0x4068aea3ul, "KVM_ENABLE_CAP number");
static_assert(KVM_MEMORY_ATTRIBUTE_PRIVATE == 0x8, "KVM_MEMORY_ATTRIBUTE_PRIVATE");
static_assert(KVM_CAP_EXIT_HYPERCALL == 201 && KVM_CAP_MEMORY_ATTRIBUTES == 233 && KVM_CAP_PRE_FAULT_MEMORY == 236,
              "private-memory capability numbers");
static_assert(KVM_HC_MAP_GPA_RANGE == 12 && KVM_EPERM == 1 && KVM_EINVAL == 22 && KVM_ENOSYS == 1000,
              "hypercall numbers");

// ---- vCPUs (x86_64) ----

// VM ioctl: creates vCPU `id`; the fd comes back with O_CLOEXEC set by the kernel.
constexpr unsigned long KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
// vCPU ioctl: enter the guest until the next exit that needs userspace.
constexpr unsigned long KVM_RUN = _IO(KVMIO, 0x80);

// General-purpose registers (KVM_GET_REGS / KVM_SET_REGS).
struct kvm_regs {
  uint64_t rax, rbx, rcx, rdx;
  uint64_t rsi, rdi, rsp, rbp;
  uint64_t r8, r9, r10, r11;
  uint64_t r12, r13, r14, r15;
  uint64_t rip, rflags;
};
static_assert(sizeof(kvm_regs) == 144, "kvm_regs size");
static_assert(offsetof(kvm_regs, rip) == 128, "rip offset");
static_assert(offsetof(kvm_regs, rflags) == 136, "rflags offset");

// A segment register as KVM holds it: the hidden (cached) part spelled out field by field.
struct kvm_segment {
  uint64_t base;
  uint32_t limit;
  uint16_t selector;
  uint8_t type;
  uint8_t present, dpl, db, s, l, g, avl;
  uint8_t unusable;
  uint8_t padding;
};
static_assert(sizeof(kvm_segment) == 24, "kvm_segment size");
static_assert(offsetof(kvm_segment, selector) == 12, "selector offset");
static_assert(offsetof(kvm_segment, type) == 14, "type offset");
static_assert(offsetof(kvm_segment, unusable) == 22, "unusable offset");

struct kvm_dtable {
  uint64_t base;
  uint16_t limit;
  uint16_t padding[3];
};
static_assert(sizeof(kvm_dtable) == 16, "kvm_dtable size");

// Special registers (KVM_GET_SREGS / KVM_SET_SREGS).
struct kvm_sregs {
  kvm_segment cs, ds, es, fs, gs, ss;
  kvm_segment tr, ldt;
  kvm_dtable gdt, idt;
  uint64_t cr0, cr2, cr3, cr4, cr8;
  uint64_t efer;
  uint64_t apic_base;
  uint64_t interrupt_bitmap[4];  // (KVM_NR_INTERRUPTS 256 + 63) / 64
};
static_assert(sizeof(kvm_sregs) == 312, "kvm_sregs size");
static_assert(offsetof(kvm_sregs, gdt) == 192, "gdt offset");
static_assert(offsetof(kvm_sregs, idt) == 208, "idt offset");
static_assert(offsetof(kvm_sregs, cr0) == 224, "cr0 offset");
static_assert(offsetof(kvm_sregs, efer) == 264, "efer offset");
static_assert(offsetof(kvm_sregs, apic_base) == 272, "apic_base offset");
static_assert(offsetof(kvm_sregs, interrupt_bitmap) == 280, "interrupt_bitmap offset");

// x87/SSE state (KVM_GET_FPU / KVM_SET_FPU).
struct kvm_fpu {
  uint8_t fpr[8][16];
  uint16_t fcw;
  uint16_t fsw;
  uint8_t ftwx;
  uint8_t pad1;
  uint16_t last_opcode;
  uint64_t last_ip;
  uint64_t last_dp;
  uint8_t xmm[16][16];
  uint32_t mxcsr;
  uint32_t pad2;
};
static_assert(sizeof(kvm_fpu) == 416, "kvm_fpu size");
static_assert(offsetof(kvm_fpu, fcw) == 128, "fcw offset");
static_assert(offsetof(kvm_fpu, last_ip) == 136, "last_ip offset");
static_assert(offsetof(kvm_fpu, xmm) == 152, "xmm offset");
static_assert(offsetof(kvm_fpu, mxcsr) == 408, "mxcsr offset");

constexpr unsigned long KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs);
constexpr unsigned long KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs);
constexpr unsigned long KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs);
constexpr unsigned long KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs);
constexpr unsigned long KVM_GET_FPU = _IOR(KVMIO, 0x8c, kvm_fpu);
constexpr unsigned long KVM_SET_FPU = _IOW(KVMIO, 0x8d, kvm_fpu);
static_assert(KVM_CREATE_VCPU == 0xae41ul, "KVM_CREATE_VCPU number");
static_assert(KVM_RUN == 0xae80ul, "KVM_RUN number");
static_assert(KVM_GET_REGS == 0x8090ae81ul, "KVM_GET_REGS number");
static_assert(KVM_SET_REGS == 0x4090ae82ul, "KVM_SET_REGS number");
static_assert(KVM_GET_SREGS == 0x8138ae83ul, "KVM_GET_SREGS number");
static_assert(KVM_SET_SREGS == 0x4138ae84ul, "KVM_SET_SREGS number");
static_assert(KVM_GET_FPU == 0x81a0ae8cul, "KVM_GET_FPU number");
static_assert(KVM_SET_FPU == 0x41a0ae8dul, "KVM_SET_FPU number");

// CPUID (KVM_GET_SUPPORTED_CPUID on /dev/kvm, KVM_SET_CPUID2 / KVM_GET_CPUID2 on a vCPU): a count,
// then the entries. KVM caps the table at KVM_MAX_CPUID_ENTRIES and answers E2BIG when nent is short.
struct kvm_cpuid_entry2 {
  uint32_t function;
  uint32_t index;
  uint32_t flags;
  uint32_t eax;
  uint32_t ebx;
  uint32_t ecx;
  uint32_t edx;
  uint32_t padding[3];
};
static_assert(sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 size");
static_assert(offsetof(kvm_cpuid_entry2, eax) == 12, "eax offset");
static_assert(offsetof(kvm_cpuid_entry2, edx) == 24, "edx offset");

struct kvm_cpuid2 {
  uint32_t nent;
  uint32_t padding;
  // struct kvm_cpuid_entry2 entries[nent] follow
};
static_assert(sizeof(kvm_cpuid2) == 8, "kvm_cpuid2 size");

constexpr uint32_t KVM_MAX_CPUID_ENTRIES = 256;
constexpr unsigned long KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2);
constexpr unsigned long KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2);
constexpr unsigned long KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2);
static_assert(KVM_GET_SUPPORTED_CPUID == 0xc008ae05ul, "KVM_GET_SUPPORTED_CPUID number");
static_assert(KVM_SET_CPUID2 == 0x4008ae90ul, "KVM_SET_CPUID2 number");
static_assert(KVM_GET_CPUID2 == 0xc008ae91ul, "KVM_GET_CPUID2 number");

// The head of struct kvm_run (the page mmap()ed from the vCPU fd) up to the exit union, and
// the union members this library decodes. lib reads the page through these offsets
// (exported by uapiLayout() and checked by a test), so the two can never drift apart.
struct kvm_run_head {
  uint8_t request_interrupt_window;
  uint8_t immediate_exit;
  uint8_t padding1[6];
  uint32_t exit_reason;
  uint8_t ready_for_interrupt_injection;
  uint8_t if_flag;
  uint16_t flags;
  uint64_t cr8;
  uint64_t apic_base;
  // union { ... } at offset 32, 256 bytes; then kvm_valid_regs at 288, kvm_dirty_regs at 296.
};
static_assert(offsetof(kvm_run_head, immediate_exit) == 1, "immediate_exit offset");
static_assert(offsetof(kvm_run_head, exit_reason) == 8, "exit_reason offset");
static_assert(offsetof(kvm_run_head, apic_base) == 24, "apic_base offset");
static_assert(sizeof(kvm_run_head) == 32, "kvm_run head size");
constexpr size_t KVM_RUN_EXIT_UNION = 32;
constexpr size_t KVM_RUN_VALID_REGS = 288;
constexpr size_t KVM_RUN_DIRTY_REGS = 296;

struct kvm_run_io {   // KVM_EXIT_IO
  uint8_t direction;  // KVM_EXIT_IO_IN 0, KVM_EXIT_IO_OUT 1
  uint8_t size;       // bytes per element: 1, 2, 4
  uint16_t port;
  uint32_t count;        // elements (> 1 for rep ins/outs)
  uint64_t data_offset;  // where the data is, from the start of the kvm_run mapping
};
static_assert(sizeof(kvm_run_io) == 16 && offsetof(kvm_run_io, data_offset) == 8, "io layout");

struct kvm_run_mmio {  // KVM_EXIT_MMIO
  uint64_t phys_addr;
  uint8_t data[8];
  uint32_t len;
  uint8_t is_write;
};
static_assert(offsetof(kvm_run_mmio, len) == 16 && offsetof(kvm_run_mmio, is_write) == 20, "mmio layout");

struct kvm_run_fail_entry {  // KVM_EXIT_FAIL_ENTRY
  uint64_t hardware_entry_failure_reason;
  uint32_t cpu;
};
static_assert(offsetof(kvm_run_fail_entry, cpu) == 8, "fail_entry layout");

struct kvm_run_internal {  // KVM_EXIT_INTERNAL_ERROR
  uint32_t suberror;
  uint32_t ndata;
  uint64_t data[16];
};
static_assert(offsetof(kvm_run_internal, data) == 8, "internal layout");

struct kvm_run_system_event {  // KVM_EXIT_SYSTEM_EVENT
  uint32_t type;
  uint32_t ndata;
  uint64_t data[16];  // data[0] is the legacy `flags`
};
static_assert(offsetof(kvm_run_system_event, data) == 8, "system_event layout");

struct kvm_run_memory_fault {  // KVM_EXIT_MEMORY_FAULT (with KVM_RUN failing EFAULT)
  uint64_t flags;
  uint64_t gpa;
  uint64_t size;
};
static_assert(sizeof(kvm_run_memory_fault) == 24, "memory_fault layout");

// KVM_EXIT_HYPERCALL: a hypercall KVM_CAP_EXIT_HYPERCALL forwards. Userspace answers by writing
// `ret` before the next KVM_RUN, which hands it to the guest in RAX.
// https://docs.kernel.org/virt/kvm/api.html#kvm-cap-exit-hypercall
struct kvm_run_hypercall {
  uint64_t nr;
  uint64_t args[6];
  uint64_t ret;
  uint64_t flags;  // older headers: u32 longmode + u32 pad, at the same offset
};
static_assert(sizeof(kvm_run_hypercall) == 72, "hypercall member size");
static_assert(offsetof(kvm_run_hypercall, args) == 8 && offsetof(kvm_run_hypercall, ret) == 56 &&
                  offsetof(kvm_run_hypercall, flags) == 64,
              "hypercall layout");
static_assert(KVM_RUN_EXIT_UNION + offsetof(kvm_run_hypercall, nr) == 32 &&
                  KVM_RUN_EXIT_UNION + offsetof(kvm_run_hypercall, args) == 40 &&
                  KVM_RUN_EXIT_UNION + offsetof(kvm_run_hypercall, ret) == 88 &&
                  KVM_RUN_EXIT_UNION + offsetof(kvm_run_hypercall, flags) == 96,
              "kvm_run.hypercall offsets");
constexpr uint64_t KVM_EXIT_HYPERCALL_LONG_MODE = 1ull << 0;

// Exit reasons this addon itself looks at (lib's constants name all of them).
constexpr uint32_t KVM_EXIT_HYPERCALL = 3;
constexpr uint32_t KVM_EXIT_INTR = 10;
constexpr uint32_t KVM_EXIT_MEMORY_FAULT = 39;
static_assert(KVM_EXIT_HYPERCALL == 3 && KVM_EXIT_MEMORY_FAULT == 39, "exit reason numbers");

}  // namespace kg
