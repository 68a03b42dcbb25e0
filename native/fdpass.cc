// Passing file descriptors between processes over Unix domain sockets (SCM_RIGHTS).
//
// One function per kernel call, no policy (lib/fd-channel.ts holds the protocol):
//   socketPair()              socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)
//   unixListen(path, backlog) socket + bind + listen (SOCK_SEQPACKET, CLOEXEC, NONBLOCK)
//   unixConnect(path)         socket + connect (SOCK_SEQPACKET, CLOEXEC)
//   unixAccept(fd)            accept4(SOCK_CLOEXEC), non-blocking: -1 when nobody is waiting
//   socketType(fd)            getsockopt SO_DOMAIN / SO_TYPE / SO_ACCEPTCONN
//   sendMsg(fd, bytes, fds, timeoutMs)   sendmsg with SCM_RIGHTS (MSG_NOSIGNAL | MSG_DONTWAIT,
//                             poll(POLLOUT) while the peer's queue is full, up to timeoutMs, or
//                             until the calling environment stops)
//   recvMsg(fd, maxBytes, maxFds)        recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC)
//   FdWatch                   waits for an fd to become readable on a thread of its own
//
// Every socket is created close-on-exec, and every received fd arrives close-on-exec
// (MSG_CMSG_CLOEXEC sets it atomically in the kernel). recvMsg parses every control message and,
// when the message cannot be handed out whole (control data truncated, payload truncated, more
// fds than the caller asked for), closes every fd the kernel installed before it returns.
//
// Waiting: FdWatch polls a dup of the fd (so a closed and reused number can never be polled) on a
// long-lived thread of its own, never on the libuv pool (a receive may wait for minutes, and four
// pool threads are shared with fs, dns and crypto), and hands the result back through a
// thread-safe function. An eventfd wakes the thread for close().
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "args.h"
#include "objects.h"

namespace kg {
namespace {

// The kernel's SCM_MAX_FD: at most this many fds in one SCM_RIGHTS message.
constexpr uint32_t kScmMaxFd = 253;
// The largest payload either call accepts (the kernel's own limit for a SEQPACKET message is
// the socket's send buffer, about 208 KiB by default).
constexpr uint32_t kMaxBytes = 16u << 20;
// How often a send that waits for room asks whether its environment is stopping.
constexpr int kStopCheckMs = 100;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// A Unix socket address for `path` (not abstract: the path has no NUL byte).
sockaddr_un UnixAddr(const Napi::CallbackInfo& info, const std::string& path, socklen_t* len) {
  sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) {
    throw Napi::RangeError::New(info.Env(), Fmt("The \"path\" argument must be 1 to %zu bytes long (got %zu)",
                                                sizeof a.sun_path - 1, path.size()));
  }
  memcpy(a.sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return a;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);  // Linux releases the fd even on EINTR: never retry
}

// A timeout in milliseconds: an integer in [-1, 2^31 - 1], -1 meaning no limit.
int ArgTimeout(const Napi::CallbackInfo& info, size_t i, const char* name) {
  int32_t t = ArgI32(info, i, name);
  if (t < -1) {
    throw Napi::RangeError::New(info.Env(), Fmt("The \"%s\" argument must be -1 (no limit) or >= 0 (got %d)", name, t));
  }
  return t;
}

// socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) -> [fd, fd].
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    ThrowSys(info.Env(), errno, "socketpair", nullptr, "AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC");
  }
  Napi::Array a;
  try {
    a = Napi::Array::New(info.Env(), 2);
    a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
    a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  } catch (...) {
    close(sv[0]);
    close(sv[1]);
    throw;
  }
  RecordCreated(sv[0]);
  RecordCreated(sv[1]);
  return a;
}

// unixListen(path, backlog) -> fd: socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK),
// bind(path), listen(backlog). The socket is closed again if bind or listen fails. Never unlinks.
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  int32_t backlog = ArgI32(info, 1, "backlog");
  if (backlog < 1) throw Napi::RangeError::New(env, Fmt("The \"backlog\" argument must be >= 1 (got %d)", backlog));
  socklen_t len;
  sockaddr_un addr = UnixAddr(info, path, &len);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) ThrowSys(env, errno, "socket", nullptr, "AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK");
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    int err = errno;
    close(fd);
    ThrowSys(env, err, "bind", nullptr, Fmt("'%s'", path.c_str()));
  }
  if (listen(fd, backlog) != 0) {
    int err = errno;
    close(fd);  // the socket file stays: the caller made the path and removes it
    ThrowSys(env, err, "listen", nullptr, Fmt("'%s', backlog %d", path.c_str(), backlog));
  }
  return NewFd(env, fd);
}

