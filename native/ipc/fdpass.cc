// Passing file descriptors between processes over Unix domain sockets (SCM_RIGHTS).
//
// One function per kernel call, no policy (lib's FdChannel holds the protocol):
//   socketPair()              socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)
//   unixListen(path, backlog) socket + bind + listen (SOCK_SEQPACKET, CLOEXEC, NONBLOCK)
//   unixConnect(path)         socket + connect (SOCK_SEQPACKET, CLOEXEC)
//   unixAccept(fd)            accept4(SOCK_CLOEXEC), non-blocking: -1 when nobody is waiting
//   socketType(fd)            getsockopt SO_DOMAIN / SO_TYPE / SO_ACCEPTCONN
//   sendMsg(fd, bytes, fds, timeoutMs)   sendmsg with SCM_RIGHTS (MSG_NOSIGNAL | MSG_DONTWAIT,
//                             poll(POLLOUT) while the peer's queue is full, up to timeoutMs, or
//                             until the calling environment stops)
//   recvMsg(fd, maxBytes, maxFds)        recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC)
//   FdWatch                   (fd_watch.cc) waits for an fd to become readable
//
// Every socket is created close-on-exec, and every received fd arrives close-on-exec
// (MSG_CMSG_CLOEXEC sets it atomically in the kernel). recvMsg parses every control message and,
// when the message cannot be handed out whole (control data truncated, payload truncated, more
// fds than the caller asked for), closes every fd the kernel installed before it returns.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "addon.h"
#include "core/fd.h"
#include "util/args.h"
#include "util/errors.h"
#include "util/limits.h"
#include "util/thread.h"

namespace kg {
namespace {

using limits::kMaxFdsPerMessage;
using limits::kMaxPayload;
static_assert(limits::kMaxSocketPathBytes == sizeof(sockaddr_un::sun_path) - 1, "sun_path holds the path and its NUL");
// How often a send that waits for room asks whether its environment is stopping.
constexpr int kStopCheckMs = 100;

// A Unix socket address for `path` (not abstract: the path has no NUL byte).
sockaddr_un UnixAddr(const Napi::CallbackInfo& info, const std::string& path, socklen_t* len) {
  sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() > limits::kMaxSocketPathBytes) {
    ThrowArg(
        info.Env(), ArgError::kRange,
        Fmt("The \"path\" argument must be 1 to %u bytes long (got %zu)", limits::kMaxSocketPathBytes, path.size()));
  }
  memcpy(a.sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return a;
}

// A socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK) for `path`, and its address.
int SeqpacketSocket(const Napi::CallbackInfo& info, const std::string& path, sockaddr_un* addr, socklen_t* len) {
  *addr = UnixAddr(info, path, len);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) ThrowSys(info.Env(), errno, "socket", nullptr, "AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK");
  return fd;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);  // Linux releases the fd even on EINTR: never retry
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
  if (backlog < 1) ThrowArg(env, ArgError::kRange, Fmt("The \"backlog\" argument must be >= 1 (got %d)", backlog));
  sockaddr_un addr;
  socklen_t len;
  int fd = SeqpacketSocket(info, path, &addr, &len);
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
  sockaddr_un addr;
  socklen_t len;
  int fd = SeqpacketSocket(info, path, &addr, &len);
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
  if (info.Length() < 3 || !info[2].IsArray()) ThrowArg(env, ArgError::kType, "The \"fds\" argument must be an array");
  int timeout = ArgTimeout(info, 3, "timeoutMs");
  Napi::Array arr = info[2].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > kMaxFdsPerMessage) {
    ThrowArg(env, ArgError::kRange,
             Fmt("The \"fds\" argument must hold at most %u fds (got %u)", kMaxFdsPerMessage, n));
  }
  std::vector<int> fds(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(i);
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok) {
      ThrowArg(env, ArgError::kType, Fmt("The \"fds[%u]\" element must be a file descriptor (integer)", i));
    }
    if (!(d >= 0 && d <= 2147483647.0) || static_cast<double>(static_cast<int>(d)) != d) {
      ThrowArg(env, ArgError::kRange, Fmt("The \"fds[%u]\" element must be a file descriptor (integer >= 0)", i));
    }
    fds[i] = static_cast<int>(d);
  }
  size_t len = bytes.ByteLength();
  if (len > kMaxPayload) {
    ThrowArg(env, ArgError::kRange, Fmt("The \"bytes\" argument must be at most %u bytes (got %zu)", kMaxPayload, len));
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
  int64_t deadline = timeout < 0 ? -1 : MonotonicMs() + timeout;
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
      int64_t left = deadline - MonotonicMs();
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
// message's fds were installed (the message is consumed, its fds closed); ECONNRESET (the peer closed with messages of
// ours unread), EBADF, ENOTSOCK...
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t maxBytes = ArgU32(info, 1, "maxBytes");
  uint32_t maxFds = ArgU32(info, 2, "maxFds");
  if (maxBytes < 1 || maxBytes > kMaxPayload) {
    ThrowArg(env, ArgError::kRange,
             Fmt("The \"maxBytes\" argument must be in [1, %u] (got %u)", kMaxPayload, maxBytes));
  }
  if (maxFds > kMaxFdsPerMessage) {
    ThrowArg(env, ArgError::kRange,
             Fmt("The \"maxFds\" argument must be in [0, %u] (got %u)", kMaxFdsPerMessage, maxFds));
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
    ThrowSys(env, errno, "recvmsg", nullptr,
             Fmt("fd %d, %u bytes, room for %u fds, MSG_CMSG_CLOEXEC", fd, maxBytes, maxFds));
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
      if (p > end)
        k = 0;
      else if (k > static_cast<size_t>(end - p) / sizeof(int))
        k = static_cast<size_t>(end - p) / sizeof(int);
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
    if (probe < 0)
      installErrno = errno;
    else
      close(probe);
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

}  // namespace

void InitFdPass(Napi::Env env, Napi::Object exports) {
  ExportFunctions(env, exports,
                  {{"socketPair", SocketPair},
                   {"unixListen", UnixListen},
                   {"unixConnect", UnixConnect},
                   {"unixAccept", UnixAccept},
                   {"socketType", SocketType},
                   {"sendMsg", SendMsg},
                   {"recvMsg", RecvMsg}});
}

}  // namespace kg
