// Running a vCPU: the kvm_run page, KVM_RUN on the calling thread (run) or on a long-lived thread
// of the vCPU's own (runAsync), and the kick that stops a running vCPU.
//
// Why a thread per vCPU and not the libuv pool: KVM remembers which task last ran a vCPU, and
// when KVM_RUN arrives from another one it switches the vCPU's pid and waits for an RCU grace
// period. A pool thread would differ from call to call; a thread of its own never does.
//
// The async protocol, all of it owned by one VcpuRunner:
//   main thread                          vCPU thread
//   runAsync(): busy, request -> cv  --> wakes, ioctl(KVM_RUN) ... returns
//   Settle() <- thread-safe function  <-- posts the errno
// Only one run is in flight at a time (busy_), so one deferred promise is enough.
//
// The hand-back has a faster path for a main thread that is polling (runAsync(true), then
// poll() from a setImmediate loop in lib): the vCPU thread leaves the result in
// result_ and does not wake the event loop at all (no eventfd write, no epoll wake-up). One
// atomic, handoff_, decides who delivers each result, so exactly one path does:
//   kPolled   -> the thread finishes: CAS to kReady, poll() settles;
//             -> poll(giveUp) first:   CAS to kSleeping, and the thread will post;
//   kSleeping -> the thread finishes: posts through the thread-safe function.
//
// The thread serves a second kind of request the same way: KVM_PRE_FAULT_MEMORY
// (preFaultAsync), a vCPU ioctl that takes the vCPU's mutex like KVM_RUN and may run long, so it
// shares the busy state (one request at a time) and the kick (a pending signal makes it stop
// with EINTR, or with the range done so far). It never uses the polled hand-back.
//
// Kicking: set kvm_run.immediate_exit, then send the thread a signal. If the thread is inside
// KVM_RUN the pending signal makes KVM return EINTR; if it has not entered yet, immediate_exit
// makes KVM return EINTR at once. Either way the run ends with EINTR (KVM_EXIT_INTR).
//
// A synchronous run() on a Worker's thread blocks that thread in KVM_RUN, and a Worker's
// terminate() (or process.exit() on the main thread, which terminates every worker) only asks V8
// to stop running JavaScript: nothing reaches a thread inside a system call, and the terminate
// never settles. So while such a run lasts, a process-wide watchdog thread sends it the kick
// signal every kWatchMs; the run comes back with EINTR, asks whether its environment is stopping,
// and either returns or enters KVM_RUN again (the guest never notices). The main thread's runs
// are left alone: nothing but a signal can stop them there anyway.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "addon.h"
#include "uapi/kvm.h"
#include "util/args.h"
#include "util/errors.h"
#include "util/thread.h"

namespace kg {
namespace {

// The kick signal: a real-time signal that Node and V8 leave alone (Node takes SIGUSR1 for the
// inspector, V8 SIGPROF for its profiler). Its handler does nothing; what matters is that a signal
// is pending for the vCPU thread while it is in KVM_RUN.
int KickSignal() { return SIGRTMIN + 3; }

void NoopHandler(int) {}

void InstallKickHandler(Napi::Env env) {
  static std::once_flag once;
  static int err = 0;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = NoopHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN has to come back with EINTR
    if (sigaction(KickSignal(), &sa, nullptr) != 0) err = errno;
  });
  if (err != 0) ThrowSys(env, err, "sigaction", nullptr, Fmt("signal %d (the vCPU kick)", KickSignal()));
}

// The kvm_run mapping has two holders: the runner (which writes immediate_exit to kick) and the
// ArrayBuffer JavaScript sees. Either can go first: at a worker's teardown Node finalizes the
// buffer before the runner's cleanup hook kicks the thread. The range is unmapped when both let go.
struct RunMapping {
  void* addr;
  size_t length;
  std::atomic<int> holders{2};
  void Release() {
    if (holders.fetch_sub(1) == 1) {
      munmap(addr, length);
      delete this;
    }
  }
};

void ReleaseFromBuffer(Napi::Env, void*, RunMapping* m) { m->Release(); }

// The dup'd fds of every live runner in the process (all environments).
std::mutex g_runners_mu;
std::vector<int> g_runners;

// How often the watchdog kicks a synchronous run on a worker's thread (see the top of the file).
constexpr auto kWatchMs = std::chrono::milliseconds(100);

bool OnMainThread() { return syscall(SYS_gettid) == getpid(); }

}  // namespace

class VcpuRunner;

