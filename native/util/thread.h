// Threads of the addon's own, and the one base for an object that settles promises from one:
// the vCPU runner (kvm/vcpu_runner.cc) and the fd watch (ipc/fd_watch.cc).
#pragma once

#include <napi.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

#include "util/errors.h"

namespace kg {

// Whether `env` is being torn down (a Worker's terminate(), process.exit()): then Node refuses
// every call into JavaScript, and a native call blocking the environment's thread should return.
// Only on the environment's own thread.
bool EnvStopping(napi_env env);

// CLOCK_MONOTONIC, for deadlines.
int64_t MonotonicNs();
inline int64_t MonotonicMs() { return MonotonicNs() / 1000000; }

// std::thread(fn) started with every signal blocked: no signal meant for the process (SIGCHLD,
// SIGINT...) may land on a thread of ours. Throws std::system_error as std::thread does, EAGAIN
// also when the thread's state cannot be allocated.
template <typename F>
std::thread StartThreadBlocked(F&& fn) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    std::thread t(std::forward<F>(fn));
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return t;
  } catch (const std::bad_alloc&) {
    // std::thread allocates its state before pthread_create: no memory for it is the same lack
    // of resources pthread_create reports as EAGAIN.
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw std::system_error(EAGAIN, std::generic_category());
  } catch (...) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw;
  }
}

// An ObjectWrap with a long-lived thread of its own that answers one request at a time with an
// int, settling the promise the request returned through a thread-safe function.
//
// T provides:
//   void ThreadMain();         the thread's body; returns once quit_ is set and no request waits
//   void InterruptForStop();   wakes a thread that may be blocked outside cv_ (signal, eventfd)
//   void OnEnvTeardown();      optional: what else to release when the environment goes
// T's destructor calls Shutdown() before its own members go, since the thread may use them.
//
// Lifetime: the thread-safe function is unref'd (an idle object never holds the event loop) and
// ref'd while a request is in flight, like pending I/O; the object Ref()s itself for as long.
// At environment teardown a cleanup hook stops the thread before Node tears the function down.
template <typename T>
class ThreadedWrap : public Napi::ObjectWrap<T> {
 public:
  explicit ThreadedWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<T>(info) {}

 protected:
  // Starts the thread on first use. `name` labels the thread-safe function; `what` names the
  // thread in a pthread_create error (EAGAIN: out of threads, pids cgroup, RLIMIT_NPROC).
  void EnsureThread(Napi::Env env, const char* name, const char* what) {
    if (thread_.joinable()) return;
    try {
      tsfn_ = Tsfn::New(env, name, 0, 1, static_cast<T*>(this));
    } catch (const std::bad_alloc&) {
      // No memory for the thread-safe function is no room for the thread either.
      ThrowSys(env, EAGAIN, "pthread_create", nullptr, what);
    }
    tsfn_.Unref(env);
    tsfnLive_ = true;
    env_ = env;
    if (napi_add_env_cleanup_hook(env, OnEnvCleanup, this) == napi_ok) hook_ = true;
    try {
      thread_ = StartThreadBlocked([this] { static_cast<T*>(this)->ThreadMain(); });
    } catch (const std::system_error& e) {
      ReleaseTsfn();
      RemoveHook();
      ThrowSys(env, e.code().value(), "pthread_create", nullptr, what);
    }
  }

  // Begins a request on the main thread: the promise it settles. The caller then hands the
  // request to the thread (under mu_, or through an atomic the thread polls).
  Napi::Promise Begin(Napi::Env env) {
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    Napi::Promise promise = deferred.Promise();
    deferred_.emplace(std::move(deferred));
    busy_ = true;
    this->Ref();     // the object must outlive the request it started
    tsfn_.Ref(env);  // and a request in flight keeps the event loop alive
    return promise;
  }

  // From the thread: hands `value` to the main thread, which settles the request with it.
  void Post(int value) {
    auto* r = new Result{value};
    if (tsfn_.BlockingCall(r) != napi_ok) delete r;
  }

  // Settles the request in flight with `value`. Never throws: it also runs while an environment
  // is being torn down, when resolving can fail (then there is nobody to tell).
  void Settle(Napi::Env env, int value) {
    busy_ = false;
    try {
      if (tsfnLive_) tsfn_.Unref(env);
      std::optional<Napi::Promise::Deferred> d = std::move(deferred_);
      deferred_.reset();
      if (d) d->Resolve(Napi::Number::New(env, value));
    } catch (...) {
    }
    try {
      this->Unref();
    } catch (...) {
    }
  }

  // Sets quit_, wakes the thread and joins it. A request in flight is still answered.
  void StopThread() {
    if (!thread_.joinable()) return;
    quit_.store(true);
    {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_one();
    }
    static_cast<T*>(this)->InterruptForStop();
    thread_.join();
  }

  // Releasing lets the thread-safe function deliver what is queued first, so a result posted
  // just before the thread stopped still settles its promise.
  void ReleaseTsfn() {
    if (!tsfnLive_) return;
    tsfnLive_ = false;
    tsfn_.Release();
  }

  void RemoveHook() {
    if (!hook_) return;
    hook_ = false;
    napi_remove_env_cleanup_hook(env_, OnEnvCleanup, this);
  }

  // Everything above, in order: for close() and the destructor.
  void Shutdown() {
    closed_ = true;
    StopThread();
    ReleaseTsfn();
    RemoveHook();
  }

  void OnEnvTeardown() {}

  // Main-thread state.
  bool closed_ = false;
  bool busy_ = false;  // a request is in flight

  // Shared with the thread.
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> quit_{false};

 private:
  struct Result {
    int value;
  };

  // At environment teardown (process exit, a Worker's end) the thread may be blocked: stop it
  // before Node tears down the thread-safe function it posts to.
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<ThreadedWrap*>(arg);
    self->hook_ = false;
    self->closed_ = true;
    self->StopThread();
    self->ReleaseTsfn();
    static_cast<T*>(self)->OnEnvTeardown();
  }

  static void CallJs(Napi::Env env, Napi::Function, T* self, Result* r) {
    int value = r->value;
    delete r;
    if (env == nullptr || self == nullptr) return;  // the function is being torn down
    static_cast<ThreadedWrap*>(self)->Settle(env, value);
  }

  using Tsfn = Napi::TypedThreadSafeFunction<T, Result, &ThreadedWrap::CallJs>;

  std::optional<Napi::Promise::Deferred> deferred_;
  Tsfn tsfn_;
  bool tsfnLive_ = false;
  bool hook_ = false;
  napi_env env_ = nullptr;
};

}  // namespace kg
