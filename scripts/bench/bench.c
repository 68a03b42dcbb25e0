// C baseline for `npm run bench` (scripts/bench.mjs): the same kernel calls the library makes,
// with nothing in between, so that the script can report library / C ratios.
//
//   bench GROUP REPS BATCH WARMUP_MS [IMAGE]
//
// GROUP is one of: check_extension, vm, gmem, memslot, mem_attributes (per-call; BATCH calls are timed together
// and divided; untimed batches run first for WARMUP_MS, at least one), falloc (-> fallocate,
// punch_hole), fill (-> fill_first, fill_warm) (bulk, on a 1 GiB guest_memfd, after one untimed
// repetition; BATCH and WARMUP_MS are ignored), vcpu_exit (IMAGE = the port_loop guest,
// build/Release/guest/port_loop.bin: one sample = a guest making BATCH port-write exits, timed
// from the first KVM_RUN to the KVM_EXIT_HLT after the last one, divided by BATCH; untimed
// batches first for WARMUP_MS, at least one); the private-memory groups, on a SW_PROTECTED VM
// with a 2 MiB guest_memfd (flags 0) and 2 MiB of anonymous memory in memslot 0 at gpa 0:
// mem_attributes (per-call: KVM_SET_MEMORY_ATTRIBUTES over the 2 MiB, PRIVATE and 0 in turn),
// convert (one sample = BATCH private -> shared pairs as vm.convertMemory() does them: attributes
// then MADV_DONTNEED of the shared side, attributes then PUNCH_HOLE of the guest_memfd; before
// each pair, untimed, both sides are populated, so each discard frees 2 MiB), prefault (one
// sample = BATCH KVM_PRE_FAULT_MEMORY of the private 2 MiB from vCPU 0; the memslot is added
// before and deleted after each one, untimed, so every call maps all of it again). A host without
// them prints {"vmas": n, "skipped": "reason"}. Prints one
// JSON object: {"vmas": n, "metric": {"unit": "ns" | "B/s", "median": x, "samples": [...]}, ...}
// where vmas is this process's VMA count during the run (KVM_CREATE_VM's cost grows with it).
//
// The KVM uapi is defined here: Debian 12's <linux/kvm.h> predates guest_memfd.
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/ioctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KVMIO 0xAE
#define KVM_CREATE_VM _IO(KVMIO, 0x01)
#define KVM_CHECK_EXTENSION _IO(KVMIO, 0x03)
#define KVM_CAP_USER_MEMORY2 231

struct kvm_create_guest_memfd {
  uint64_t size;
  uint64_t flags;
  uint64_t reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#define GUEST_MEMFD_FLAG_MMAP (1ull << 0)
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ull << 1)

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
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
#define KVM_MEM_GUEST_MEMFD (1u << 2)

// Private memory (KVM_X86_SW_PROTECTED_VM): attributes, pre-fault, and the caps that say whether
// the host has them.
#define KVM_CAP_MEMORY_ATTRIBUTES 233
#define KVM_CAP_VM_TYPES 235
#define KVM_CAP_PRE_FAULT_MEMORY 236
#define KVM_X86_SW_PROTECTED_VM 1
struct kvm_memory_attributes {
  uint64_t address;
  uint64_t size;
  uint64_t attributes;
  uint64_t flags;
};
#define KVM_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct kvm_memory_attributes)
#define KVM_MEMORY_ATTRIBUTE_PRIVATE (1ull << 3)
struct kvm_pre_fault_memory {
  uint64_t gpa;
  uint64_t size;
  uint64_t flags;
  uint64_t padding[5];
};
#define KVM_PRE_FAULT_MEMORY _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)

// The vCPU part, for vcpu_exit (x86-64): only what the exit loop and the long-mode setup use.
#define KVM_GET_VCPU_MMAP_SIZE _IO(KVMIO, 0x04)
#define KVM_CREATE_VCPU _IO(KVMIO, 0x41)
#define KVM_RUN _IO(KVMIO, 0x80)

struct kvm_regs {
  uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  uint64_t rip, rflags;
};
struct kvm_segment {
  uint64_t base;
  uint32_t limit;
  uint16_t selector;
  uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};