// The runners whose synchronous runs the watchdog kicks, and the watchdog thread. Never
// destroyed: the detached thread may outlive static destructors at exit.
struct Watchdog {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<VcpuRunner*> runners;
  bool started = false;
  static Watchdog& Get() {
    static Watchdog* w = new Watchdog;
    return *w;
  }
  int Add(VcpuRunner* r);  // 0, or the errno of starting the watchdog thread
  void Remove(VcpuRunner* r);
  void Loop();
};

class VcpuRunner : public ThreadedWrap<VcpuRunner> {
  friend struct Watchdog;
  friend class ThreadedWrap<VcpuRunner>;

 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VcpuRunner",
                       {
                           InstanceMethod<&VcpuRunner::Run>("run"),
                           InstanceMethod<&VcpuRunner::RunAsync>("runAsync"),
                           InstanceMethod<&VcpuRunner::PreFaultAsync>("preFaultAsync"),
                           InstanceMethod<&VcpuRunner::PreFaultRange>("preFaultRange"),
                           InstanceMethod<&VcpuRunner::Kick>("kick"),
                           InstanceMethod<&VcpuRunner::Poll>("poll"),
                           InstanceMethod<&VcpuRunner::Close>("close"),
                           InstanceAccessor<&VcpuRunner::Buffer>("buffer"),
                           InstanceAccessor<&VcpuRunner::Running>("running"),
                           InstanceAccessor<&VcpuRunner::ThreadId>("threadId"),
                       });
  }

  // new VcpuRunner(vcpuFd, mmapSize): maps the vCPU's kvm_run area (mmapSize bytes, what
  // KVM_GET_VCPU_MMAP_SIZE said). The runner works on a duplicate of vcpuFd, so closing or reusing
  // the caller's number can never redirect a run to another file.
  VcpuRunner(const Napi::CallbackInfo& info) : ThreadedWrap<VcpuRunner>(info) {
    Napi::Env env = info.Env();
    int vcpufd = ArgFd(info, 0, "vcpuFd");
    uint32_t size = ArgU32(info, 1, "mmapSize");
    // A mapping longer than the vCPU file's pages would SIGBUS on access. On x86 the file always
    // has exactly these pages at the start: kvm_run (0), the PIO data page (KVM_PIO_PAGE_OFFSET 1)
    // and the coalesced MMIO ring (KVM_COALESCED_MMIO_PAGE_OFFSET 2).
    if (size < 4096 || size > 3 * 4096 || size % 4096 != 0) {
      ThrowArg(env, ArgError::kRange, Fmt("The \"mmapSize\" argument must be 1 to 3 pages (got %u)", size));
    }
    // And the file must be a vCPU: another file could be shorter than that.
    char link[64] = {0};
    std::string path = Fmt("/proc/self/fd/%d", vcpufd);
    ssize_t n = readlink(path.c_str(), link, sizeof link - 1);
    if (n < 0) ThrowSys(env, errno, "readlink", nullptr, path);
    if (strncmp(link, "anon_inode:kvm-vcpu:", 20) != 0) {
      ThrowArg(env, ArgError::kType, Fmt("The \"vcpuFd\" argument must be a KVM vCPU fd (fd %d is %s)", vcpufd, link));
    }
    InstallKickHandler(env);
    fd_ = fcntl(vcpufd, F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) ThrowSys(env, errno, "fcntl", nullptr, Fmt("vcpu fd %d, F_DUPFD_CLOEXEC", vcpufd));
    if (!Register()) {
      close(fd_);
      fd_ = -1;
      ThrowState(env, "ERR_KVM_VCPU_HAS_RUNNER",
                 Fmt("vcpu fd %d: this vCPU already has a runner (two would block each other in KVM_RUN, "
                     "where no kick reaches the waiting one)",
                     vcpufd));
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      CloseFd();  // unlists it too: a stale entry would refuse this vCPU's next runner
      ThrowSys(env, err, "mmap", nullptr, Fmt("vcpu fd %d, length=%u, MAP_SHARED (kvm_run)", vcpufd, size));
    }
    run_ = static_cast<uint8_t*>(p);
    size_ = static_cast<size_t>(size);
    mapping_ = new RunMapping{p, size_};
    Napi::ArrayBuffer ab;
    try {
      ab = Napi::ArrayBuffer::New(env, p, size_, ReleaseFromBuffer, mapping_);
    } catch (...) {
      munmap(p, size_);
      delete mapping_;
      mapping_ = nullptr;
      CloseFd();
      throw;
    }
    buffer_ = Napi::Persistent(ab);
  }

  ~VcpuRunner() override {
    Unwatch();
    Shutdown();
    CloseFd();
    if (mapping_ != nullptr) mapping_->Release();  // the buffer's hold may outlive this object
  }

 private:
  void CheckIdle(Napi::Env env, const char* what) {
    if (closed_) ThrowState(env, "ERR_KVM_CLOSED", std::string(what) + ": the vCPU runner is closed");
    if (busy_) {
      ThrowState(env, "ERR_KVM_VCPU_RUNNING", std::string(what) + ": the vCPU is running (runAsync in flight)");
    }
  }

  // One runner per vCPU file in the process: KVM serializes KVM_RUN on a vCPU with a mutex that a
  // signal cannot interrupt, so a second runner's run would wait for the first one's guest with no
  // way to kick it. Files are compared with kcmp(KCMP_FILE); where kcmp is missing (kernels
  // without CONFIG_KCMP), the check is skipped.
  bool Register() {
    std::lock_guard<std::mutex> lk(g_runners_mu);
    pid_t pid = getpid();
    for (int other : g_runners) {
      if (syscall(SYS_kcmp, pid, pid, KCMP_FILE, other, fd_) == 0) return false;
    }
    g_runners.push_back(fd_);
    return true;
  }

  // Forgets this runner's fd and closes it (in that order, so that the number can never be taken
  // by another runner while still listed).
  void CloseFd() {
    if (fd_ < 0) return;
    {
      std::lock_guard<std::mutex> lk(g_runners_mu);
      for (auto it = g_runners.begin(); it != g_runners.end(); ++it) {
        if (*it == fd_) {
          g_runners.erase(it);
          break;
        }
      }
    }
    close(fd_);
    fd_ = -1;
  }

  void SetImmediateExit(uint8_t v) { __atomic_store_n(&run_[1], v, __ATOMIC_SEQ_CST); }

  // run() -> 0 or the errno of KVM_RUN, on the calling thread. Errors are returned, not thrown:
  // EINTR (a signal) and EFAULT with KVM_EXIT_MEMORY_FAULT are exits the caller decodes. On a
  // worker's thread the watchdog's kicks are not exits: the run goes on unless the environment is
  // stopping.
  Napi::Value Run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckIdle(env, "run");
    SetImmediateExit(0);
    if (!watchDecided_) {  // once: the environment's thread never changes
      // A Worker's run can be stopped at its teardown only by the watchdog: with no thread for
      // it, refuse to start a run nothing could ever end.
      if (!OnMainThread()) {
        int err = Watch();
        if (err != 0)
          ThrowSys(env, err, "pthread_create", nullptr, "the vCPU watchdog thread (a Worker's run() needs it)");
      }
      watchDecided_ = true;
    }
    for (;;) {
      if (watched_) {
        std::lock_guard<std::mutex> lk(syncMu_);
        syncActive_ = true;
      }
      int rc = ioctl(fd_, KVM_RUN, 0);
      int err = rc < 0 ? errno : 0;
      if (!watched_) return Napi::Number::New(env, err);
      bool ticked;
      {
        std::lock_guard<std::mutex> lk(syncMu_);
        syncActive_ = false;
        ticked = ticked_;
        ticked_ = false;
      }
      if (err == EINTR && ticked && !EnvStopping(env)) continue;
      return Napi::Number::New(env, err);
    }
  }

  // Puts this runner in the watchdog's care (see the top of the file), from the thread that runs
  // it: the thread every run() of this runner's environment comes from.
  // Returns 0, or the errno of the watchdog thread's creation.
  int Watch() {
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, KickSignal());
    pthread_sigmask(SIG_UNBLOCK, &kick, nullptr);  // a thread may have been started with it blocked
    syncThread_ = pthread_self();
    int err = Watchdog::Get().Add(this);
    watched_ = err == 0;
    return err;
  }

  void Unwatch() {
    if (!watched_) return;
    Watchdog::Get().Remove(this);
    watched_ = false;
  }

  // From the watchdog thread, under its lock: kicks a synchronous run in flight. syncMu_ makes
  // the signal reach the thread only while it is inside run(), never once it went back to
  // JavaScript (where a signal could cut some other system call short).
  void TickIfRunning() {
    std::lock_guard<std::mutex> lk(syncMu_);
    if (!syncActive_) return;
    ticked_ = true;
    pthread_kill(syncThread_, KickSignal());
  }

  // runAsync(polled?) -> Promise<0 | errno>: the same call on the vCPU's own thread. With
  // polled = true the caller promises to call poll() until it returns false.
  Napi::Value RunAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckIdle(env, "runAsync");
    bool polled = info.Length() > 0 && info[0].ToBoolean().Value();
    EnsureThread(env, "kvm-gmem vCPU", "the vCPU thread");
    SetImmediateExit(0);
    Napi::Promise promise = Begin(env);
    kind_.store(kRun, std::memory_order_relaxed);
    handoff_.store(polled ? kPolled : kSleeping);
    request_.store(true);
    {
      // Only a thread that went to sleep needs the futex wake; a spinning one sees the flag.
      std::lock_guard<std::mutex> lk(mu_);
      if (sleeping_) cv_.notify_one();
    }
    return promise;
  }

  // preFaultAsync(gpa, size, flags) -> Promise<0 | errno>: one KVM_PRE_FAULT_MEMORY on the vCPU's
  // thread. The range the kernel passed back is read with preFaultRange() once it settled.
  Napi::Value PreFaultAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckIdle(env, "preFaultAsync");
    kvm_pre_fault_memory r{};
    r.gpa = ArgU64(info, 0, "gpa");
    r.size = ArgU64(info, 1, "size");
    r.flags = ArgU64(info, 2, "flags");
    EnsureThread(env, "kvm-gmem vCPU", "the vCPU thread");
    preFault_ = r;  // the thread is idle (not busy): nothing reads it now
    Napi::Promise promise = Begin(env);
    kind_.store(kPreFault, std::memory_order_relaxed);
    handoff_.store(kSleeping);
    request_.store(true);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (sleeping_) cv_.notify_one();
    }
    return promise;
  }

  // preFaultRange(out: BigUint64Array(2)): [gpa, size] as the last preFaultAsync() left them
  // (the kernel writes the remaining range back on success and failure alike).
  Napi::Value PreFaultRange(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array ||
        info[0].As<Napi::TypedArray>().ElementLength() != 2) {
      ThrowArg(env, ArgError::kType, "The \"out\" argument must be a BigUint64Array of 2 elements");
    }
    if (busy_) ThrowState(env, "ERR_KVM_VCPU_RUNNING", "preFaultRange: a request is in flight");
    auto out = info[0].As<Napi::BigUint64Array>();
    out[0] = preFault_.gpa;
    out[1] = preFault_.size;
    return env.Undefined();
  }

  // poll(giveUp) -> whether to keep polling. Settles the run if its result is there; with
  // giveUp, hands delivery to the thread-safe function instead (or settles, if it is too late).
  Napi::Value Poll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool giveUp = info.Length() > 0 && info[0].ToBoolean().Value();
    if (!busy_) return Napi::Boolean::New(env, false);
    int state = handoff_.load();
    if (state == kPolled && giveUp) {
      if (handoff_.compare_exchange_strong(state, kSleeping)) return Napi::Boolean::New(env, false);
    }
    if (state == kReady) {
      handoff_.store(kIdle);
      Settle(env, result_.load());
      return Napi::Boolean::New(env, false);
    }
    return Napi::Boolean::New(env, state == kPolled);
  }

  // kick() -> whether a run was in flight. Stops it: the run settles with EINTR, unless KVM_RUN had
  // already returned (then it settles with that exit, and the next run starts unkicked).
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    bool inflight = busy_ && !closed_;
    if (inflight) KickThread();
    return Napi::Boolean::New(info.Env(), inflight);
  }

  // close(): stops the thread (kicking a run in flight; its promise still settles), unmaps
  // kvm_run (the range becomes anonymous memory, so stale views read zeros, never the page of a
  // closed vCPU) and closes the runner's fd. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (closed_) return info.Env().Undefined();
    closed_ = true;
    Unwatch();
    StopThread();
    if (busy_ && handoff_.load() == kReady) {  // finished for a poller that will not come back
      handoff_.store(kIdle);
      Settle(info.Env(), result_.load());
    }
    ReleaseTsfn();
    RemoveHook();
    // If the replacement fails the page simply stays mapped (and keeps the vCPU file referenced)
    // until the buffer and this object are collected; it is never unmapped under a live view.
    (void)mmap(run_, size_, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CloseFd();
    return info.Env().Undefined();
  }

  Napi::Value Buffer(const Napi::CallbackInfo& info) { return buffer_.Value(); }
  Napi::Value Running(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), busy_); }
  Napi::Value ThreadId(const Napi::CallbackInfo& info) {
    int tid = tid_.load();
    return tid > 0 ? Napi::Number::New(info.Env(), tid) : info.Env().Undefined();
  }

  // The thread starts with every signal blocked but the kick: a signal meant for the process
  // (SIGCHLD, SIGINT...) must not land here and cut a run short.
  void ThreadMain() {
    tid_.store(static_cast<int>(syscall(SYS_gettid)));
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, KickSignal());
    pthread_sigmask(SIG_UNBLOCK, &kick, nullptr);
    for (;;) {
      // A request is always served, even when quitting: its promise must settle (the kick that
      // came with the quit makes KVM_RUN return EINTR at once).
      if (!WaitForRequest()) return;
      int rc = kind_.load(std::memory_order_relaxed) == kPreFault ? ioctl(fd_, KVM_PRE_FAULT_MEMORY, &preFault_)
                                                                  : ioctl(fd_, KVM_RUN, 0);
      int err = rc < 0 ? errno : 0;
      result_.store(err);
      int expected = kPolled;
      if (handoff_.compare_exchange_strong(expected, kReady)) continue;  // the poller takes it
      Post(err);
    }
  }

  // Waits for the next runAsync(): true to run, false to quit. A VMM asks for the next run right
  // after the last one settled, so the thread polls briefly (yielding to a JavaScript thread on
  // the same core) before it sleeps: waking a sleeping thread costs a futex round trip.
  bool WaitForRequest() {
    constexpr int64_t kPollNs = 50 * 1000;
    int64_t deadline = MonotonicNs() + kPollNs;
    for (unsigned i = 1;; i++) {
      if (request_.load(std::memory_order_acquire)) break;
      if (quit_.load(std::memory_order_relaxed)) break;
      if (i % 16 == 0) {
        if (MonotonicNs() > deadline) break;
        sched_yield();
      } else {
        __builtin_ia32_pause();
      }
    }
    std::unique_lock<std::mutex> lk(mu_);
    sleeping_ = true;
    cv_.wait(lk, [this] { return request_.load() || quit_.load(); });
    sleeping_ = false;
    return request_.exchange(false);
  }

  void KickThread() {
    SetImmediateExit(1);
    if (thread_.joinable()) pthread_kill(thread_.native_handle(), KickSignal());
  }

  // Before the join in StopThread(): a run in flight may be inside KVM_RUN.
  void InterruptForStop() {
    if (busy_) KickThread();
  }

  int fd_ = -1;
  uint8_t* run_ = nullptr;
  size_t size_ = 0;
  RunMapping* mapping_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> buffer_;

  // Shared with the vCPU thread.
  std::atomic<int> tid_{0};
  // Who hands a finished run back (see the top of this file).
  static constexpr int kIdle = 0, kPolled = 1, kSleeping = 2, kReady = 3;
  std::atomic<int> handoff_{kIdle};
  std::atomic<int> result_{0};
  std::atomic<bool> request_{false};
  // What the request is; written before request_ (release), read after it (acquire).
  static constexpr int kRun = 0, kPreFault = 1;
  std::atomic<int> kind_{kRun};
  // The pre-fault request's struct: written by the main thread while idle, by the kernel on the
  // vCPU thread during the request, read by the main thread after it settled.
  kvm_pre_fault_memory preFault_{};
  bool sleeping_ = false;  // under mu_

  // A synchronous run on a worker's thread, and the watchdog's kicks of it.
  bool watchDecided_ = false;  // on the environment's thread, like watched_
  bool watched_ = false;       // in the watchdog's list
  pthread_t syncThread_{};     // the thread of this runner's environment
  std::mutex syncMu_;
  bool syncActive_ = false;  // under syncMu_: inside run(), around KVM_RUN
  bool ticked_ = false;      // under syncMu_: the watchdog kicked this run
};

int Watchdog::Add(VcpuRunner* r) {
  std::lock_guard<std::mutex> lk(mu);
  if (!started) {
    int err = 0;
    try {
      StartThreadBlocked([this] { Loop(); }).detach();
      started = true;
    } catch (const std::system_error& e) {
      err = e.code().value();
    }
    if (!started) return err != 0 ? err : EAGAIN;
  }
  runners.push_back(r);
  cv.notify_one();
  return 0;
}

void Watchdog::Remove(VcpuRunner* r) {
  std::lock_guard<std::mutex> lk(mu);
  for (auto it = runners.begin(); it != runners.end(); ++it) {
    if (*it == r) {
      runners.erase(it);
      break;
    }
  }
}

void Watchdog::Loop() {
  std::unique_lock<std::mutex> lk(mu);
  for (;;) {
    if (runners.empty())
      cv.wait(lk);
    else
      cv.wait_for(lk, kWatchMs);
    for (VcpuRunner* r : runners) r->TickIfRunning();
  }
}

void InitVcpuRunner(Napi::Env env, Napi::Object exports) { exports.Set("VcpuRunner", VcpuRunner::Define(env)); }

}  // namespace kg
