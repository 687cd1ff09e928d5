/// One stream connection on one worker, as the worker's connection table names it. Ids count up
/// per worker and are not reused while the connection is open; they mean nothing on another
/// worker. A plain value, so protocol state (a TURN client's five-tuple, a signaling session)
/// can refer to a connection without holding it.
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public let raw: UInt32

    @inlinable public init(_ raw: UInt32) { self.raw = raw }

    public var description: String { "c\(raw)" }
}
