import Testing
import FerryCore
import FerrySignal
@testable import FerryServer

@Suite struct StatusPageRendering {
    func status(listener: String, history: [Double]) -> JSONValue {
        .object([("version", .string("0.1.0")), ("ready", .bool(true)), ("draining", .bool(false)),
                 ("listeners", .array([.object([("name", .string(listener)), ("service", .string("turn")),
                                                ("transport", .string("udp")), ("address", .string("0.0.0.0:3478"))])])),
                 ("history", .object([("interval_seconds", .number(10)), ("packets_per_second", .array(history.map { .number($0) }))])),
                 ("allocations", .object([("active", .number(3)), ("max", .number(10))]))])
    }

    @Test func everyValueIsEscaped() {
        let page = StatusPage.render(status(listener: "<script>alert('x')</script>&", history: []))
        #expect(!page.contains("<script>"))
        #expect(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"))
    }

    @Test func chartsNeedTwoPoints() {
        let one = StatusPage.render(status(listener: "a", history: [5]))
        #expect(!one.contains("<polyline") && one.contains("packets relayed: collecting"))
        let three = StatusPage.render(status(listener: "a", history: [0, 10, 5]))
        // x over 300 units, y from 56 (zero) up to 4 (the peak).
        #expect(three.contains("points=\"0,56 150,4 300,30\""))
        #expect(three.contains("packets relayed: now 5/s, peak 10/s"))
    }

    @Test func humanUnits() {
        #expect(HumanUnits.bytes(999) == "999 B" && HumanUnits.bytes(1_234_567) == "1.2 MB" && HumanUnits.bytes(2e12) == "2.0 TB")
        #expect(HumanUnits.duration(59) == "59 s" && HumanUnits.duration(3600) == "60 min")
        #expect(HumanUnits.duration(90_000) == "25 h" && HumanUnits.duration(200_000) == "2 days")
    }

    @Test func metricsTextParsesBackToItsSeries() {
        let m = MetricsSnapshot("""
        # HELP ferry_turn_drops_total Drops.
        # TYPE ferry_turn_drops_total counter
        ferry_turn_drops_total{reason="quota"} 3
        ferry_turn_drops_total{reason="no_permission"} 4
        ferry_build_info{version="0.1.0 \\"dev\\""} 1
        ferry_ready 1
        """)
        #expect(m.sum("ferry_turn_drops_total") == 7 && m.sum("ferry_turn_drops_total", where: ["reason": "quota"]) == 3)
        #expect(m.by("ferry_turn_drops_total", "reason").map(\.0) == ["no_permission", "quota"])
        #expect(m.series.first { $0.name == "ferry_build_info" }?.labels["version"] == "0.1.0 \"dev\"")
        #expect(m.sum("ferry_ready") == 1 && m.sum("absent") == 0)
    }
}
