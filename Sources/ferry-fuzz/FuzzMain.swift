import FerryFuzz
#if canImport(Glibc)
import Glibc
#endif

// Two builds of one file. `scripts/fuzz.sh` compiles it with `-D FUZZING` and
// `-sanitize=fuzzer,address`: libFuzzer supplies `main` and calls `LLVMFuzzerTestOneInput`
// with the target named by FERRY_FUZZ_TARGET. A normal build replays inputs instead:
// `ferry-fuzz TARGET FILE_OR_DIR...` (what a crash report's reproducer needs), `--list`.

#if FUZZING
let selected: FuzzTarget = {
    let name = getenv("FERRY_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = FuzzTargets.named(name) else {
        fatalError("set FERRY_FUZZ_TARGET to one of: \(FuzzTargets.all.map(\.name).joined(separator: " "))")
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selected.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
import Foundation

@main
struct FuzzReplay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let name = args.first, name != "--help", name != "-h" else {
            print("usage: ferry-fuzz --list | ferry-fuzz TARGET FILE_OR_DIR...\n(fuzzing itself: scripts/fuzz.sh)")
            exit(args.isEmpty ? 2 : 0)
        }
        if name == "--list" {
            for t in FuzzTargets.all { print("\(t.name.padding(toLength: 16, withPad: " ", startingAt: 0)) \(t.summary)") }
            return
        }
        guard let target = FuzzTargets.named(name) else {
            FileHandle.standardError.write(Data("ferry-fuzz: no target \(name) (see --list)\n".utf8))
            exit(2)
        }
        var count = 0
        for path in args.dropFirst() {
            for file in FuzzCorpus.files(at: path) {
                FuzzCorpus.replay(target, file: file)
                count += 1
            }
        }
        print("\(name): \(count) inputs replayed, no finding")
    }
}
#endif