// unixConnect(path) -> fd: socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) + connect(path). The
// connect is non-blocking (EAGAIN when the listener's backlog is full: the caller retries);
// the connected socket is then made blocking again, like the ones socketPair and unixAccept give.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  socklen_t len;
  sockaddr_un addr = UnixAddr(info, path, &len);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) ThrowSys(env, errno, "socket", nullptr, "AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK");
  // A Unix connect completes at once or fails; EINTR cannot leave it half done.
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    int err = errno;
    close(fd);
    ThrowSys(env, err, "connect", nullptr, Fmt("'%s'", path.c_str()));
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    int err = errno;
    close(fd);
    ThrowSys(env, err, "fcntl", nullptr, Fmt("fd %d, F_SETFL ~O_NONBLOCK", fd));
  }
  return NewFd(env, fd);
}

// unixAccept(fd) -> the connection's fd (SOCK_CLOEXEC), or -1 when no connection is waiting
// (EAGAIN, or ECONNABORTED: one that went away while queued). The listener must be
// non-blocking (unixListen makes it so) for this not to block.
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int c;
  do {
    c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
  } while (c < 0 && errno == EINTR);
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return Napi::Number::New(env, -1);
    ThrowSys(env, errno, "accept4", nullptr, Fmt("fd %d, SOCK_CLOEXEC", fd));
  }
  return NewFd(env, c);
}

// socketType(fd) -> { domain, type, listening }: getsockopt(SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN).
// ENOTSOCK for an fd that is not a socket.
Napi::Value SocketType(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int domain = 0, type = 0, acc = 0;
  socklen_t l = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) != 0) {
    ThrowSys(env, errno, "getsockopt", nullptr, Fmt("fd %d, SO_DOMAIN", fd));
  }
  l = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0) {
    ThrowSys(env, errno, "getsockopt", nullptr, Fmt("fd %d, SO_TYPE", fd));
  }
  l = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) != 0) {
    ThrowSys(env, errno, "getsockopt", nullptr, Fmt("fd %d, SO_ACCEPTCONN", fd));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("domain", Napi::Number::New(env, domain));
  o.Set("type", Napi::Number::New(env, type));
  o.Set("listening", Napi::Boolean::New(env, acc != 0));
  return o;
}

// sendMsg(fd, bytes, fds, timeoutMs) -> bytes sent, or -1 if the peer's queue stayed full for
// timeoutMs. One sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT) with the fds as one SCM_RIGHTS control
// message (none when fds is empty); while it gives EAGAIN, poll(POLLOUT) waits for room, up to
// timeoutMs (-1: no limit), or -1 as well once the calling environment is stopping (a Worker's
// terminate(), process.exit()). On a SEQPACKET socket a message goes whole or not at all.
// Errors: EPIPE when the peer is gone, EBADF for a closed fd in `fds`, ETOOMANYREFS...
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array bytes = ArgBytes(info, 1, "bytes");
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "The \"fds\" argument must be an array");
  int timeout = ArgTimeout(info, 3, "timeoutMs");
  Napi::Array arr = info[2].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > kScmMaxFd) {
    throw Napi::RangeError::New(env, Fmt("The \"fds\" argument must hold at most %u fds (got %u)", kScmMaxFd, n));
  }
  std::vector<int> fds(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(i);
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok) {
      throw Napi::TypeError::New(env, Fmt("The \"fds[%u]\" element must be a file descriptor (integer)", i));
    }
    if (!(d >= 0 && d <= 2147483647.0) || static_cast<double>(static_cast<int>(d)) != d) {
      throw Napi::RangeError::New(env, Fmt("The \"fds[%u]\" element must be a file descriptor (integer >= 0)", i));
    }
    fds[i] = static_cast<int>(d);
  }
  size_t len = bytes.ByteLength();
  if (len > kMaxBytes) {
    throw Napi::RangeError::New(env, Fmt("The \"bytes\" argument must be at most %u bytes (got %zu)", kMaxBytes, len));
  }
  // Copy the payload: reading JavaScript memory is done before any system call that may wait.
  std::vector<uint8_t> data(bytes.Data(), bytes.Data() + len);
  iovec iov{data.data(), len};
  std::vector<char> control(n > 0 ? CMSG_SPACE(sizeof(int) * n) : 0);
  msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (n > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * n);
  }
  int64_t deadline = timeout < 0 ? -1 : NowMs() + timeout;
  for (;;) {
    ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0) return Napi::Number::New(env, static_cast<double>(r));
    int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) {
      ThrowSys(env, err, "sendmsg", nullptr, Fmt("fd %d, %zu bytes, %u fds (SCM_RIGHTS)", fd, len, n));
    }
    int wait = kStopCheckMs;
    if (deadline >= 0) {
      int64_t left = deadline - NowMs();
      if (left <= 0) return Napi::Number::New(env, -1);
      if (left < wait) wait = static_cast<int>(left);
    }
    pollfd p{fd, POLLOUT, 0};
    int pr = poll(&p, 1, wait);
    if (pr < 0 && errno != EINTR) ThrowSys(env, errno, "poll", nullptr, Fmt("fd %d, POLLOUT", fd));
    // This wait is on the JavaScript thread, where a Worker's terminate() cannot reach: give up
    // (as a timeout: nothing was sent) once the environment is stopping.
    if (pr == 0 && EnvStopping(env)) return Napi::Number::New(env, -1);
    // On POLLOUT, POLLERR or POLLHUP the next sendmsg says what happened.
  }
}