struct kvm_dtable {
  uint64_t base;
  uint16_t limit, padding[3];
};
struct kvm_sregs {
  struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
  struct kvm_dtable gdt, idt;
  uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
  uint64_t interrupt_bitmap[4];
};
struct kvm_cpuid_entry2 {
  uint32_t function, index, flags, eax, ebx, ecx, edx, padding[3];
};
struct kvm_cpuid2 {
  uint32_t nent, padding;
  struct kvm_cpuid_entry2 entries[];
};
#define KVM_GET_SUPPORTED_CPUID _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
#define KVM_SET_CPUID2 _IOW(KVMIO, 0x90, struct kvm_cpuid2)
#define KVM_GET_REGS _IOR(KVMIO, 0x81, struct kvm_regs)
#define KVM_SET_REGS _IOW(KVMIO, 0x82, struct kvm_regs)
#define KVM_GET_SREGS _IOR(KVMIO, 0x83, struct kvm_sregs)
#define KVM_SET_SREGS _IOW(KVMIO, 0x84, struct kvm_sregs)

// The head of struct kvm_run (the mapping is KVM_GET_VCPU_MMAP_SIZE bytes).
struct kvm_run_head {
  uint8_t request_interrupt_window, immediate_exit, padding1[6];
  uint32_t exit_reason;
  uint8_t ready_for_interrupt_injection, if_flag;
  uint16_t flags;
  uint64_t cr8, apic_base;
  struct {
    uint8_t direction, size;
    uint16_t port;
    uint32_t count;
    uint64_t data_offset;
  } io;  // the exit union starts here
};
#define KVM_EXIT_IO 2
#define KVM_EXIT_HLT 5

// A wrong struct would silently give a plausible but different ioctl number: pin them.
_Static_assert(sizeof(struct kvm_create_guest_memfd) == 64, "kvm_create_guest_memfd size");
_Static_assert(sizeof(struct kvm_userspace_memory_region2) == 160, "region2 size");
_Static_assert(KVM_CREATE_GUEST_MEMFD == 0xc040aed4ul, "KVM_CREATE_GUEST_MEMFD number");
_Static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40a0ae49ul, "KVM_SET_USER_MEMORY_REGION2 number");
_Static_assert(KVM_SET_MEMORY_ATTRIBUTES == 0x4020aed2ul, "KVM_SET_MEMORY_ATTRIBUTES number");
_Static_assert(KVM_PRE_FAULT_MEMORY == 0xc040aed5ul, "KVM_PRE_FAULT_MEMORY number");
_Static_assert(sizeof(struct kvm_regs) == 144, "kvm_regs size");
_Static_assert(sizeof(struct kvm_segment) == 24, "kvm_segment size");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm_sregs size");
_Static_assert(offsetof(struct kvm_run_head, exit_reason) == 8, "kvm_run.exit_reason offset");
_Static_assert(offsetof(struct kvm_run_head, io) == 32, "kvm_run.io offset");
_Static_assert(sizeof(struct kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 size");
_Static_assert(KVM_SET_CPUID2 == 0x4008ae90ul, "KVM_SET_CPUID2 number");
_Static_assert(KVM_SET_REGS == 0x4090ae82ul, "KVM_SET_REGS number");
_Static_assert(KVM_SET_SREGS == 0x4138ae84ul, "KVM_SET_SREGS number");

#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define SMALL (2 * MiB)  // guest_memfd size for the per-call groups
#define BIG GiB          // guest_memfd size for the bulk groups

static void die(const char *what) {
  fprintf(stderr, "bench.c: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// One metric's samples; printed as JSON at exit.
struct metric {
  const char *name, *unit;
  double samples[1024];
  int n;
};

// Lines of /proc/self/maps: one per VMA.
static int count_vmas(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return -1;
  int n = 0, c;
  while ((c = getc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}
static int vmas = -1;

static void print_metrics(struct metric *m, int count) {
  printf("{\"vmas\":%d", vmas);
  for (int i = 0; i < count; i++) {
    double sorted[1024];
    memcpy(sorted, m[i].samples, m[i].n * sizeof(double));
    qsort(sorted, m[i].n, sizeof(double), cmp_double);
    double med = m[i].n % 2 ? sorted[m[i].n / 2] : (sorted[m[i].n / 2 - 1] + sorted[m[i].n / 2]) / 2;
    printf(",\"%s\":{\"unit\":\"%s\",\"median\":%.6g,\"samples\":[", m[i].name, m[i].unit, med);
    for (int j = 0; j < m[i].n; j++) printf("%s%.6g", j ? "," : "", m[i].samples[j]);
    printf("]}");
  }
  printf("}\n");
}

static int open_kvm(void) {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);  // as Kvm.open()
  if (fd < 0) die("open /dev/kvm");
  return fd;
}

static int create_vm_type(int kvm, unsigned long type) {
  int fd;
  do fd = ioctl(kvm, KVM_CREATE_VM, type);
  while (fd < 0 && errno == EINTR);  // the library retries EINTR too
  if (fd < 0) die("KVM_CREATE_VM");
  return fd;
}
static int create_vm(int kvm) { return create_vm_type(kvm, 0); }

// KVM_CREATE_GUEST_MEMFD plus FD_CLOEXEC, exactly as vm.createGuestMemfd() does.
static int create_gmem(int vm, uint64_t size, uint64_t flags) {
  struct kvm_create_guest_memfd args = {.size = size, .flags = flags};
  int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args);
  if (fd < 0) die("KVM_CREATE_GUEST_MEMFD");
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) die("fcntl FD_CLOEXEC"); /* as the library does */
  return fd;
}

static void falloc(int fd, int mode, uint64_t len) {
  int r;
  do r = fallocate(fd, mode, 0, len);
  while (r != 0 && errno == EINTR);
  if (r != 0) die("fallocate");
}

static void set_region2(int vm, struct kvm_userspace_memory_region2 r) {
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) != 0) die("KVM_SET_USER_MEMORY_REGION2");
}

// Per-call groups: one timed sample = BATCH calls, divided.
static volatile long sink;  // keeps results observable

static void one_check_extension(int kvm, int vm, int gmem, void *map) {
  (void)vm, (void)gmem, (void)map;
  int r = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2);
  if (r < 0) die("KVM_CHECK_EXTENSION");
  sink += r;
}

