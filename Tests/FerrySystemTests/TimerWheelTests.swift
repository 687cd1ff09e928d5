import Testing
import FerrySystem

@Suite struct TimerWheelWithFakeClock {
    let ms: UInt64 = 1_000_000

    @Test func firesAtDeadlineNotBefore() {
        var wheel = TimerWheel<Int>(tickNanos: 10 * ms, slotCount: 8, now: 0)
        wheel.schedule(at: 25 * ms, 1)
        var fired: [Int] = []
        wheel.advance(to: 20 * ms, into: &fired)
        #expect(fired.isEmpty)
        wheel.advance(to: 29 * ms, into: &fired)
        #expect(fired.isEmpty, "deadline 25 ms rounds up to the 30 ms tick")
        wheel.advance(to: 30 * ms, into: &fired)
        #expect(fired == [1])
        #expect(wheel.isEmpty)
    }

    @Test func deadlinesBeyondOneRevolution() {
        var wheel = TimerWheel<Int>(tickNanos: 10 * ms, slotCount: 8, now: 0)
        wheel.schedule(at: 1000 * ms, 7)   // 100 ticks on an 8-slot wheel
        var fired: [Int] = []
        for t in stride(from: UInt64(0), through: 990, by: 10) {
            wheel.advance(to: t * ms, into: &fired)
        }
        #expect(fired.isEmpty)
        wheel.advance(to: 1000 * ms, into: &fired)
        #expect(fired == [7])
    }

    @Test func longStallFiresEverythingDue() {
        var wheel = TimerWheel<Int>(tickNanos: 10 * ms, slotCount: 8, now: 0)
        for i in 1...20 { wheel.schedule(at: UInt64(i) * 15 * ms, i) }
        var fired: [Int] = []
        wheel.advance(to: 10_000 * ms, into: &fired)
        #expect(fired.sorted() == Array(1...20))
    }

    @Test func cancel() {
        var wheel = TimerWheel<Int>(tickNanos: 10 * ms, slotCount: 8, now: 0)
        let a = wheel.schedule(at: 50 * ms, 1)
        wheel.schedule(at: 50 * ms, 2)
        let first = wheel.cancel(a)
        let second = wheel.cancel(a)
        #expect(first && !second)
        var fired: [Int] = []
        wheel.advance(to: 60 * ms, into: &fired)
        #expect(fired == [2])
    }

    @Test func pastDeadlineFiresOnNextTick() {
        var wheel = TimerWheel<Int>(tickNanos: 10 * ms, slotCount: 8, now: 100 * ms)
        wheel.schedule(at: 0, 1)
        var fired: [Int] = []
        wheel.advance(to: 100 * ms, into: &fired)
        #expect(fired.isEmpty)
        wheel.advance(to: 110 * ms, into: &fired)
        #expect(fired == [1])
    }

    @Test func nextTickTimeout() {
        var wheel = TimerWheel<Int>(tickNanos: 10 * ms, slotCount: 8, now: 3 * ms)
        #expect(wheel.nanosUntilNextTick(now: 3 * ms) == nil)
        wheel.schedule(at: 100 * ms, 1)
        #expect(wheel.nanosUntilNextTick(now: 3 * ms) == 7 * ms)
    }
}
