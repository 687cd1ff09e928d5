#if canImport(Glibc)
import Glibc
#endif
import FerryCore
import FerrySystem
import FerrySignal

/// A client of ferryd's admin endpoint (plain HTTP on a trusted address, docs/admin-api.md):
/// one request per connection (`Connection: close`), the answer read to its end. For
/// `ferry status`; anything that speaks HTTP (curl) does the same.
public enum AdminClient {
    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public struct Answer {
        public let status: Int
        public let body: [UInt8]
        public var json: JSONValue? { JSONValue.parse(body) }
    }

    /// `base` like `http://127.0.0.1:9090` (or `127.0.0.1:9090`); `path` like `/v1/status`.
    public static func get(base: String, path: String, timeoutMilliseconds: Int32 = 5000) throws(Failure) -> Answer {
        var hostPort = base
        if hostPort.hasPrefix("http://") { hostPort.removeFirst(7) }
        if hostPort.hasPrefix("https://") { throw Failure(description: "the admin endpoint speaks plain HTTP (keep it on a trusted address)") }
        if let slash = hostPort.firstIndex(of: "/") { hostPort = String(hostPort[..<slash]) }
        let address: SocketAddress
        if let a = SocketAddress(hostPort) {
            address = a
        } else {
            let parts = hostPort.split(separator: ":")
            guard parts.count == 2, let port = UInt16(parts[1]),
                  let a = try? Resolver.resolve(String(parts[0]), port: port).first else {
                throw Failure(description: "\(base): not HOST:PORT")
            }
            address = a
        }
        let c: ClientConnection
        do throws(ClientConnection.Failure) {
            c = try ClientConnection(to: address, transport: .tcp, host: hostPort, caFile: nil, timeoutMilliseconds: timeoutMilliseconds)
        } catch {
            throw Failure(description: "\(address): \(error)")
        }
        let head = "GET \(path) HTTP/1.1\r\nHost: \(hostPort)\r\nConnection: close\r\nUser-Agent: ferry\r\n\r\n"
        guard Array(head.utf8).withUnsafeBytes({ c.write($0) }) else { throw Failure(description: "\(address): the request could not be sent") }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while response.count < 8 << 20 {
            switch chunk.withUnsafeMutableBytes({ c.read(into: $0) }) {
            case 0?: return try parse(response, from: address)
            case let n?: response += chunk[0..<n]
            case nil:
                guard Sockets.wait(c.fdRaw, timeoutMilliseconds: timeoutMilliseconds) else { throw Failure(description: "\(address): no answer in time") }
            }
        }
        throw Failure(description: "\(address): the answer is too large")
    }

    static func parse(_ bytes: [UInt8], from address: SocketAddress) throws(Failure) -> Answer {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, bytes.count - 3)).first(where: { Array(bytes[$0..<($0 + 4)]) == separator }),
              let line = String(decoding: bytes[0..<end], as: UTF8.self).split(separator: "\r\n").first,
              line.hasPrefix("HTTP/1."), let status = Int(line.split(separator: " ").dropFirst().first ?? "") else {
            throw Failure(description: "\(address): not an HTTP answer")
        }
        return Answer(status: status, body: Array(bytes[(end + 4)...]))
    }
}