static void one_vm(int kvm, int vm, int gmem, void *map) {
  (void)vm, (void)gmem, (void)map;
  if (close(create_vm(kvm)) != 0) die("close vm");
}

static void one_gmem(int kvm, int vm, int gmem, void *map) {
  (void)kvm, (void)gmem, (void)map;
  if (close(create_gmem(vm, SMALL, 0)) != 0) die("close guest_memfd");
}

// Add then delete; the delete is what vm.deleteMemoryRegion() sends (everything 0 but slot).
static void one_memslot(int kvm, int vm, int gmem, void *map) {
  (void)kvm;
  set_region2(vm, (struct kvm_userspace_memory_region2){
                      .slot = 0,
                      .flags = KVM_MEM_GUEST_MEMFD,
                      .guest_phys_addr = 0,
                      .memory_size = SMALL,
                      .userspace_addr = (uintptr_t)map,
                      .guest_memfd = (uint32_t)gmem,
                  });
  set_region2(vm, (struct kvm_userspace_memory_region2){.slot = 0});
}

static void per_call(struct metric *m, void (*one)(int, int, int, void *), int reps, long batch,
                     double warmup_ms) {
  int kvm = open_kvm(), vm = create_vm(kvm);
  int gmem = create_gmem(vm, SMALL, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
  void *map = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_SHARED, gmem, 0);
  if (map == MAP_FAILED) die("mmap");
  vmas = count_vmas();
  double warm_end = now_ns() + warmup_ms * 1e6;
  do
    for (long i = 0; i < batch; i++) one(kvm, vm, gmem, map);
  while (now_ns() < warm_end);
  for (int rep = 0; rep < reps; rep++) {
    double t0 = now_ns();
    for (long i = 0; i < batch; i++) one(kvm, vm, gmem, map);
    m->samples[m->n++] = (now_ns() - t0) / batch;
  }
  munmap(map, SMALL);
  close(gmem), close(vm), close(kvm);
}

