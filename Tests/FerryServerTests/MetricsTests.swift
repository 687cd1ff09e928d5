import Testing
@testable import FerryServer

@Suite struct MetricsRendering {
    @Test func countersSumAcrossWorkerBlocks() {
        let r = MetricsRegistry(blocks: 3)
        let c = r.counter("ferry_x_total", "X.", labels: [("reason", "a\"b")])
        r.block(0).add(c, 2)
        r.block(2).add(c, 5)
        #expect(r.total(c) == 7)
        let text = r.render()
        #expect(text.contains("# TYPE ferry_x_total counter\n"))
        #expect(text.contains("ferry_x_total{reason=\"a\\\"b\"} 7\n"))
    }

    @Test func sameSeriesSameSlot() {
        let r = MetricsRegistry(blocks: 1)
        #expect(r.counter("a", "h", labels: [("l", "1")]) == r.counter("a", "h", labels: [("l", "1")]))
        #expect(r.counter("a", "h", labels: [("l", "1")]) != r.counter("a", "h", labels: [("l", "2")]))
    }

    @Test func histogramIsCumulative() {
        let r = MetricsRegistry(blocks: 2)
        let h = r.histogram("ferry_b", "B.", bounds: [1, 4, 16])
        h.observe(1, in: r.block(0))
        h.observe(3, in: r.block(1))
        h.observe(100, in: r.block(1))
        let text = r.render()
        #expect(text.contains("ferry_b_bucket{le=\"1\"} 1\n"))
        #expect(text.contains("ferry_b_bucket{le=\"4\"} 2\n"))
        #expect(text.contains("ferry_b_bucket{le=\"16\"} 2\n"))
        #expect(text.contains("ferry_b_bucket{le=\"+Inf\"} 3\n"))
        #expect(text.contains("ferry_b_sum 104\n"))
        #expect(text.contains("ferry_b_count 3\n"))
    }

    @Test func computedGauges() {
        let r = MetricsRegistry(blocks: 1)
        r.computedGauge("ferry_g", "G.") { [(labels: "", value: 2), (labels: "k=\"v\"", value: 0.5)] }
        let text = r.render()
        #expect(text.contains("ferry_g 2\n"))
        #expect(text.contains("ferry_g{k=\"v\"} 0.5\n"))
    }
}
