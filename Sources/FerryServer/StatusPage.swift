import FerryCore
import FerrySignal

/// The status page at the admin endpoint's `/`: `/v1/status` rendered as one HTML document
/// with no script and no outside asset (inline CSS, inline SVG charts), readable on a phone,
/// refreshing itself every 10 s. Values are escaped; the page is built on the control thread
/// per request from the same JSON `/v1/status` answers.
enum StatusPage {
    static func render(_ s: JSONValue) -> String {
        var h = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta http-equiv="refresh" content="10">
        <title>ferryd status</title>
        <style>
        body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#222;background:#fafafa}
        h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem;border-bottom:1px solid #ddd}
        .tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.5rem}
        .tile{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem}
        .tile b{display:block;font-size:1.4rem}.tile span{color:#666;font-size:.85rem}
        .ok{color:#176b2c}.bad{color:#b00020}
        table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #ddd;padding:.25rem .4rem;text-align:left;font-size:.9rem}
        .charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:.5rem}
        svg,.empty{width:100%;height:60px;background:#fff;border:1px solid #ddd;border-radius:6px;display:block}
        small{color:#666}
        </style></head><body>

        """
        let ready = bool(s["ready"]), draining = bool(s["draining"])
        let state = draining ? "<span class=bad>draining</span>" : ready ? "<span class=ok>ready</span>" : "<span class=bad>starting</span>"
        h += "<h1>ferryd \(e(str(s["version"]))) — \(state)</h1>\n"
        h += "<small>up \(HumanUnits.duration(num(s["uptime_seconds"]))) since \(e(str(s["started"]))); this page refreshes every 10 s; "
        h += "the same data as JSON: <a href=\"/v1/status\">/v1/status</a>, all counters: <a href=\"/metrics\">/metrics</a></small>\n"

        let alloc = s["allocations"], sig = s["signaling"]
        h += "<div class=tiles>\n"
        h += tile(id: "allocations", "\(int(alloc?["active"]))", "allocations of \(int(alloc?["max"]))")
        h += tile(id: "signal-peers", "\(int(sig?["peers"]))", bool(sig?["enabled"]) ? "signaling peers" : "signaling off")
        if let nats = sig?["nats"], case .object = nats {
            let up = bool(nats["connected"])
            h += tile(id: "nats", up ? "connected" : "DOWN",
                      up ? "NATS, \(int(nats["instances_seen"])) other instance(s) heard" : "NATS unreachable: signaling reaches only this instance's peers",
                      bad: !up)
        }
        if let relay = s["native_relay"], case .object = relay {
            h += tile(id: "native-relay", "\(int(relay["active"]))", "native-relay sessions forwarding (\(int(relay["sessions"])) with an end bound, of \(int(relay["max"])))")
        }
        h += tile(id: "connections", "\(int(s["connections"]?["active"]))", "stream connections")
        h += tile(id: "relayed", HumanUnits.bytes(num(s["relayed"]?["bytes_to_peer_total"]) + num(s["relayed"]?["bytes_to_client_total"])), "relayed in all")
        h += tile(id: "drops", "\(int(s["drops_total"]))", "drops in all")
        let fds = s["descriptors"]
        h += tile(id: "descriptors", "\(int(fds?["open"])) / \(int(fds?["limit"]))",
                  bool(fds?["at_limit"]) ? "open files: AT THE LIMIT, new connections wait" : "open files", bad: bool(fds?["at_limit"]))
        let reload = s["reload"]
        let reloadText = str(reload?["last"]).isEmpty ? "never" : "\(str(reload?["result"])) at \(str(reload?["last"]))"
        h += tile(id: "reload", str(reload?["result"]).isEmpty ? "—" : str(reload?["result"]), "last reload: \(reloadText)",
                  bad: str(reload?["result"]) == "failed")
        h += "</div>\n"

        let history = s["history"]
        let interval = Int(num(history?["interval_seconds"]))
        h += "<h2>Last minutes <small>(per second, one point per \(interval) s)</small></h2>\n<div class=charts>\n"
        h += chart("relayed to peers", history?["bytes_to_peer_per_second"], unit: HumanUnits.bytes)
        h += chart("relayed to clients", history?["bytes_to_client_per_second"], unit: HumanUnits.bytes)
        h += chart("packets relayed", history?["packets_per_second"], unit: { "\(Int($0))/s" })
        h += chart("drops", history?["drops_per_second"], unit: { "\(Int($0))/s" })
        h += "</div>\n"

        h += "<h2>Workers</h2>\n<table><tr><th>worker</th><th>allocations</th><th>load (share of a core)</th></tr>\n"
        for w in s["workers"]?.array ?? [] {
            let load = w["load"].flatMap(\.number).map { "\(Int(($0 * 100).rounded())) %" } ?? "—"
            h += "<tr><td>\(int(w["index"]))</td><td>\(int(w["allocations"]))</td><td>\(load)</td></tr>\n"
        }
        h += "</table>\n<h2>Listeners</h2>\n<table><tr><th>name</th><th>service</th><th>transport</th><th>address</th></tr>\n"
        for l in s["listeners"]?.array ?? [] {
            h += "<tr><td>\(e(str(l["name"])))</td><td>\(e(str(l["service"])))</td><td>\(e(str(l["transport"])))</td><td>\(e(str(l["address"])))</td></tr>\n"
        }
        h += "</table>\n<h2>Drops by reason</h2>\n"
        if case .object(let reasons)? = s["drops_by_reason"], !reasons.isEmpty {
            h += "<table><tr><th>reason</th><th>count</th></tr>\n"
            for (reason, count) in reasons { h += "<tr><td>\(e(reason))</td><td>\(int(count))</td></tr>\n" }
            h += "</table>\n"
        } else {
            h += "<p>none</p>\n"
        }
        // A 508 to a client always has a cause shown here (RelayPorts logs it too).
        if case .object(let reasons)? = alloc?["failed_by_reason"], !reasons.isEmpty {
            h += "<h2>Allocations refused (508) by reason</h2>\n<table><tr><th>reason</th><th>count</th></tr>\n"
            for (reason, count) in reasons { h += "<tr><td class=bad>\(e(reason))</td><td>\(int(count))</td></tr>\n" }
            h += "</table>\n"
        }
        h += "<h2>Certificates</h2>\n"
        let certs = s["certificates"]?.array ?? []
        if certs.isEmpty {
            h += "<p>none loaded</p>\n"
        } else {
            h += "<table><tr><th>names</th><th>expires</th><th>days left</th><th>from</th></tr>\n"
            for c in certs {
                let days = int(c["days_left"])
                // Names and files are shown to the admin token's holder only (aggregates otherwise).
                let names = c["names"].map { ($0.array ?? []).map { e(str($0)) }.joined(separator: ", ") } ?? "—"
                h += "<tr><td>\(names)</td><td>\(e(str(c["not_after"])))</td><td class=\(days < 14 ? "bad" : "ok")>\(days)</td><td>\(e(str(c["source"])))</td></tr>\n"
            }
            h += "</table>\n"
        }
        h += "</body></html>\n"
        return h
    }

    static func tile(id: String, _ value: String, _ label: String, bad: Bool = false) -> String {
        "<div class=tile id=\(id)><b\(bad ? " class=bad" : "")>\(e(value))</b><span>\(e(label))</span></div>\n"
    }

    /// A sparkline of `series` with its latest value and peak, as inline SVG.
    static func chart(_ title: String, _ series: JSONValue?, unit: (Double) -> String) -> String {
        let values = (series?.array ?? []).compactMap(\.number)
        let peak = values.max() ?? 0
        guard values.count >= 2 else {
            return "<div><small>\(e(title)): collecting (one point per interval)</small><div class=empty></div></div>\n"
        }
        let step = 300 / Double(values.count - 1)
        let points = values.enumerated().map { i, v in
            "\(Int(Double(i) * step)),\(Int(56 - (peak > 0 ? v / peak * 52 : 0)))"
        }.joined(separator: " ")
        let svg = "<svg viewBox=\"0 0 300 60\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"\(e(title))\">"
            + "<polyline fill=\"none\" stroke=\"#2a5db0\" stroke-width=\"2\" vector-effect=\"non-scaling-stroke\" points=\"\(points)\"/></svg>"
        let latest = values.last.map(unit) ?? "—"
        return "<div><small>\(e(title)): now \(e(latest)), peak \(e(unit(peak)))</small>\(svg)</div>\n"
    }

    static func e(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    static func str(_ v: JSONValue?) -> String { v?.string ?? "" }
    static func num(_ v: JSONValue?) -> Double { v?.number ?? 0 }
    static func int(_ v: JSONValue?) -> Int { Int(num(v)) }
    static func bool(_ v: JSONValue?) -> Bool { if case .bool(let b)? = v { return b } else { return false } }
}