// fallocate then punch the whole 1 GiB file each repetition: each call finds the state the other
// left (a hole to allocate, a fully allocated file to punch).
static void falloc_group(struct metric *alloc, struct metric *punch, int reps) {
  int kvm = open_kvm(), vm = create_vm(kvm);
  int gmem = create_gmem(vm, BIG, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
  vmas = count_vmas();
  for (int rep = -1; rep < reps; rep++) {
    double t0 = now_ns();
    falloc(gmem, FALLOC_FL_KEEP_SIZE, BIG);
    double t1 = now_ns();
    falloc(gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BIG);
    double t2 = now_ns();
    if (rep >= 0) alloc->samples[alloc->n++] = t1 - t0, punch->samples[punch->n++] = t2 - t1;
  }
  close(gmem), close(vm), close(kvm);
}

// memset over the whole mapping: first right after a punch (every page faults in), then again
// (all resident). Bandwidth in bytes per second.
static void fill_group(struct metric *first, struct metric *warm, int reps) {
  int kvm = open_kvm(), vm = create_vm(kvm);
  int gmem = create_gmem(vm, BIG, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
  unsigned char *map = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED, gmem, 0);
  if (map == MAP_FAILED) die("mmap");
  vmas = count_vmas();
  for (int rep = -1; rep < reps; rep++) {
    falloc(gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BIG);
    double t0 = now_ns();
    memset(map, 0xaa, BIG);
    double t1 = now_ns();
    memset(map, 0xaa, BIG);
    double t2 = now_ns();
    sink += map[rep & 0xfff];  // the memset must happen
    if (rep >= 0) first->samples[first->n++] = BIG / (t1 - t0) * 1e9, warm->samples[warm->n++] = BIG / (t2 - t1) * 1e9;
  }
  munmap(map, BIG);  // with the fds closed below, this frees the memory
  close(gmem), close(vm), close(kvm);
}

// vcpu_exit: the same VM the library's bench builds (and bootGuest() sets up): a 4 MiB
// MMAP|INIT_SHARED guest_memfd mapped and used as the memslot's userspace_addr, identity-mapped
// long mode (PML4 at 0x1000, PDPT 0x2000, one PD at 0x3000 with 2 MiB pages over 1 GiB), the
// image at 0x10000, stack 0x90000, RDI = N.
#define VM_SIZE (4 * MiB)
#define PAGE_TABLES 0x1000
#define LOAD_AT 0x10000
#define STACK 0x90000
#define BENCH_PORT 0x10

static void set_entry(int vcpu, long n) {
  // As setEntry(): every register 0 but rip, rsp, rflags and the argument.
  struct kvm_regs regs = {.rip = LOAD_AT, .rsp = STACK, .rflags = 2, .rdi = (uint64_t)n};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) != 0) die("KVM_SET_REGS");
}

// Runs the guest until it halts; returns the number of port-write exits on the way.
static long run_to_halt(int vcpu, volatile struct kvm_run_head *run) {
  long exits = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) != 0) {
      if (errno == EINTR) continue;  // as the library: a signal is not an exit of the guest
      die("KVM_RUN");
    }
    if (run->exit_reason != KVM_EXIT_IO) break;
    if (run->io.port != BENCH_PORT) {
      fprintf(stderr, "bench.c: unexpected port 0x%x\n", run->io.port);
      exit(1);
    }
    exits++;
  }
  if (run->exit_reason != KVM_EXIT_HLT) {
    fprintf(stderr, "bench.c: guest stopped with exit reason %u, not HLT\n", run->exit_reason);
    exit(1);
  }
  return exits;
}

static void check_exits(long exits, long expected) {
  if (exits == expected) return;
  fprintf(stderr, "bench.c: the guest made %ld port-write exits, expected %ld\n", exits, expected);
  exit(1);
}

