// The engine's N-API door: adds `Engine` to the addon's exports (not on Windows, where
// the TypeScript engine runs).
#ifndef SLUICE_ENGINE_BINDING_H_
#define SLUICE_ENGINE_BINDING_H_

#include <napi.h>

namespace sluice {

void InitEngine(Napi::Env env, Napi::Object exports);

}  // namespace sluice

#endif  // SLUICE_ENGINE_BINDING_H_
