import Testing
import FerryFuzz

/// Every committed corpus input and every input that once found a defect runs through its fuzz
/// target on each test run: a finding, once fixed, stays fixed (a regression traps here).
@Suite struct FuzzCorpora {
    static let root = String(#filePath.dropLast("FuzzCorpusTests.swift".count))

    @Test(arguments: FuzzTargets.all.map(\.name))
    func corpusReplays(_ name: String) throws {
        let target = try #require(FuzzTargets.named(name))
        let files = FuzzCorpus.files(at: "\(Self.root)Corpus/\(name)")
        #expect(files.count >= 5, "a seed corpus is committed for \(name)")
        for file in files { FuzzCorpus.replay(target, file: file) }
    }

    @Test(arguments: FuzzTargets.all.map(\.name))
    func crashInputsStayFixed(_ name: String) throws {
        let target = try #require(FuzzTargets.named(name))
        for file in FuzzCorpus.files(at: "\(Self.root)Crashes/\(name)") { FuzzCorpus.replay(target, file: file) }
    }
}