static void vcpu_exit_group(struct metric *m, const char *image, int reps, long batch, double warmup_ms) {
  int kvm = open_kvm(), vm = create_vm(kvm);
  int gmem = create_gmem(vm, VM_SIZE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
  unsigned char *mem = mmap(NULL, VM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, gmem, 0);
  if (mem == MAP_FAILED) die("mmap guest_memfd");
  set_region2(vm, (struct kvm_userspace_memory_region2){
                      .slot = 0,
                      .flags = KVM_MEM_GUEST_MEMFD,
                      .guest_phys_addr = 0,
                      .memory_size = VM_SIZE,
                      .userspace_addr = (uintptr_t)mem,
                      .guest_memfd = (uint32_t)gmem,
                  });

  // Page tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = 2 MiB page i.
  uint64_t *pml4 = (uint64_t *)(mem + PAGE_TABLES), *pdpt = pml4 + 512, *pd = pml4 + 1024;
  memset(pml4, 0, 3 * 4096);
  pml4[0] = (PAGE_TABLES + 0x1000) | 3;
  pdpt[0] = (PAGE_TABLES + 0x2000) | 3;
  for (uint64_t i = 0; i < 512; i++) pd[i] = (i << 21) | 0x83;

  FILE *f = fopen(image, "rb");
  if (!f) die(image);
  size_t len = fread(mem + LOAD_AT, 1, STACK - LOAD_AT, f);
  if (ferror(f) || len == 0) die("read guest image");
  fclose(f);

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  if (fcntl(vcpu, F_SETFD, FD_CLOEXEC) != 0) die("fcntl FD_CLOEXEC");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run_head *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  // As bootGuest(): all the CPUID KVM supports first, since KVM refuses EFER.LME to a vCPU whose
  // CPUID lacks long mode.
  struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + 256 * sizeof(struct kvm_cpuid_entry2));
  if (!cpuid) die("calloc");
  cpuid->nent = 256;
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) != 0) die("KVM_GET_SUPPORTED_CPUID");
  if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) != 0) die("KVM_SET_CPUID2");
  free(cpuid);

  struct kvm_sregs s;
  if (ioctl(vcpu, KVM_GET_SREGS, &s) != 0) die("KVM_GET_SREGS");
  struct kvm_segment code = {.limit = 0xffffffff, .selector = 0x08, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1};
  struct kvm_segment data = {.limit = 0xffffffff, .selector = 0x10, .type = 3, .present = 1, .db = 1, .s = 1, .g = 1};
  s.cs = code;
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  s.tr = (struct kvm_segment){.limit = 0x67, .selector = 0x18, .type = 11, .present = 1};
  s.ldt = (struct kvm_segment){.type = 2, .unusable = 1};
  s.gdt = s.idt = (struct kvm_dtable){0};
  s.cr3 = PAGE_TABLES;
  s.cr4 = 0x620;       // PAE | OSFXSR | OSXMMEXCPT
  s.cr0 = 0x80050033;  // PE | MP | ET | NE | WP | AM | PG
  s.efer = 0x500;      // LME | LMA
  if (ioctl(vcpu, KVM_SET_SREGS, &s) != 0) die("KVM_SET_SREGS");
  vmas = count_vmas();

  double warm_end = now_ns() + warmup_ms * 1e6;
  do {
    set_entry(vcpu, batch);
    check_exits(run_to_halt(vcpu, run), batch);
  } while (now_ns() < warm_end);
  for (int rep = 0; rep < reps; rep++) {
    set_entry(vcpu, batch);  // re-boot: the guest starts over with RDI = BATCH
    double t0 = now_ns();
    long exits = run_to_halt(vcpu, run);
    double t1 = now_ns();
    check_exits(exits, batch);
    m->samples[m->n++] = (t1 - t0) / batch;
  }
  munmap(run, run_size);
  close(vcpu);
  set_region2(vm, (struct kvm_userspace_memory_region2){.slot = 0});
  munmap(mem, VM_SIZE);
  close(gmem), close(vm), close(kvm);
}

// The private-memory groups' fixture: a SW_PROTECTED VM, a 2 MiB guest_memfd (flags 0: private
// only) and 2 MiB of anonymous memory (as Mapping.anonymous()) for the shared side, in memslot 0.
struct priv {
  int kvm, vm, gmem, vcpu;
  unsigned char *shared;
};

static void set_attributes(int vm, uint64_t attributes) {
  struct kvm_memory_attributes a = {.address = 0, .size = SMALL, .attributes = attributes};
  if (ioctl(vm, KVM_SET_MEMORY_ATTRIBUTES, &a) != 0) die("KVM_SET_MEMORY_ATTRIBUTES");
}

static void priv_slot(struct priv *p) {
  set_region2(p->vm, (struct kvm_userspace_memory_region2){
                         .slot = 0,
                         .flags = KVM_MEM_GUEST_MEMFD,
                         .guest_phys_addr = 0,
                         .memory_size = SMALL,
                         .userspace_addr = (uintptr_t)p->shared,
                         .guest_memfd = (uint32_t)p->gmem,
                     });
}

