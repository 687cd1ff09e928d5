import FerryCore
import FerryTURN
@testable import FerryServer

/// A worker's TURN service with a server of default settings and no users (Binding needs none),
/// its counters registered in `registry`: what the worker tests drive.
func makeTURN(on worker: Worker, registry: MetricsRegistry) -> (service: TURNService, counters: TURNCounters) {
    let service = TURNService(worker: worker, maxDatagram: 1500, portRange: 50000...50010,
                              batchHistograms: TURNService.batchHistograms(registering: registry), gso: false, relayBuffer: 65536)
    let counters = TURNCounters(registering: registry)
    service.attach(TURNServer(settings: TURNSettings(), credentials: CredentialStore(realm: "t", users: [:], secrets: []),
                              nonces: NonceCodec(secret: [1], lifetimeSeconds: 60), policy: PeerPolicy(), relays: service,
                              shared: TURNShared(), counters: counters, metrics: registry.block(0)),
                   sessionLog: SessionLog(enabled: false))
    return (service, counters)
}
