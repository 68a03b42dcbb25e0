// C baseline for `npm run bench` (scripts/bench.mjs): the same kernel calls the library makes,
// with nothing in between, so that the script can report library / C ratios.
//
//   bench GROUP REPS BATCH WARMUP_MS
//
// GROUP is one of: check_extension, vm, gmem, memslot (per-call; BATCH calls are timed together
// and divided; untimed batches run first for WARMUP_MS, at least one), falloc (-> fallocate,
// punch_hole), fill (-> fill_first, fill_warm) (bulk, on a 1 GiB guest_memfd, after one untimed
// repetition; BATCH and WARMUP_MS are ignored). Prints one
// JSON object: {"vmas": n, "metric": {"unit": "ns" | "B/s", "median": x, "samples": [...]}, ...}
// where vmas is this process's VMA count during the run (KVM_CREATE_VM's cost grows with it).
//
// The KVM uapi is defined here: Debian 12's <linux/kvm.h> predates guest_memfd.
#define _GNU_SOURCE
#include <errno.h>
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

// A wrong struct would silently give a plausible but different ioctl number: pin them.
_Static_assert(sizeof(struct kvm_create_guest_memfd) == 64, "kvm_create_guest_memfd size");
_Static_assert(sizeof(struct kvm_userspace_memory_region2) == 160, "region2 size");
_Static_assert(KVM_CREATE_GUEST_MEMFD == 0xc040aed4ul, "KVM_CREATE_GUEST_MEMFD number");
_Static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40a0ae49ul, "KVM_SET_USER_MEMORY_REGION2 number");

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

static int create_vm(int kvm) {
  int fd;
  do fd = ioctl(kvm, KVM_CREATE_VM, 0);
  while (fd < 0 && errno == EINTR);  // the library retries EINTR too
  if (fd < 0) die("KVM_CREATE_VM");
  return fd;
}

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

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s GROUP REPS BATCH WARMUP_MS\n", argv[0]);
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
  } else {
    fprintf(stderr, "bench.c: unknown group '%s'\n", group);
    return 2;
  }
  return 0;
}
