#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerryConfig
import FerryWire
import FerryTURN
import FerryTLS
import FerrySignal
import FerryPreflight
import Logging
import Foundation
import Synchronization

/// Certificates, reload (SIGHUP and the admin API) and drain (SIGTERM, SIGINT and the admin API).
extension Server {
    // MARK: TLS

    /// Builds TLS contexts from the configured files (or a fresh self-signed certificate).
    func loadTLS(initial: Bool) throws -> TLSContextSet {
        var pairs: [CertificatePair] = []
        for c in config.tls.certificates { pairs.append(try CertificatePair.load(certificate: c.certificate, key: c.key)) }
        if pairs.isEmpty && config.tls.selfSigned {
            if initial || tlsContexts == nil {
                pairs.append(try CertificatePair.selfSigned(name: "localhost"))
            } else {
                return tlsContexts!  // keep the self-signed certificate across reloads
            }
        }
        let set = try TLSContextSet(certificates: pairs, alpn: ["stun.turn", "http/1.1"], minimumTLS13: config.tls.minVersion == "1.3")
        for p in pairs {
            logger.info("tls certificate", metadata: ["source": "\(p.source)", "names": "\(p.names)", "not_after": "\(p.notAfter)"])
        }
        return set
    }

    /// What a reload applies that can fail, made from `config` (the next one) before anything
    /// is applied; each failure names its key. Certificates are read again even when the paths
    /// are the same (renewed in place).
    func prepareReload() throws -> (token: [UInt8]?, tls: TLSContextSet?, signal: SignalPolicy?) {
        let token: [UInt8]?
        do {
            token = try Server.adminToken(config.admin) { [logger] in logger.warning("\($0)") }
        } catch {
            throw ConfigErrors(issues: [ConfigIssue(key: config.admin.tokenFile.isEmpty ? "admin.token" : "admin.token_file", message: "\(error)")])
        }
        var tls: TLSContextSet?
        if !turnServices.isEmpty, config.listeners.contains(where: { $0.transport != .udp }),
           !config.tls.certificates.isEmpty || config.tls.selfSigned {
            do {
                tls = try loadTLS(initial: false)
            } catch {
                if let c = certificateReloads?.failed { metrics.block(engine.loops.count).add(c) }
                throw ConfigErrors(issues: [ConfigIssue(key: "tls.certificate", message: "\(error)")])
            }
        }
        var signal: SignalPolicy?
        if config.signal.enabled {
            do {
                signal = try makeSignalPolicy()
            } catch {
                throw ConfigErrors(issues: [ConfigIssue(key: "signal", message: "\(error)")])
            }
        }
        return (token, tls, signal)
    }

    func applyTLS(_ set: TLSContextSet) {
        tlsContexts = set
        certificateExpiry.value.store(set.earliestExpiry, ordering: .relaxed)
        for loop in engine.loops {
            loop.execute { [self] l in self.workers[l.index].updateTLS(set) }
        }
        if let c = certificateReloads?.ok { metrics.block(engine.loops.count).add(c) }
    }

    /// The TLS series that belong to the server rather than a connection: reloads and expiry.
    func registerCertificateMetrics() {
        certificateReloads = (metrics.counter("ferry_tls_certificate_reloads_total", "Certificate reloads on SIGHUP, by result.", labels: [("result", "ok")]),
                              metrics.counter("ferry_tls_certificate_reloads_total", "Certificate reloads on SIGHUP, by result.", labels: [("result", "failed")]))
        let expiry = self.certificateExpiry
        metrics.computedGauge("ferry_tls_certificate_expiry_timestamp_seconds", "notAfter of the certificate that expires first (Unix time).") {
            let v = expiry.value.load(ordering: .relaxed)
            return v > 0 ? [(labels: "", value: Double(v))] : []
        }
    }

    // MARK: Signals: reload and drain

    func handleSignal(_ signal: Int32) {
        switch signal {
        case SIGHUP: reload(origin: "SIGHUP")
        case SIGTERM, SIGINT: beginDrain(signal == SIGTERM ? "SIGTERM" : "SIGINT")
        default: break
        }
    }