// NULL with the fixture set up, or why the host cannot run the group (printed as "skipped").
static const char *priv_open(struct priv *p, const char *group) {
  static char why[160];
  p->kvm = open_kvm();
  int types = ioctl(p->kvm, KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES);
  if (types < 0 || !(types & (1 << KVM_X86_SW_PROTECTED_VM))) {
    snprintf(why, sizeof why, "no SW_PROTECTED VM type (KVM_CAP_VM_TYPES 0x%x)", types < 0 ? 0 : types);
    return why;
  }
  p->vm = create_vm_type(p->kvm, KVM_X86_SW_PROTECTED_VM);
  int attrs = ioctl(p->vm, KVM_CHECK_EXTENSION, KVM_CAP_MEMORY_ATTRIBUTES);
  if (attrs < 0 || !(attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE)) {
    snprintf(why, sizeof why, "no PRIVATE attribute on a SW_PROTECTED VM (KVM_CAP_MEMORY_ATTRIBUTES 0x%x)", attrs < 0 ? 0 : attrs);
    return why;
  }
  if (!strcmp(group, "prefault") && ioctl(p->vm, KVM_CHECK_EXTENSION, KVM_CAP_PRE_FAULT_MEMORY) <= 0) {
    snprintf(why, sizeof why, "KVM_CAP_PRE_FAULT_MEMORY 0 (no TDP)");
    return why;
  }
  p->gmem = create_gmem(p->vm, SMALL, 0);
  p->shared = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p->shared == MAP_FAILED) die("mmap anonymous");
  priv_slot(p);
  p->vcpu = -1;
  if (!strcmp(group, "prefault")) {
    p->vcpu = ioctl(p->vm, KVM_CREATE_VCPU, 0);
    if (p->vcpu < 0) die("KVM_CREATE_VCPU");
    if (fcntl(p->vcpu, F_SETFD, FD_CLOEXEC) != 0) die("fcntl FD_CLOEXEC");
  }
  return NULL;
}

// One call: PRIVATE on even i, 0 (shared) on odd i, as the library's loop.
static double attributes_run(struct priv *p, long n) {
  double t0 = now_ns();
  for (long i = 0; i < n; i++) set_attributes(p->vm, i & 1 ? 0 : KVM_MEMORY_ATTRIBUTE_PRIVATE);
  return now_ns() - t0;
}

// BATCH pairs; only the conversions are timed. Before each pair both sides hold 2 MiB: the shared
// pages written, the guest_memfd allocated.
static double convert_run(struct priv *p, long n) {
  double timed = 0;
  for (long i = 0; i < n; i++) {
    memset(p->shared, 1, SMALL);
    falloc(p->gmem, FALLOC_FL_KEEP_SIZE, SMALL);
    double t0 = now_ns();
    set_attributes(p->vm, KVM_MEMORY_ATTRIBUTE_PRIVATE);
    if (madvise(p->shared, SMALL, MADV_DONTNEED) != 0) die("madvise MADV_DONTNEED");
    set_attributes(p->vm, 0);
    falloc(p->gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, SMALL);
    timed += now_ns() - t0;
  }
  return timed;
}

// BATCH pre-faults of the private 2 MiB; only KVM_PRE_FAULT_MEMORY is timed. Deleting the memslot
// in between unmaps it all, so each call maps all 512 pages again.
static double prefault_run(struct priv *p, long n) {
  double timed = 0;
  for (long i = 0; i < n; i++) {
    priv_slot(p);
    double t0 = now_ns();
    struct kvm_pre_fault_memory r = {.gpa = 0, .size = SMALL};
    int retries = 0;
    while (r.size > 0) {
      if (ioctl(p->vcpu, KVM_PRE_FAULT_MEMORY, &r) != 0) {
        // As the library's preFaultMemory(): EINTR/EAGAIN before any page are tried again.
        if ((errno == EINTR || errno == EAGAIN) && ++retries <= 100) continue;
        die("KVM_PRE_FAULT_MEMORY");
      }
      retries = 0;
    }
    timed += now_ns() - t0;
    set_region2(p->vm, (struct kvm_userspace_memory_region2){.slot = 0});
  }
  return timed;
}

