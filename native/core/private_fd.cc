// CreateFdPrivately: a file made without O_CLOEXEC never sits in the process's fd table without
// close-on-exec, so no child, forked from any thread at any moment, can inherit it.
//
// KVM_CREATE_GUEST_MEMFD has no cloexec flag, and setting FD_CLOEXEC afterwards leaves a window
// in which a fork from another thread (a Worker's spawnSync, libuv's pool) copies the fd into a
// child that keeps it across exec. So the fd is made on a short-lived thread whose fd table is a
// private copy (no fork copies that table: nothing else runs on the thread) and sent back over a
// socketpair; recvmsg(MSG_CMSG_CLOEXEC) installs it in the process's table already close-on-exec.
//
// The copy is cut down to the two fds the thread needs as it is made: close_range(b + 1, ~0U,
// CLOSE_RANGE_UNSHARE) copies only fds 0..b (the kernel skips the range it is about to close),
// and the rest below b are closed at once. So the copy references no other open file but for a
// moment (closing a file there is what a fork does too), and none at all after.
// A fresh thread per call keeps no state: nothing to pass the VM fd to, no fd of the library's
// open between calls, nothing to restart after fork().
#include "core/private_fd.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#ifndef SYS_close_range
#define SYS_close_range 436  // x86_64, Linux 5.9
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

namespace kg {
namespace {

struct Job {
  int keep;  // the fd make() uses: the same number in the copy
  int sock;  // this thread's end of the socketpair
  int (*make)(void*);
  void* ctx;
  FdError error;
};

// The thread's stack, one for all calls, which take turns on it. glibc gives a thread's own stack
// back with madvise(MADV_DONTNEED) as the thread ends: a TLB shootdown on every CPU this process
// runs on, which costs more than everything else here. A caller's stack it leaves be.
pthread_mutex_t stack_lock = PTHREAD_MUTEX_INITIALIZER;
alignas(64) char stack[64 * 1024];

int CloseRange(unsigned first, unsigned last, unsigned flags) {
  return static_cast<int>(syscall(SYS_close_range, first, last, flags));
}

// Gives this thread a private fd table holding only fds a and b (distinct). Returns 0 or errno;
// on failure the thread still shares the process's table and nothing was closed.
int KeepOnly(int a, int b) {
  unsigned lo = static_cast<unsigned>(std::min(a, b));
  unsigned hi = static_cast<unsigned>(std::max(a, b));
  if (CloseRange(hi + 1, ~0U, CLOSE_RANGE_UNSHARE) != 0) return errno;
  if (lo > 0) CloseRange(0, lo - 1, 0);
  if (hi > lo + 1) CloseRange(lo + 1, hi - 1, 0);
  return 0;
}

// A message of one byte with room for one fd, the same at both ends. Never copied: msg points
// into it.
struct OneFdMessage {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  OneFdMessage() {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  OneFdMessage(const OneFdMessage&) = delete;
  OneFdMessage& operator=(const OneFdMessage&) = delete;
};

// Sends fd over sock (SCM_RIGHTS, one byte of payload). Returns 0 or errno.
int SendFd(int sock, int fd) {
  OneFdMessage m;
  msghdr& msg = m.msg;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  ssize_t r;
  do {
    r = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? errno : 0;
}

// Receives the one fd the thread sent (already queued: the thread has been joined), close-on-exec
// from the start. Returns it, or -1 with *error set; any other fd that came along is closed.
int ReceiveFd(int sock, FdError* error) {
  OneFdMessage m;
  msghdr& msg = m.msg;
  ssize_t r;
  do {
    r = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    *error = {errno, "recvmsg"};
    return -1;
  }
  int fd = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int got;
      std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (fd < 0) {
        fd = got;
      } else {
        close(got);
      }
    }
  }
  if (fd < 0 || (msg.msg_flags & MSG_CTRUNC) != 0) {
    if (fd >= 0) close(fd);
    // No number was left to install the fd at: say so as the plain creation would have.
    int probe = fcntl(sock, F_DUPFD_CLOEXEC, 0);
    int err = probe < 0 ? errno : EPROTO;
    if (probe >= 0) close(probe);
    *error = {err, "recvmsg"};
    return -1;
  }
  return fd;
}

void* Run(void* p) {
  Job* job = static_cast<Job*>(p);
  int err = KeepOnly(job->keep, job->sock);
  if (err != 0) {
    job->error = {err, "close_range"};
    return nullptr;  // still on the shared table: close nothing
  }
  int fd = job->make(job->ctx);
  if (fd < 0) {
    job->error = {errno, nullptr};
  } else {
    err = SendFd(job->sock, fd);
    if (err != 0) job->error = {err, "sendmsg"};
    close(fd);
  }
  // Empty the private table now: the thread's exit releases it only after pthread_join returns.
  close(job->keep);
  close(job->sock);
  return nullptr;
}

}  // namespace

int CreateFdPrivately(int keep, int (*make)(void* ctx), void* ctx, FdError* error) {
  // A closed `keep` is make()'s EBADF, as it always was; were it left to the thread, the
  // socketpair could take its number and make() would act on a socket instead.
  if (fcntl(keep, F_GETFD) < 0) {
    *error = {errno, nullptr};
    return -1;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) {
    *error = {errno, "socketpair"};
    return -1;
  }
  Job job{keep, sv[1], make, ctx, {}};
  pthread_mutex_lock(&stack_lock);
  pthread_attr_t attr;
  bool have_attr = pthread_attr_init(&attr) == 0;
  if (have_attr) pthread_attr_setstack(&attr, stack, sizeof(stack));
  // On this CPU: the caller only waits for it, and a new thread is otherwise placed on an idle
  // CPU, which costs a wake-up from idle both ways.
  int cpu = sched_getcpu();
  if (have_attr && cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
  }
  // With every signal blocked: a handler run there would see the private table, in which the
  // fds it writes to (libuv's signal pipe) are not open.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  int rc = pthread_create(&thread, have_attr ? &attr : nullptr, Run, &job);
  // EINVAL: the CPU left this thread's cpuset meanwhile; anywhere will do.
  if (rc == EINVAL && have_attr) rc = pthread_create(&thread, nullptr, Run, &job);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (have_attr) pthread_attr_destroy(&attr);
  if (rc == 0) pthread_join(thread, nullptr);
  pthread_mutex_unlock(&stack_lock);
  int fd = -1;
  // The sending end first: its number is then free for the fd (the message stays queued), so
  // two free numbers are enough, as for the socket pair itself.
  close(sv[1]);
  if (rc != 0) {
    *error = {rc, "pthread_create"};
  } else if (job.error.err != 0) {
    *error = job.error;
  } else {
    fd = ReceiveFd(sv[0], error);
  }
  close(sv[0]);
  // The socket pair took the lowest numbers: move the fd down to the lowest free one, as a plain
  // creation would have given (still close-on-exec: F_DUPFD_CLOEXEC).
  if (fd >= 0) {
    int low = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (low >= 0 && low < fd) {
      close(fd);
      fd = low;
    } else if (low >= 0) {
      close(low);
    }
  }
  return fd;
}

}  // namespace kg
