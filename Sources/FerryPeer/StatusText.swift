import FerryCore
import FerrySignal

/// `ferry status`'s human form of ferryd's `/v1/status` (docs/admin-api.md).
public enum StatusText {
    public static func lines(_ s: JSONValue, admin: String) -> [String] {
        func n(_ v: JSONValue?) -> Double { v?.number ?? 0 }
        func i(_ v: JSONValue?) -> Int { Int(n(v)) }
        func str(_ v: JSONValue?) -> String { v?.string ?? "" }
        let state = s["draining"] == .bool(true) ? "DRAINING" : s["ready"] == .bool(true) ? "ready" : "NOT READY"
        var out = ["ferryd \(str(s["version"])) at \(admin): \(state), up \(HumanUnits.duration(n(s["uptime_seconds"]))) (since \(str(s["started"])))"]
        let a = s["allocations"], sig = s["signaling"]
        out.append("  allocations   \(i(a?["active"])) of \(i(a?["max"])) (\(i(a?["created_total"])) created)")
        out.append("  signaling     " + (sig?["enabled"] == .bool(true) ? "\(i(sig?["peers"])) peers, \(i(sig?["routed_total"])) messages routed" : "off"))
        out.append("  connections   \(i(s["connections"]?["active"])) open")
        let h = s["history"]
        let rate = h?["bytes_to_peer_per_second"]?.array?.last?.number.map { "; last \(i(h?["interval_seconds"])) s: \(HumanUnits.bytes($0))/s to peers" } ?? ""
        let pps = h?["packets_per_second"]?.array?.last?.number.map { ", \(Int($0)) packets/s" } ?? ""
        out.append("  relayed       \(HumanUnits.bytes(n(s["relayed"]?["bytes_to_peer_total"]))) to peers, \(HumanUnits.bytes(n(s["relayed"]?["bytes_to_client_total"]))) to clients\(rate)\(pps)")
        var drops = "  drops         \(i(s["drops_total"]))"
        if case .object(let reasons)? = s["drops_by_reason"], !reasons.isEmpty {
            drops += " (" + reasons.map { "\($0.0) \(Int($0.1.number ?? 0))" }.joined(separator: ", ") + ")"
        }
        out.append(drops)
        let r = s["reload"]
        out.append("  last reload   " + (r?["last"]?.string.map { "\(str(r?["result"])) at \($0) (\(str(r?["origin"])))" } ?? "none since start")
                   + ", \(i(r?["failed_total"])) failed in all")
        let workers = (s["workers"]?.array ?? []).map { w -> String in
            let load = w["load"]?.number.map { "\(Int(($0 * 100).rounded())) %" } ?? "-"
            return "\(i(w["index"])): \(load), \(i(w["allocations"])) allocations"
        }
        out.append("  workers       " + workers.joined(separator: "; "))
        for l in s["listeners"]?.array ?? [] {
            out.append("  listener      \(str(l["name"])) \(str(l["transport"])) \(str(l["address"]))")
        }
        for c in s["certificates"]?.array ?? [] {
            // Names come with the admin token only (the open view carries expiry alone).
            let names = c["names"].map { ($0.array ?? []).compactMap(\.string).joined(separator: ", ") } ?? "(names with the admin token)"
            out.append("  certificate   \(names): \(i(c["days_left"])) days left (until \(str(c["not_after"])))")
        }
        return out
    }
}
