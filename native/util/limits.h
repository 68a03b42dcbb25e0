// The limits native code enforces on what JavaScript passes it, defined once: lib/ reads them from
// the addon's `limits` export (util/limits.cc) and a test holds both layers to them.
#pragma once

#include <cstdint>

namespace kg::limits {

// Payload bytes of one fd-passing message (sendMsg, recvMsg): what lib's FdChannel promises.
constexpr uint32_t kMaxPayload = 64 * 1024;
// Fds in one SCM_RIGHTS message: the kernel's SCM_MAX_FD.
constexpr uint32_t kMaxFdsPerMessage = 253;
// Bytes of a Unix socket path without its NUL (sockaddr_un.sun_path holds 108).
constexpr uint32_t kMaxSocketPathBytes = 107;
// The longest mapping exposed as an ArrayBuffer: Node 20's largest (buffer.constants.MAX_LENGTH).
constexpr uint64_t kMaxMappingLength = 1ull << 32;
// The largest alignment mapShared places a mapping at (a 1 GiB huge page).
constexpr uint64_t kMaxMapAlign = 1ull << 30;
// mbind's maxnode: nodemasks of up to 1024 bits (x86_64's largest MAX_NUMNODES), plus one.
constexpr uint32_t kMaskWords = 16;
constexpr uint32_t kMaxMaxnode = kMaskWords * 64 + 1;
// Offsets in one pageNodes query: every page of the longest mapping.
constexpr uint32_t kMaxPageQueries = 1u << 20;
// Threads inside guarded accesses at once (main thread and Workers).
constexpr uint32_t kMaxGuardedThreads = 256;

}  // namespace kg::limits
