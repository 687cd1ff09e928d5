import Testing
import FerryWire
import FerryCore
import FerrySystem
#if canImport(Glibc)
import Glibc
#endif

/// One runner for the known-answer vectors in Vectors/rfc5769.txt (RFC 5769 §2, RFC 8489 B.1).
struct Vector: CustomTestStringConvertible, Sendable {
    let fields: [String: String]
    var testDescription: String { fields["name"] ?? "?" }
    subscript(_ k: String) -> String? { fields[k] }

    static func load() -> [Vector] {
        let dir = #filePath.split(separator: "/").dropLast().joined(separator: "/")
        guard let text = readText("/" + dir + "/Vectors/rfc5769.txt") else { return [] }
        return text.split(separator: "\n\n").compactMap { block in
            var f: [String: String] = [:]
            for line in block.split(separator: "\n") where !line.hasPrefix("#") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                f[String(line[..<colon])] = line[line.index(after: colon)...].trimmingPrefix(" ").description
            }
            return f["hex"] == nil ? nil : Vector(fields: f)
        }
    }
}

func readText(_ path: String) -> String? {
    Files.read(path).map { String(decoding: $0, as: UTF8.self) }
}

@Suite struct RFC5769Vectors {
    @Test func vectorsAreLoaded() {
        #expect(Vector.load().count == 5)
    }

    @Test(arguments: Vector.load())
    func vector(_ v: Vector) throws {
        let bytes = try #require(Crypto.unhex(v["hex"]!))
        try bytes.withUnsafeBytes { raw in
            let msg = try STUNMessage.parse(raw).get()
            #expect(msg.messageClass == (v["class"] == "request" ? .request : .success))
            #expect(msg.method == STUN.Method.binding)
            if let s = v["software"] { #expect(msg.string(STUN.Attribute.software) == s) }
            if let u = v["username"] { #expect(msg.string(STUN.Attribute.username) == u) }
            if let r = v["realm"] { #expect(msg.string(STUN.Attribute.realm) == r) }
            if let n = v["nonce"] { #expect(msg.string(STUN.Attribute.nonce) == n) }
            if let m = v["mapped"] { #expect(msg.xorAddress(STUN.Attribute.xorMappedAddress) == SocketAddress(m)) }
            #expect((msg.fingerprintOffset >= 0) == (v["fingerprint"] == "yes"))
            if let p = v["password"] {
                let key = Array(p.utf8)
                #expect(key.withUnsafeBytes { msg.verifyIntegrity(key: $0) })
                let wrong = Array("wrong".utf8)
                #expect(!wrong.withUnsafeBytes { msg.verifyIntegrity(key: $0) })
            }
            if let lt = v["long_term"] {
                let key = Crypto.md5(Array(lt.utf8))
                #expect(key.withUnsafeBytes { msg.verifyIntegrity(key: $0) })
            }
            if let uh = v["userhash"] {
                let hash = Crypto.sha256(Array(uh.utf8))
                let got = msg.attribute(STUN.Attribute.userHash).map { Array($0) }
                #expect(got == hash)
            }
            if let lt = v["long_term_mi_sha256"] {
                let key = Crypto.md5(Array(lt.utf8))
                #expect(key.withUnsafeBytes { msg.verifyIntegritySHA256(key: $0) })
            }
        }
    }

    /// Rebuilding the §2.2 response with the writer gives the same bytes, MI and FINGERPRINT
    /// included.
    @Test func writerReproducesIPv4Response() throws {
        let v = Vector.load().first { $0["name"]!.hasPrefix("2.2") }!
        let expected = try #require(Crypto.unhex(v["hex"]!))
        let tid = expected.withUnsafeBytes { try! STUNMessage.parse($0).get().transactionID }
        let built = STUNWriter.build(method: STUN.Method.binding, class: .success, transactionID: tid) { w in
            // The RFC pads SOFTWARE with a space rather than a zero; write the padded value's
            // 11 bytes, then patch the pad byte to match.
            w.append(STUN.Attribute.software, string: "test vector")
            w.base.storeBytes(of: UInt8(0x20), toByteOffset: 20 + 4 + 11, as: UInt8.self)
            w.append(STUN.Attribute.xorMappedAddress, xorAddress: SocketAddress("192.0.2.1:32853")!)
            let key = Array("VOkJxbRl1RmTxUk/WvJxBt".utf8)
            key.withUnsafeBytes { w.appendMessageIntegrity(key: $0) }
            w.appendFingerprint()
        }
        #expect(built == expected)
    }
}
