// Creating an fd that the kernel hands out without O_CLOEXEC, where no child can inherit it.
#pragma once

namespace kg {

// Why CreateFdPrivately failed: the positive errno, and the call that gave it (nullptr when it
// was make() itself, whose caller knows what that call was).
struct FdError {
  int err = 0;
  const char* syscall = nullptr;
};

// Runs make(ctx) on a new thread with a private fd table holding only `keep` (at its number) and
// moves the fd make() returns into the process's table with SCM_RIGHTS and MSG_CMSG_CLOEXEC: it
// is close-on-exec from its first moment there, whichever thread forks meanwhile. make() returns
// an fd, or -1 with errno set. Returns the new fd, or -1 with *error set and nothing left open.
// The thread has ended (and holds no file) when this returns.
int CreateFdPrivately(int keep, int (*make)(void* ctx), void* ctx, FdError* error);

}  // namespace kg
