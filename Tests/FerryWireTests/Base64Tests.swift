import Testing
import FerryWire

/// RFC 4648 §10's vectors, both alphabets, and the inputs no encoder produces.
@Suite struct Base64Tests {
    static let vectors: [(String, String)] = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
                                              ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]

    @Test func rfc4648Vectors() {
        for (plain, encoded) in Base64Tests.vectors {
            #expect(Base64.std(Array(plain.utf8)) == encoded)
            #expect(Base64.decode(encoded) == Array(plain.utf8))
            let unpadded = encoded.filter { $0 != "=" }
            #expect(Base64.url(Array(plain.utf8)) == unpadded)
            #expect(Base64.decode(unpadded) == Array(plain.utf8))
        }
    }

    @Test func urlAlphabet() {
        let bytes: [UInt8] = [0xFB, 0xFF, 0xBF]
        #expect(Base64.std(bytes) == "+/+/")
        #expect(Base64.url(bytes) == "-_-_")
        #expect(Base64.decode("-_-_") == bytes && Base64.decode("+/+/") == bytes)
    }

    @Test func malformedInputIsRefused() {
        for bad in ["Zg=", "Z", "Zm9v=", "Zm9*", "Zg==Zg==", "Zm 9v", "Zg==="] {
            #expect(Base64.decode(bad) == nil, "\(bad)")
        }
    }
}
