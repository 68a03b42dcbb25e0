// Host access to mapped memory that may raise SIGBUS, turned into a result instead of a dead
// process.
//
// The kernel refuses to fault in some guest_memfd pages for the host: past the end of the file,
// and private memory (a guest_memfd created without INIT_SHARED). A load or store there raises
// SIGBUS, whose default action kills the process. The accessors here arm a per-thread recovery
// point (sigsetjmp), run the access, and disarm; our SIGBUS handler jumps back to the recovery
// point when the faulting thread is armed, and otherwise behaves as if it had never been
// installed (chains to the previous action, or lets the default action kill the process).
//
// Why it is built this way:
// - No thread_local: TLS in a dlopen()ed object may be allocated lazily (__tls_get_addr), which
//   is not async-signal-safe inside a handler. Threads are found in a fixed global array of
//   slots keyed by gettid(), claimed with a CAS.
// - The function that calls sigsetjmp holds no C++ object with a destructor, and does not
//   modify locals after it: longjmp skips destructors, and non-volatile locals changed after
//   sigsetjmp are indeterminate once it returns a second time.
// - The access loops are separate noinline functions that go forward in address order with
//   volatile accesses (8 bytes at a time where the mapping side is aligned, single bytes at the
//   edges): on a fault, every byte before the faulting address is done, and nothing after it.
//   A copy whose destination starts inside its source goes through a buffer (see Guarded).
// - The handler is installed lazily, and checked before every guarded call: something else in
//   the process (a native module, a debugger helper) may have replaced it since. It then chains
//   to that, and a cycle with another copy of this addon is left after a few hops (CountHop).
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "addon.h"
#include "mm/mapping.h"
#include "util/args.h"
#include "util/errors.h"
#include "util/limits.h"