// recvMsg(fd, maxBytes, maxFds) -> undefined when no message is waiting (EAGAIN), else
// { bytes, fds, flags, closed, eof, room }: one recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC) into a buffer of
// maxBytes and room for maxFds fds. `flags` is msg_flags (MSG_TRUNC 0x20, MSG_CTRUNC 0x8).
// Every control message is parsed; all SCM_RIGHTS fds are gathered. When the control data was
// truncated (MSG_CTRUNC), the payload was truncated (MSG_TRUNC) or more than maxFds fds came,
// every fd the kernel installed is closed here: `fds` is then empty and `closed` counts them.
// `eof` tells the peer's close (or shutdown) from an empty message; `room` is how many fds the
// control buffer could hold. Errors: EMFILE/ENFILE when the fd table filled up while the
// message's fds were installed (the message is consumed, its fds closed); ECONNRESET (the peer closed with messages of ours unread), EBADF, ENOTSOCK...
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t maxBytes = ArgU32(info, 1, "maxBytes");
  uint32_t maxFds = ArgU32(info, 2, "maxFds");
  if (maxBytes < 1 || maxBytes > kMaxBytes) {
    throw Napi::RangeError::New(env, Fmt("The \"maxBytes\" argument must be in [1, %u] (got %u)", kMaxBytes, maxBytes));
  }
  if (maxFds > kScmMaxFd) {
    throw Napi::RangeError::New(env, Fmt("The \"maxFds\" argument must be in [0, %u] (got %u)", kScmMaxFd, maxFds));
  }
  std::vector<uint8_t> data(maxBytes);
  // Aligned control buffer; CMSG_SPACE rounds up, so it may hold one fd more than maxFds: the
  // count is checked below as well.
  std::vector<uint64_t> control(maxFds > 0 ? (CMSG_SPACE(sizeof(int) * maxFds) + 7) / 8 : 0);
  iovec iov{data.data(), data.size()};
  msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!control.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size() * 8;
  }
  ssize_t r;
  do {
    r = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Undefined();
    ThrowSys(env, errno, "recvmsg", nullptr, Fmt("fd %d, %u bytes, room for %u fds, MSG_CMSG_CLOEXEC", fd, maxBytes, maxFds));
  }
  // Gather every fd of every SCM_RIGHTS message before anything can throw.
  std::vector<int> fds;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
      const unsigned char* p = CMSG_DATA(c);
      // Never read past the buffer, whatever cmsg_len says.
      const unsigned char* end = reinterpret_cast<const unsigned char*>(msg.msg_control) + msg.msg_controllen;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      if (p > end) k = 0;
      else if (k > static_cast<size_t>(end - p) / sizeof(int)) k = static_cast<size_t>(end - p) / sizeof(int);
      for (size_t j = 0; j < k; j++) {
        int v;
        memcpy(&v, p + j * sizeof(int), sizeof v);
        fds.push_back(v);
      }
    }
  }
  // The kernel echoes MSG_CMSG_CLOEXEC (our own request) back in msg_flags: leave it out.
  int flags = msg.msg_flags & ~MSG_CMSG_CLOEXEC;
  // MSG_CTRUNC with room left for more fds: the kernel stopped installing them (scm_detach_fds
  // gives up at the first failure), not for want of room. Ask the fd table why before the fds
  // received are closed: EMFILE/ENFILE when it is full.
  size_t room = control.empty() ? 0 : (control.size() * 8 - CMSG_LEN(0)) / sizeof(int);
  int installErrno = 0;
  if ((flags & MSG_CTRUNC) != 0 && fds.size() < room) {
    int probe = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (probe < 0) installErrno = errno;
    else close(probe);
  }
  uint32_t closed = 0;
  if ((flags & (MSG_CTRUNC | MSG_TRUNC)) != 0 || fds.size() > maxFds) {
    CloseAll(fds);
    closed = static_cast<uint32_t>(fds.size());
    fds.clear();
  }
  if (installErrno != 0) {
    ThrowSys(env, installErrno, "recvmsg", nullptr,
             Fmt("fd %d: the kernel installed %u of the message's fds, then the fd table was full (SCM_RIGHTS); "
                 "the message was consumed and the %u fds closed",
                 fd, closed, closed));
  }
  // A 0-byte result with no fds is either the peer's end of stream or an empty message from a
  // live peer (SEQPACKET keeps message boundaries): only the former leaves RCV_SHUTDOWN set.
  bool eof = false;
  if (r == 0 && fds.empty() && closed == 0) {
    pollfd p{fd, POLLRDHUP, 0};
    eof = poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0;
  }
  try {
    Napi::Object o = Napi::Object::New(env);
    size_t n = static_cast<size_t>(r) < data.size() ? static_cast<size_t>(r) : data.size();
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, n);
    if (n > 0) memcpy(ab.Data(), data.data(), n);
    o.Set("bytes", Napi::Uint8Array::New(env, n, ab, 0));
    Napi::Array fa = Napi::Array::New(env, fds.size());
    for (size_t j = 0; j < fds.size(); j++) fa.Set(static_cast<uint32_t>(j), Napi::Number::New(env, fds[j]));
    o.Set("fds", fa);
    o.Set("flags", Napi::Number::New(env, flags));
    o.Set("closed", Napi::Number::New(env, closed));
    o.Set("eof", Napi::Boolean::New(env, eof));
    o.Set("room", Napi::Number::New(env, static_cast<double>(room)));
    for (int f : fds) RecordCreated(f);
    return o;
  } catch (...) {
    CloseAll(fds);  // nothing reached JavaScript: the fds must not leak
    throw;
  }
}