static void private_group(const char *group, struct metric *m, int reps, long batch, double warmup_ms) {
  struct priv p;
  const char *skip = priv_open(&p, group);
  if (skip) {
    printf("{\"vmas\":%d,\"skipped\":\"%s\"}\n", count_vmas(), skip);
    return;
  }
  double (*run)(struct priv *, long) = !strcmp(group, "mem_attributes") ? attributes_run
                                       : !strcmp(group, "convert")      ? convert_run
                                                                        : prefault_run;
  if (run == prefault_run) {
    set_attributes(p.vm, KVM_MEMORY_ATTRIBUTE_PRIVATE);
    falloc(p.gmem, FALLOC_FL_KEEP_SIZE, SMALL);  // allocated once: the calls map, not allocate
    set_region2(p.vm, (struct kvm_userspace_memory_region2){.slot = 0});
  }
  vmas = count_vmas();
  double warm_end = now_ns() + warmup_ms * 1e6;
  do run(&p, batch);
  while (now_ns() < warm_end);
  for (int rep = 0; rep < reps; rep++) m->samples[m->n++] = run(&p, batch) / batch;
  print_metrics(m, 1);
  if (p.vcpu >= 0) close(p.vcpu);
  if (run != prefault_run) set_region2(p.vm, (struct kvm_userspace_memory_region2){.slot = 0});  // prefault_run deleted it
  munmap(p.shared, SMALL);
  close(p.gmem), close(p.vm), close(p.kvm);
}

int main(int argc, char **argv) {
  if (argc != 5 && !(argc == 6 && !strcmp(argv[1], "vcpu_exit"))) {
    fprintf(stderr, "usage: %s GROUP REPS BATCH WARMUP_MS [IMAGE (vcpu_exit)]\n", argv[0]);
    return 2;
  }
  const char *group = argv[1];
  int reps = atoi(argv[2]);
  long batch = atol(argv[3]);
  double warmup_ms = atof(argv[4]);
  if (reps < 1 || reps > 1024 || batch < 1 || warmup_ms < 0) {
    fprintf(stderr, "bench.c: REPS must be 1..1024, BATCH >= 1, WARMUP_MS >= 0\n");
    return 2;
  }
  static struct metric m[2];
  if (!strcmp(group, "check_extension") || !strcmp(group, "vm") || !strcmp(group, "gmem") ||
      !strcmp(group, "memslot")) {
    void (*one)(int, int, int, void *) = !strcmp(group, "check_extension") ? one_check_extension
                                         : !strcmp(group, "vm")            ? one_vm
                                         : !strcmp(group, "gmem")          ? one_gmem
                                                                           : one_memslot;
    m[0] = (struct metric){.name = group, .unit = "ns"};
    per_call(&m[0], one, reps, batch, warmup_ms);
    print_metrics(m, 1);
  } else if (!strcmp(group, "falloc")) {
    m[0] = (struct metric){.name = "fallocate", .unit = "ns"};
    m[1] = (struct metric){.name = "punch_hole", .unit = "ns"};
    falloc_group(&m[0], &m[1], reps);
    print_metrics(m, 2);
  } else if (!strcmp(group, "fill")) {
    m[0] = (struct metric){.name = "fill_first", .unit = "B/s"};
    m[1] = (struct metric){.name = "fill_warm", .unit = "B/s"};
    fill_group(&m[0], &m[1], reps);
    print_metrics(m, 2);
  } else if (!strcmp(group, "mem_attributes") || !strcmp(group, "convert") || !strcmp(group, "prefault")) {
    m[0] = (struct metric){.name = group, .unit = "ns"};
    private_group(group, &m[0], reps, batch, warmup_ms);
  } else if (!strcmp(group, "vcpu_exit")) {
    if (argc != 6) {
      fprintf(stderr, "bench.c: vcpu_exit needs IMAGE, the port_loop guest\n");
      return 2;
    }
    m[0] = (struct metric){.name = "vcpu_exit", .unit = "ns"};
    vcpu_exit_group(&m[0], argv[5], reps, batch, warmup_ms);
    print_metrics(m, 1);
  } else {
    fprintf(stderr, "bench.c: unknown group '%s'\n", group);
    return 2;
  }
  return 0;
}