namespace kg {
namespace {

// One per thread inside a guarded call. `jb` is set only while the access runs.
struct Slot {
  std::atomic<pid_t> tid;
  std::atomic<sigjmp_buf*> jb;
  volatile uintptr_t addr;  // si_addr of the fault
  volatile int code;        // si_code of the fault
};
static_assert(std::atomic<pid_t>::is_always_lock_free, "the handler reads tids lock-free");
static_assert(std::atomic<sigjmp_buf*>::is_always_lock_free, "the handler reads jb lock-free");

// More threads than Node will ever have in guarded calls at once (main thread and workers).
constexpr int kSlots = limits::kMaxGuardedThreads;
Slot g_slots[kSlots];  // static storage: zero-initialized, no constructor runs

// The action that was installed before ours, to chain to. Written by Install() (under the mutex)
// into the slot the handler is not reading, then published by flipping the index.
struct sigaction g_prev[2];
std::atomic<int> g_prev_index{0};
std::mutex g_install_mu;

// The action that was installed before ours the first time, kept for good (see Chain).
struct sigaction g_first;
std::atomic<bool> g_first_set{false};

pid_t Gettid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

// Hops of one SIGBUS delivery through handlers of this addon, counted in the tail of its siginfo.
//
// Two copies of this addon in one process (two versions of the package, or both builds) each
// install their handler over the other's when they find it replaced, and chain to it: A chains to
// B and B to A. A SIGBUS that neither caused would go round that cycle until the stack
// overflowed. So every copy counts the hops of a delivery in the last 16 bytes of the siginfo,
// which the kernel leaves zero for SIGBUS (its fault and kill layouts end well before them), and
// past kMaxHops chains to the action it found before its first install (g_first) instead of the
// newest one: those first actions follow the order in which the copies were first installed, so
// they lead out of any cycle, to the action that was there before any copy.
struct HopMark {
  uint64_t magic;
  uint64_t hops;
};
static_assert(sizeof(siginfo_t) == 128, "siginfo_t is 128 bytes on Linux");
constexpr size_t kHopMarkOffset = sizeof(siginfo_t) - sizeof(HopMark);
constexpr uint64_t kHopMagic = 0x6b766d2d676d656dull;  // "kvm-gmem"
constexpr uint64_t kMaxHops = 16;

uint64_t CountHop(siginfo_t* si) {
  HopMark m;
  char* at = reinterpret_cast<char*>(si) + kHopMarkOffset;
  memcpy(&m, at, sizeof m);  // memcpy is async-signal-safe (POSIX.1-2008 TC2)
  if (m.magic != kHopMagic) m = HopMark{kHopMagic, 0};
  m.hops++;
  memcpy(at, &m, sizeof m);
  return m.hops;
}

// Does to a SIGBUS what the action `act` would have done, had it been installed.
void Perform(const struct sigaction& act, int sig, siginfo_t* si, void* uc) {
  // sa_handler and sa_sigaction share storage; SIG_DFL and SIG_IGN are recognised either way.
  void (*plain)(int) = act.sa_handler;
  if (plain == SIG_IGN && si->si_code <= 0) return;  // a kill()ed SIGBUS that was ignored: still ignored
  if (plain == SIG_DFL || plain == SIG_IGN) {
    // The default action. For a fault, returning repeats the access, which faults again under
    // SIG_DFL and the kernel kills the process, with the same core and exit status as without
    // us (the kernel also forces SIG_DFL for a faulting access when SIGBUS is ignored). A signal
    // sent by kill() does not repeat: raise it again; it stays pending (SIGBUS is blocked while
    // this handler runs) and is delivered under SIG_DFL when the handler returns.
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, nullptr);
    if (si->si_code <= 0) raise(SIGBUS);
    return;
  }
  if (act.sa_flags & SA_SIGINFO) {
    act.sa_sigaction(sig, si, uc);
  } else {
    plain(sig);
  }
}

// What to do with a SIGBUS that no guarded access of ours caused: what would have happened
// without us. That is the newest action we replaced, unless this delivery has been round a cycle
// of handlers (see CountHop).
void Chain(int sig, siginfo_t* si, void* uc) {
  if (CountHop(si) > kMaxHops && g_first_set.load(std::memory_order_acquire)) {
    Perform(g_first, sig, si, uc);
  } else {
    Perform(g_prev[g_prev_index.load(std::memory_order_acquire)], sig, si, uc);
  }
}

void OnSigbus(int sig, siginfo_t* si, void* uc) {
  const int saved_errno = errno;
  // A fault (si_code > 0) on a thread armed by a guarded call: recover. A SIGBUS sent by kill()
  // (si_code <= 0) is never from our access, even if it lands during one.
  if (si != nullptr && si->si_code > 0) {
    const pid_t tid = Gettid();
    for (int i = 0; i < kSlots; i++) {
      Slot& s = g_slots[i];
      if (s.tid.load(std::memory_order_relaxed) != tid) continue;
      sigjmp_buf* jb = s.jb.load(std::memory_order_relaxed);
      if (jb == nullptr) break;  // the thread is in a guarded call, but not inside the access
      s.addr = reinterpret_cast<uintptr_t>(si->si_addr);
      s.code = si->si_code;
      s.jb.store(nullptr, std::memory_order_relaxed);
      errno = saved_errno;
      siglongjmp(*jb, 1);  // restores the signal mask saved by sigsetjmp (SIGBUS unblocked)
    }
  }
  if (si != nullptr) Chain(sig, si, uc);  // always set under SA_SIGINFO
  errno = saved_errno;
}

bool OursInstalled(const struct sigaction& sa) {
  return (sa.sa_flags & SA_SIGINFO) != 0 && sa.sa_sigaction == OnSigbus;
}

// Installs OnSigbus unless it is the current action, keeping the current one to chain to.
void EnsureHandler(Napi::Env env) {
  struct sigaction cur;
  if (sigaction(SIGBUS, nullptr, &cur) != 0) ThrowSys(env, errno, "sigaction", nullptr, "SIGBUS (query)");
  if (OursInstalled(cur)) return;
  int err = 0;
  {
    std::lock_guard<std::mutex> lk(g_install_mu);
    // Re-read under the lock: another thread may have installed it meanwhile.
    if (sigaction(SIGBUS, nullptr, &cur) != 0) {
      err = errno;
    } else if (!OursInstalled(cur)) {
      if (!g_first_set.load(std::memory_order_relaxed)) {
        g_first = cur;
        g_first_set.store(true, std::memory_order_release);
      }
      const int next = 1 - g_prev_index.load(std::memory_order_relaxed);
      g_prev[next] = cur;
      g_prev_index.store(next, std::memory_order_release);
      // What the action we replace promised the rest of the process still holds: a system call
      // that a SIGBUS interrupts on some thread (a kill()ed one, handled by a chained handler
      // such as libuv's for process.on('SIGBUS'), which uses SA_RESTART) is restarted as before,
      // not failed with EINTR; and the chained handler runs with the signals it blocks blocked.
      // Under SIG_DFL or SIG_IGN: SA_RESTART, the nearest to "nothing happened" when our handler
      // returns from a signal that would have been ignored.
      const bool chained = cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN;
      struct sigaction sa = {};
      sa.sa_sigaction = OnSigbus;
      sa.sa_flags = SA_SIGINFO | (chained ? (cur.sa_flags & SA_RESTART) : SA_RESTART);
      if (chained) {
        sa.sa_mask = cur.sa_mask;
      } else {
        sigemptyset(&sa.sa_mask);
      }
      if (sigaction(SIGBUS, &sa, nullptr) != 0) err = errno;
    }
  }
  if (err != 0) ThrowSys(env, err, "sigaction", nullptr, "SIGBUS (install the guarded-access handler)");
}

// How an access of n bytes at the mapping-side address m is split: `head` single bytes up to
// the first 8-byte boundary of m, `body` bytes in aligned 8-byte accesses, then single bytes.
struct Plan {
  size_t head;
  size_t body;
  size_t n;
};

Plan PlanFor(uintptr_t m, size_t n) {
  size_t head = (8 - (m & 7)) & 7;
  if (head > n) head = n;
  return Plan{head, (n - head) & ~static_cast<size_t>(7), n};
}

// An 8-byte word at any alignment (the JavaScript side of a copy need not be aligned).
typedef uint64_t __attribute__((aligned(1), may_alias)) Word;

// The access loops: forward, volatile, one access per step (see the top of this file).
__attribute__((noinline)) void CopyForward(uint8_t* dst, const uint8_t* src, Plan p) {
  volatile uint8_t* d = dst;
  const volatile uint8_t* s = src;
  size_t i = 0;
  for (; i < p.head; i++) d[i] = s[i];
  for (const size_t end = p.head + p.body; i < end; i += 8) {
    *reinterpret_cast<volatile Word*>(dst + i) = *reinterpret_cast<const volatile Word*>(src + i);
  }
  for (; i < p.n; i++) d[i] = s[i];
}

__attribute__((noinline)) void FillForward(uint8_t* dst, uint8_t byte, Plan p) {
  volatile uint8_t* d = dst;
  const uint64_t word = 0x0101010101010101ull * byte;
  size_t i = 0;
  for (; i < p.head; i++) d[i] = byte;
  for (const size_t end = p.head + p.body; i < end; i += 8) *reinterpret_cast<volatile Word*>(dst + i) = word;
  for (; i < p.n; i++) d[i] = byte;
}

// Arms `slot`, runs the access, disarms. Returns false after a fault (the slot holds si_addr and
// si_code). No C++ object with a destructor lives in this frame, and nothing here is modified
// after sigsetjmp.
__attribute__((noinline)) bool RunArmed(Slot* slot, uint8_t* dst, const uint8_t* src, uint8_t byte, Plan p) {
  sigjmp_buf jb;
  if (sigsetjmp(jb, 1) != 0) return false;  // the handler disarmed the slot
  slot->jb.store(&jb, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);  // armed before the first access
  if (src != nullptr) {
    CopyForward(dst, src, p);
  } else {
    FillForward(dst, byte, p);
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);  // every access done before disarming
  slot->jb.store(nullptr, std::memory_order_relaxed);
  return true;
}

// How many bytes of the request were done before a fault at `addr`: the loop steps are
// positions 0..head-1, then head + 8k, then single bytes, the same on both sides of a copy. The
// fault is placed on whichever side (mapping or JavaScript memory) contains it; an address on
// neither (not expected) is clamped into the mapping side's range.
size_t BytesDone(uintptr_t addr, uintptr_t mapping_side, uintptr_t other_side, const Plan& p) {
  uintptr_t base = mapping_side;
  if (other_side != 0 && !(addr >= mapping_side && addr - mapping_side < p.n) && addr >= other_side &&
      addr - other_side < p.n) {
    base = other_side;
  }
  size_t pos = addr <= base ? 0 : (addr - base > p.n ? p.n : static_cast<size_t>(addr - base));
  if (pos >= p.head && pos < p.head + p.body) pos = p.head + ((pos - p.head) & ~static_cast<size_t>(7));
  return pos;
}

// Where one armed access stopped.
struct Outcome {
  bool ok;         // no fault
  size_t done;     // bytes done before the fault (n when ok)
  uintptr_t addr;  // si_addr of the fault
  int code;        // si_code of the fault
};

// Runs one access with `slot` claimed and SIGBUS deliverable: copy n bytes from src to dst (src
// != nullptr) or fill dst with `byte`. `align_side` (dst or src) decides the split into single
// bytes and words; `other_side` is the other side of a copy that may fault too (0 if none).
Outcome Step(Slot* slot, uint8_t* dst, const uint8_t* src, uint8_t byte, size_t n, uintptr_t align_side,
             uintptr_t other_side) {
  if (n == 0) return Outcome{true, 0, 0, 0};
  slot->addr = 0;
  slot->code = 0;
  const Plan p = PlanFor(align_side, n);
  if (RunArmed(slot, dst, src, byte, p)) return Outcome{true, n, 0, 0};
  const uintptr_t addr = slot->addr;
  return Outcome{false, BytesDone(addr, align_side, other_side, p), addr, slot->code};
}

// Runs one guarded access: copy n bytes from src to dst (src != nullptr) or fill dst with
// `byte`. `mapping_side` is the address in the mapping (dst or src), which decides alignment;
// `other_side` the JavaScript memory of a copy (0 for a fill). Returns undefined, or
// { bytesDone, address, sigCode } after a SIGBUS.
//
// A copy whose destination starts inside its source (the JavaScript side is a view of the same
// mapping) cannot go forward in place: it would read bytes it has already written. It goes
// through a buffer instead: the source is copied out (as far as it can be read), then that much
// is copied in; the result is what memmove gives, and after a fault the bytes before it are
// done and none after it, as for any other copy. (Memory shared through two different
// mappings of one file is not recognised: like memcpy, such a copy is unspecified.)
Napi::Value Guarded(Napi::Env env, uint8_t* dst, const uint8_t* src, uint8_t byte, size_t n, uintptr_t mapping_side,
                    uintptr_t other_side) {
  if (n == 0) return env.Undefined();
  EnsureHandler(env);
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t s = reinterpret_cast<uintptr_t>(src);
  uint8_t* bounce = nullptr;
  if (src != nullptr && d > s && d - s < n) {
    bounce = static_cast<uint8_t*>(malloc(n));  // not new: std::bad_alloc would abort the process
    if (bounce == nullptr) {
      ThrowSys(env, ENOMEM, "malloc", nullptr, Fmt("a buffer of 0x%zx bytes for an overlapping copy", n));
    }
  }
  const pid_t tid = Gettid();
  Slot* slot = nullptr;
  for (int i = 0; i < kSlots && slot == nullptr; i++) {
    pid_t expected = 0;
    if (g_slots[i].tid.compare_exchange_strong(expected, tid, std::memory_order_acq_rel)) slot = &g_slots[i];
  }
  if (slot == nullptr) {
    free(bounce);
    ThrowState(env, "ERR_KVM_THREAD_LIMIT",
               Fmt("kvm-gmem: more than %d threads in guarded memory accesses at once", kSlots));
  }
  // A hardware SIGBUS on a thread that blocks it kills the process whatever the handler: make
  // sure it is deliverable here (sigsetjmp then saves this mask, and a fault restores it).
  sigset_t bus, old;
  sigemptyset(&bus);
  sigaddset(&bus, SIGBUS);
  pthread_sigmask(SIG_UNBLOCK, &bus, &old);
  Outcome o;
  if (bounce != nullptr) {
    // Only the source can fault on the way out, only the destination on the way in.
    const Outcome out = Step(slot, bounce, src, 0, n, s, 0);
    const Outcome in = Step(slot, dst, bounce, 0, out.done, d, 0);
    o = in.ok ? out : in;
  } else {
    o = Step(slot, dst, src, byte, n, mapping_side, other_side);
  }
  if (sigismember(&old, SIGBUS) == 1) pthread_sigmask(SIG_SETMASK, &old, nullptr);
  slot->jb.store(nullptr, std::memory_order_relaxed);
  slot->tid.store(0, std::memory_order_release);
  free(bounce);
  if (o.ok) return env.Undefined();
  Napi::Object r = Napi::Object::New(env);
  r.Set("bytesDone", Napi::Number::New(env, static_cast<double>(o.done)));
  r.Set("address", U64(env, o.addr));
  r.Set("sigCode", Napi::Number::New(env, o.code));
  return r;
}

}  // namespace

