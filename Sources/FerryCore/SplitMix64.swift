#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny deterministic generator, so a randomized test
/// replays exactly from its seed. Not for anything secret.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The seed for a randomized test: `FERRY_TEST_SEED` when set (to replay a failure), else a
    /// fresh one. Tests put it in every failure message.
    public static func testSeed() -> UInt64 {
        if let text = getenv("FERRY_TEST_SEED"), let seed = UInt64(String(cString: text)) { return seed }
        var system = SystemRandomNumberGenerator()
        return system.next()
    }
}
