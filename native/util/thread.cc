#include "util/thread.h"

#include <time.h>

namespace kg {

// Node-API has no "is stopping" query, but every call that may run JavaScript starts by asking
// the environment whether it still can (Node: can_call_into_js, false from the moment a stop is
// requested) and answers napi_pending_exception when not. napi_has_own_property on a fresh plain
// object is such a call, and runs no JavaScript otherwise.
bool EnvStopping(napi_env env) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  napi_value obj, key;
  bool has = false;
  napi_status st = napi_create_object(env, &obj);
  if (st == napi_ok) st = napi_create_string_utf8(env, "k", 1, &key);
  if (st == napi_ok) st = napi_has_own_property(env, obj, key, &has);
  napi_close_handle_scope(env, scope);
  return st == napi_pending_exception;
}

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace kg
