// What mapping.cc shares with the other files that act on live mappings (guarded.cc, calls.cc).
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace kg {

// The argument at index `i`, checked to be a live mapping of ours: an ArrayBuffer whose data
// pointer and length match a record of mapping.cc (mapped by mapShared/mapAnonymous and not
// released since). Anything else (a plain ArrayBuffer, a released or detached one) is a
// TypeError. The record cannot be finalized while the returned handle is alive, and a release
// only replaces the range in place, so the memory stays mapped for the whole native call.
Napi::ArrayBuffer LiveBuffer(const Napi::CallbackInfo& info, size_t i = 0);

// Checks that [offset, offset + length) lies within a buffer of `size` bytes, else throws a
// RangeError naming the arguments.
void CheckRange(Napi::Env env, uint64_t offset, uint64_t length, size_t size);

// A range of a live mapping from arguments 0 (buffer), 1 (offset) and 2 (length). Check() it once
// every other argument is read: it throws unless the range lies within the mapping.
struct LiveRange {
  Napi::ArrayBuffer buffer;
  uint64_t offset;
  uint64_t length;
  uint8_t* Check(Napi::Env env) {
    CheckRange(env, offset, length, buffer.ByteLength());
    return static_cast<uint8_t*>(buffer.Data()) + offset;
  }
};
LiveRange ArgLiveRange(const Napi::CallbackInfo& info);

}  // namespace kg
