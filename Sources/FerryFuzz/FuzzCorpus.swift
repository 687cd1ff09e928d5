import Foundation
import FerrySystem

/// Replaying committed inputs: the unit tests and `ferry-fuzz TARGET PATH...` run every corpus
/// file and every crash input through its target (Tests/FerryFuzzTests/Corpus/TARGET, Tests/FerryFuzzTests/Crashes/TARGET).
public enum FuzzCorpus {
    /// The files at `path` (a file, or every regular file in a directory, sorted).
    public static func files(at path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [] }
        guard isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(path)/\($0)" }
    }

    public static func replay(_ target: FuzzTarget, file: String) {
        // Not FileManager.contents(atPath:): on this toolchain it leaks its 4 KiB read buffer
        // for an empty file (ASan's leak check failed CI on the empty `sealed` seed).
        let bytes = Files.read(file) ?? []
        bytes.withUnsafeBytes { target.run($0) }
    }
}
