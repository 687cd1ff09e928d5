import Foundation
import PackagePlugin

/// Compiles FerryXDP's kernel program (`bpf/ferry_xdp.bpf.c` and the header it includes) with clang's BPF target and hands
/// the object to the target as a generated Swift source (scripts/bpf-object.sh). SwiftPM compiles
/// C only for the host, so the BPF build is a plugin; clang is the Swift toolchain's own.
@main
struct BPFObject: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let module = target as? SourceModuleTarget else { return [] }
        let root = context.package.directoryURL
        let source = module.directoryURL.appending(path: "bpf/ferry_xdp.bpf.c")
        let include = root.appending(path: "Sources/CFerryXDP/include")
        let script = root.appending(path: "scripts/bpf-object.sh")
        let output = context.pluginWorkDirectoryURL.appending(path: "XDPObject.swift")
        return [.buildCommand(
            displayName: "Compiling the XDP program (BPF)",
            executable: URL(fileURLWithPath: "/bin/sh"),
            arguments: [script.path, try clang(context).path, source.path, include.path, output.path],
            inputFiles: [source, module.directoryURL.appending(path: "bpf/ferry_xdp_turn.h"), include.appending(path: "ferry_xdp.h"), script],
            outputFiles: [output])]
    }

    /// The toolchain's clang when SwiftPM knows it, else the first on PATH.
    private func clang(_ context: PluginContext) throws -> URL {
        if let tool = try? context.tool(named: "clang") { return tool.url }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(dir)).appending(path: "clang")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw BPFObjectError.noClang
    }
}

enum BPFObjectError: Error, CustomStringConvertible {
    case noClang
    var description: String { "clang not found: the XDP program is compiled with the Swift toolchain's clang (on PATH)" }
}
