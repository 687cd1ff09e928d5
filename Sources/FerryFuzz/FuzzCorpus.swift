import Foundation

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
        let bytes = FileManager.default.contents(atPath: file).map { [UInt8]($0) } ?? []
        bytes.withUnsafeBytes { target.run($0) }
    }
}
