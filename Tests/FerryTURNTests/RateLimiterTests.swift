import Testing
import FerryTURN

@Suite struct RateLimiterBuckets {
    @Test func burstThenRate() {
        var r = RateLimiter<Int>(ratePerSecond: 2, burst: 3)
        #expect((0..<5).filter { _ in r.allow(1, now: 0) }.count == 3)
        let early = r.allow(1, now: 400_000_000)
        let later = r.allow(1, now: 500_000_000)
        #expect(!early)
        #expect(later, "half a second at 2/s refills one token")
    }

    @Test func unlimitedNeverDeniesAndSweepsSafely() {
        var r = RateLimiter<Int>(ratePerSecond: 0, burst: 1)
        #expect((0..<100).allSatisfy { _ in r.allow(1, now: 0) })
        r.sweep(now: 10_000_000_000)   // once crashed dividing by a zero rate
        #expect(r.count == 0)
    }

    @Test func sweepForgetsIdleSourcesAndTableIsBounded() {
        var r = RateLimiter<Int>(ratePerSecond: 1, burst: 2, maxKeys: 3)
        for k in 0..<3 {
            let ok = r.allow(k, now: 0)
            #expect(ok)
        }
        let newcomer = r.allow(99, now: 0)
        #expect(!newcomer, "a full table fails closed for new sources")
        r.sweep(now: 10_000_000_000)
        #expect(r.count == 0)
        let later = r.allow(99, now: 10_000_000_000)
        #expect(later)
    }
}
