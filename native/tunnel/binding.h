// The tunnel link's N-API door: adds `Mux` to the addon's exports (Linux; elsewhere the
// TypeScript link runs).
#ifndef SLUICE_TUNNEL_BINDING_H_
#define SLUICE_TUNNEL_BINDING_H_

#include <napi.h>

namespace sluice {

void InitTunnel(Napi::Env env, Napi::Object exports);

}  // namespace sluice

#endif  // SLUICE_TUNNEL_BINDING_H_
