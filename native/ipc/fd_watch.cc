// FdWatch: waits for an fd to become readable on a long-lived thread of its own, never on the
// libuv pool (a receive may wait for minutes, and the pool's four threads serve fs, dns and
// crypto too), and hands the result back through a thread-safe function (util/thread.h).
//
// It polls a dup of the fd, so a number closed and reused meanwhile is never polled; an eventfd
// wakes the thread for close().
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "addon.h"
#include "util/args.h"
#include "util/errors.h"
#include "util/thread.h"

namespace kg {

// new FdWatch(fd): waits for `fd` (a dup of it, close-on-exec) to become readable, on a thread
// of its own. wait(timeoutMs) -> Promise<1 readable | 0 timeout | 2 closed | -errno>: readable
// includes POLLHUP and POLLERR (the next read says what happened); -EBADF for POLLNVAL.
// One wait at a time. close() stops the thread (a wait in flight settles with 2) and closes
// the dup. Idempotent.
class FdWatch : public ThreadedWrap<FdWatch> {
  friend class ThreadedWrap<FdWatch>;

 public:
  static constexpr int kTimeout = 0, kReadable = 1, kClosed = 2;

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatch",
                       {
                           InstanceMethod<&FdWatch::Wait>("wait"),
                           InstanceMethod<&FdWatch::Close>("close"),
                       });
  }

  FdWatch(const Napi::CallbackInfo& info) : ThreadedWrap<FdWatch>(info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0, "fd");
    fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) ThrowSys(env, errno, "fcntl", nullptr, Fmt("fd %d, F_DUPFD_CLOEXEC", fd));
    efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0) {
      int err = errno;
      close(fd_);
      fd_ = -1;
      ThrowSys(env, err, "eventfd", nullptr, "EFD_CLOEXEC | EFD_NONBLOCK");
    }
  }

  ~FdWatch() override {
    Shutdown();
    CloseFds();
  }

 private:
  Napi::Value Wait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int timeout = ArgTimeout(info, 0, "timeoutMs");
    if (closed_) ThrowState(env, "ERR_KVM_CLOSED", "wait: the fd watch is closed");
    if (busy_) ThrowState(env, "ERR_KVM_BUSY", "wait: a wait is already in flight on this fd watch");
    EnsureThread(env, "kvm-gmem fd watch", "the fd watch thread");
    Napi::Promise promise = Begin(env);
    {
      std::lock_guard<std::mutex> lk(mu_);
      timeout_ = timeout;
      request_ = true;
      cv_.notify_one();
    }
    return promise;
  }

  // A wait in flight is answered kClosed, and still delivered (see ReleaseTsfn).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (closed_) return info.Env().Undefined();
    Shutdown();
    CloseFds();
    return info.Env().Undefined();
  }

  void ThreadMain() {
    for (;;) {
      int timeout;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [this] { return request_ || quit_; });
        if (!request_) return;  // quitting with no wait in flight
        request_ = false;
        timeout = timeout_;
      }
      Post(PollOnce(timeout));
    }
  }

  // Waits for the fd or the eventfd (close). A wait is always answered, even when quitting.
  int PollOnce(int timeout) {
    int64_t deadline = timeout < 0 ? -1 : MonotonicMs() + timeout;
    for (;;) {
      if (quit_.load()) return kClosed;
      pollfd p[2] = {{fd_, POLLIN, 0}, {efd_, POLLIN, 0}};
      int wait = -1;
      if (deadline >= 0) {
        int64_t left = deadline - MonotonicMs();
        wait = left > 0 ? static_cast<int>(left) : 0;
      }
      int n = poll(p, 2, wait);
      if (n < 0) {
        if (errno == EINTR) continue;
        return -errno;
      }
      if (p[1].revents != 0 || quit_.load()) return kClosed;
      if (p[0].revents & POLLNVAL) return -EBADF;
      if (p[0].revents != 0) return kReadable;
      if (n == 0 && deadline >= 0 && MonotonicMs() >= deadline) return kTimeout;
    }
  }

  // Before the join in StopThread(): the thread may be in poll().
  void InterruptForStop() {
    uint64_t one = 1;
    if (write(efd_, &one, sizeof one) < 0) {
      // The counter cannot overflow from one write per close; quit_ is set either way.
    }
  }

  // At environment teardown the dup and the eventfd close now, not when the object is finalized.
  void OnEnvTeardown() { CloseFds(); }

  void CloseFds() {
    if (fd_ >= 0) close(fd_);
    if (efd_ >= 0) close(efd_);
    fd_ = efd_ = -1;
  }

  int fd_ = -1;
  int efd_ = -1;
  bool request_ = false;  // under mu_
  int timeout_ = -1;      // under mu_
};

void InitFdWatch(Napi::Env env, Napi::Object exports) { exports.Set("FdWatch", FdWatch::Define(env)); }

}  // namespace kg