    /// Re-reads the configuration (SIGHUP, or POST /v1/reload); true when it applied.
    @discardableResult
    func reload(origin: String) -> Bool {
        guard let reloadSource else {
            logger.notice("reload ignored: running on the built-in default config, there is no file to reload", metadata: ["origin": "\(origin)"])
            return false
        }
        var ok = false
        defer {
            statusCache = nil
            let now = wallClockSeconds()
            lastReload = (now, ok, origin)
            state.lastReloadOK.store(ok, ordering: .relaxed)
            if ok { state.configLoadedAt.store(Int64(now), ordering: .relaxed) }
        }
        Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(Systemd.monotonicMicros())\nSTATUS=reloading")
        let block = metrics.block(engine.loops.count)
        do {
            // Every key is either applied below or named as needing a restart: the plan comes
            // from the key table (FerryConfig.keys), and restart-only keys keep their running
            // values in `next`, so they are named again on every reload until the restart.
            let plan = FerryConfig.reloadPlan(running: config, next: try reloadSource())
            let next = plan.effective
            // Everything that can fail is prepared before anything applies: a key that cannot
            // be applied (a token file gone or too short, certificates that do not load, JWKS
            // that do not parse) fails the whole reload, counted and answered as failed, and the
            // running configuration stays as it was, token included.
            let running = config
            config = next
            let prepared: (token: [UInt8]?, tls: TLSContextSet?, signal: SignalPolicy?)
            do {
                prepared = try prepareReload()
            } catch {
                config = running
                throw error
            }
            if !turnServices.isEmpty {
                // Users, shared secrets and the peer policy apply to the next request.
                let credentials = Server.credentials(next.turn, realm: next.turn.realm)
                let policy = Server.policy(next)
                for loop in engine.loops {
                    loop.execute { [self] l in
                        self.turnServices[l.index].server.update(credentials: credentials, policy: policy)
                        self.turnServices[l.index].syncFastPath()
                    }
                }
            }
            if relay != nil {
                // The native relay checks credentials with the same secrets, from its next bind.
                let secrets = next.turn.staticAuthSecrets
                engine.loops[0].execute { [self] _ in self.relay?.update(secrets: secrets) }
            }
            warnIfRelayPortsAreEphemeral()
            if let set = prepared.tls { applyTLS(set) }
            if let policy = prepared.signal {
                for loop in engine.loops {
                    loop.execute { [self] l in self.signalWorkers.all[l.index].update(policy: policy) }
                }
                // The issuer's keys are fetched again off the loop; the keys in use stay until then.
                startJWKSFetch()
            }
            levelBox.level = Logger.Level(config.log.level)
            adminToken = prepared.token
            ok = true
            if let c = reloadCounters?.ok { block.add(c) }
            var metadata: Logger.Metadata = [:]
            if !plan.applied.isEmpty { metadata["applied"] = "\(plan.applied.joined(separator: ","))" }
            if !plan.needsRestart.isEmpty { metadata["needs_restart"] = "\(plan.needsRestart.joined(separator: ","))" }
            logger.notice("configuration reloaded", metadata: metadata)
        } catch let errors as ConfigErrors {
            if let c = reloadCounters?.failed { block.add(c) }
            // One line per problem, as `ferry config check` prints them.
            logger.error("reload failed; keeping the running configuration", metadata: ["problems": "\(errors.issues.count)"])
            for issue in errors.issues {
                logger.error("config problem", metadata: ["key": "\(issue.key)", "problem": "\(issue.message)"])
            }
        } catch {
            if let c = reloadCounters?.failed { block.add(c) }
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
        }
        Systemd.notify("READY=1\nSTATUS=serving")
        return ok
    }

    func beginDrain(_ why: String) {
        if state.draining.load(ordering: .relaxed) {
            logger.notice("second stop signal: stopping now")
            control.stop()
            return
        }
        state.draining.store(true, ordering: .relaxed)
        statusCache = nil
        Systemd.notify("STOPPING=1\nSTATUS=draining")
        drainDeadline = control.now + UInt64(config.server.drainSeconds) * 1_000_000_000
        logger.notice("draining", metadata: ["signal": "\(why)", "drain_seconds": "\(config.server.drainSeconds)"])
        if !signalWorkers.all.isEmpty {
            for loop in engine.loops {
                loop.execute { [self] l in self.signalWorkers.all[l.index].drain() }
            }
        }
        checkDrain()
    }

    /// Stops once no session is left or the drain time is over, checking every 100 ms.
    func checkDrain() {
        let active = activeSessions()
        if active == 0 || control.now >= drainDeadline {
            if active > 0 { logger.warning("drain time over; closing remaining sessions", metadata: ["sessions": "\(active)"]) }
            control.stop()
            return
        }
        control.schedule(after: 100_000_000) { [unowned self] in self.checkDrain() }
    }

    /// Sessions that a drain waits for: TURN allocations (the forwarding service keeps none).
    func activeSessions() -> Int {
        guard let c = turnCounters else { return 0 }
        return Int(metrics.total(c.allocationsActive))
    }
}
