import Testing
import FerryCore
@testable import FerryServer

/// The records TURN to TURN across workers carries (TURNHandoffBatch): what goes in comes out in
/// order, each payload with a Data indication's room in front and its padding behind; a batch
/// refuses what does not fit; the hub finds a relayed port's worker from its block.
@Suite struct TURNHandoffRecords {
    @Test func recordsComeOutAsTheyWentInWithRoomAroundThem() {
        let batch = TURNHandoffBatch(capacity: 64, limit: 4096)  // grows from room for one small record
        let receiver = SocketAddress("192.0.2.1:50600")!, v6 = SocketAddress("[2001:db8::7]:50001")!
        let payloads: [[UInt8]] = [[], [1], [1, 2, 3, 4, 5], Array(0..<200).map { UInt8($0) }]
        for (i, p) in payloads.enumerated() {
            #expect(p.withUnsafeBytes { batch.append(to: receiver, from: i.isMultiple(of: 2) ? v6 : receiver, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, p.count) })
        }
        var seen: [(SocketAddress, SocketAddress, [UInt8])] = []
        batch.forEach { r, s, data, length in
            #expect(data - batch.base >= TURNHandoffBatch.head)
            #expect((data - batch.base) + ((length + 3) & ~3) <= batch.used, "the padding is the record's")
            seen.append((r, s, Array(UnsafeRawBufferPointer(start: data, count: length))))
        }
        #expect(seen.map(\.2) == payloads)
        #expect(seen.map(\.0) == Array(repeating: receiver, count: 4))
        #expect(seen.map(\.1) == [v6, receiver, v6, receiver])
        #expect(TURNHandoffBatch.head >= DataIndicationWriter.headroom + 8, "a Data indication fits in front")
    }

    @Test func aFullBatchRefusesTheRecordThatDoesNotFit() {
        let batch = TURNHandoffBatch(capacity: TURNHandoffBatch.size(100), limit: TURNHandoffBatch.size(100) * 2)
        let a = SocketAddress("192.0.2.1:50600")!
        let p = [UInt8](repeating: 7, count: 100)
        for _ in 0..<2 { #expect(p.withUnsafeBytes { batch.append(to: a, from: a, $0.baseAddress!, 100) }) }
        #expect(!p.withUnsafeBytes { batch.append(to: a, from: a, $0.baseAddress!, 1) })
        var n = 0
        batch.forEach { _, _, _, _ in n += 1 }
        #expect(n == 2)
    }

    @Test func aRelayedPortsWorkerIsItsBlocks() {
        let hub = TURNHandoffHub(workers: 3, ports: 50000...50999, block: 333, budget: 1 << 20)
        #expect(hub.worker(forPort: 50000) == 0 && hub.worker(forPort: 50332) == 0)
        #expect(hub.worker(forPort: 50333) == 1 && hub.worker(forPort: 50665) == 1)
        #expect(hub.worker(forPort: 50666) == 2 && hub.worker(forPort: 50999) == 2, "the last block takes the remainder")
    }
}