struct WaitResult {
  int code;  // FdWatch::kReadable, kTimeout, kClosed, or -errno
};

}  // namespace

// new FdWatch(fd): waits for `fd` (a dup of it, close-on-exec) to become readable, on a thread
// of its own. wait(timeoutMs) -> Promise<1 readable | 0 timeout | 2 closed | -errno>: readable
// includes POLLHUP and POLLERR (the next read says what happened); -EBADF for POLLNVAL.
// One wait at a time. close() stops the thread (a wait in flight settles with 2) and closes
// the dup. Idempotent.
class FdWatch : public Napi::ObjectWrap<FdWatch> {
 public:
  static constexpr int kTimeout = 0, kReadable = 1, kClosed = 2;

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatch",
                       {
                           InstanceMethod<&FdWatch::Wait>("wait"),
                           InstanceMethod<&FdWatch::Close>("close"),
                       });
  }

  FdWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatch>(info) {
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
    closed_ = true;
    StopThread();
    ReleaseTsfn();
    RemoveHook();
    CloseFds();
  }

 private:
  Napi::Value Wait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int timeout = ArgTimeout(info, 0, "timeoutMs");
    if (closed_) {
      Napi::Error e = Napi::Error::New(env, "wait: the fd watch is closed");
      e.Set("code", Napi::String::New(env, "ERR_KVM_CLOSED"));
      throw e;
    }
    if (busy_) throw Napi::Error::New(env, "wait: a wait is already in flight on this fd watch");
    if (!thread_.joinable()) StartThread(env);
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    Napi::Promise promise = deferred.Promise();
    deferred_.emplace(std::move(deferred));
    busy_ = true;
    Ref();           // the watch must outlive the wait it started
    tsfn_.Ref(env);  // and a wait in flight keeps the event loop alive, like pending I/O
    {
      std::lock_guard<std::mutex> lk(mu_);
      timeout_ = timeout;
      request_ = true;
      cv_.notify_one();
    }
    return promise;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (closed_) return info.Env().Undefined();
    closed_ = true;
    StopThread();   // a wait in flight is answered kClosed through the thread-safe function
    ReleaseTsfn();  // which still delivers what is queued
    RemoveHook();
    CloseFds();
    return info.Env().Undefined();
  }

  void StartThread(Napi::Env env) {
    tsfn_ = Tsfn::New(env, "kvm-gmem fd watch", 0, 1, this);
    tsfn_.Unref(env);
    tsfnLive_ = true;
    env_ = env;
    if (napi_add_env_cleanup_hook(env, OnEnvCleanup, this) == napi_ok) hook_ = true;
    // No signal meant for the process may land on this thread.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
      thread_ = std::thread([this] { Loop(); });
    } catch (const std::system_error& e) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      ReleaseTsfn();
      RemoveHook();
      // EAGAIN when the process is out of threads (pids cgroup, RLIMIT_NPROC, memory for the stack).
      ThrowSys(env, e.code().value(), "pthread_create", nullptr, "the fd watch thread");
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  void Loop() {
    for (;;) {
      int timeout;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [this] { return request_ || quit_; });
        if (!request_) return;  // quitting with no wait in flight
        request_ = false;
        timeout = timeout_;
      }
      int code = PollOnce(timeout);
      auto* r = new WaitResult{code};
      if (tsfn_.BlockingCall(r) != napi_ok) delete r;
    }
  }

  // Waits for the fd or the eventfd (close). A wait is always answered, even when quitting.
  int PollOnce(int timeout) {
    int64_t deadline = timeout < 0 ? -1 : NowMs() + timeout;
    for (;;) {
      if (quit_.load()) return kClosed;
      pollfd p[2] = {{fd_, POLLIN, 0}, {efd_, POLLIN, 0}};
      int wait = -1;
      if (deadline >= 0) {
        int64_t left = deadline - NowMs();
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
      if (n == 0 && deadline >= 0 && NowMs() >= deadline) return kTimeout;
    }
  }

  void StopThread() {
    if (!thread_.joinable()) return;
    quit_.store(true);
    {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_one();
    }
    uint64_t one = 1;
    if (write(efd_, &one, sizeof one) < 0) {
      // The counter cannot overflow from one write per close; quit_ is set either way.
    }
    thread_.join();
  }

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

  void CloseFds() {
    if (fd_ >= 0) close(fd_);
    if (efd_ >= 0) close(efd_);
    fd_ = efd_ = -1;
  }

  // At environment teardown (a worker ending, process exit): a wait in flight is answered
  // kClosed, and the dup and the eventfd are closed now, not whenever the object is finalized.
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<FdWatch*>(arg);
    self->hook_ = false;
    self->closed_ = true;
    self->StopThread();
    self->ReleaseTsfn();
    self->CloseFds();
  }

  // Never throws: it runs from the thread-safe function, also during environment teardown.
  void Settle(Napi::Env env, int code) {
    busy_ = false;
    try {
      if (tsfnLive_) tsfn_.Unref(env);
      std::optional<Napi::Promise::Deferred> d = std::move(deferred_);
      deferred_.reset();
      if (d) d->Resolve(Napi::Number::New(env, code));
    } catch (...) {
    }
    try {
      Unref();
    } catch (...) {
    }
  }

  static void CallJs(Napi::Env env, Napi::Function, FdWatch* self, WaitResult* r) {
    int code = r->code;
    delete r;
    if (env == nullptr || self == nullptr) return;  // the function is being torn down
    self->Settle(env, code);
  }

  using Tsfn = Napi::TypedThreadSafeFunction<FdWatch, WaitResult, &FdWatch::CallJs>;

  int fd_ = -1;
  int efd_ = -1;
  bool closed_ = false;
  bool busy_ = false;
  std::optional<Napi::Promise::Deferred> deferred_;
  Tsfn tsfn_;
  bool tsfnLive_ = false;
  bool hook_ = false;
  napi_env env_ = nullptr;

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool request_ = false;  // under mu_
  int timeout_ = -1;      // under mu_
  std::atomic<bool> quit_{false};
};

void InitFdPass(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("socketType", Napi::Function::New(env, SocketType, "socketType"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("FdWatch", FdWatch::Define(env));
}

}  // namespace kg