// Copies between [offset, offset + bytes.length) of the live mapping `buffer` (argument 0) and
// `bytes` (argument 2): into the mapping when `write`, out of it otherwise.
static Napi::Value GuardedCopy(const Napi::CallbackInfo& info, bool write) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = LiveBuffer(info, 0);
  uint64_t offset = ArgU64(info, 1, "offset");
  Napi::Uint8Array bytes = ArgBytes(info, 2, write ? "source" : "target");
  size_t n = bytes.ByteLength();
  CheckRange(env, offset, n, ab.ByteLength());
  uint8_t* m = static_cast<uint8_t*>(ab.Data()) + offset;
  uint8_t* js = bytes.Data();
  const uintptr_t mu = reinterpret_cast<uintptr_t>(m), ju = reinterpret_cast<uintptr_t>(js);
  return write ? Guarded(env, m, js, 0, n, mu, ju) : Guarded(env, js, m, 0, n, mu, ju);
}

// guardedRead(buffer, offset, target): copies [offset, offset + target.length) of the live
// mapping `buffer` into `target`.
static Napi::Value GuardedRead(const Napi::CallbackInfo& info) { return GuardedCopy(info, false); }

// guardedWrite(buffer, offset, source): copies `source` into [offset, offset + source.length)
// of the live mapping `buffer`.
static Napi::Value GuardedWrite(const Napi::CallbackInfo& info) { return GuardedCopy(info, true); }

// guardedFill(buffer, offset, length, byte): sets [offset, offset + length) of the live mapping
// `buffer` to `byte` (an integer in [0, 255]).
static Napi::Value GuardedFill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LiveRange range = ArgLiveRange(info);
  uint32_t byte = ArgU32(info, 3, "byte");
  if (byte > 255) ThrowArg(env, ArgError::kRange, "The \"byte\" argument must be an integer in [0, 255]");
  uint8_t* m = range.Check(env);
  return Guarded(env, m, nullptr, static_cast<uint8_t>(byte), static_cast<size_t>(range.length),
                 reinterpret_cast<uintptr_t>(m), 0);
}

void InitGuarded(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"guardedRead", GuardedRead}, {"guardedWrite", GuardedWrite}, {"guardedFill", GuardedFill}});
}

}  // namespace kg
