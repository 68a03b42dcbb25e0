// What core/fd.cc offers the files that make fds: the environment's record of them.
#pragma once

#include <napi.h>

namespace kg {

// Records an fd the addon just made in this environment's fd record, before JavaScript sees it,
// so that a Worker ended before the owning object exists still closes it; ownFd(fd) then takes
// that record over. NewFd records and returns the number.
void RecordCreated(int fd);
Napi::Value NewFd(Napi::Env env, int fd);

}  // namespace kg
