// swift-tools-version:6.2
//
// Modules, lowest first; nothing imports upward:
//   C shims (CFerryLinux, COpenSSL, CSystemd, CNATS, CFerryXDP)
//   → FerryCore     what every layer shares: IP and socket addresses, counter blocks, SplitMix64
//   → FerrySystem   syscalls, sockets, epoll loop, workers, timers, systemd
//   → FerryWire     pure codecs (HTTP/1.1 heads, STUN/TURN messages, crypto helpers); no FerrySystem
//   → FerryTLS      OpenSSL contexts (SNI, ALPN, reload) and non-blocking sessions
//   → FerryTURN     TURN state machines: allocations, auth, nonces, peer policy, quotas (pure)
//   → FerryRelay    the native WireGuard relay's state machines: credentials, bind challenges,
//                   sessions and index learning (pure)
//   → FerryXDP      the XDP fast path: the kernel program (built by the BPFObject plugin), its
//                   loader and maps (CFerryXDP over libbpf)
//   → FerrySignal   signaling sessions: identity proofs, tokens, JWT, messages, rate limits (pure;
//                   no FerrySystem, no FerryTURN)
//   → FerryClient   the peer side as pure state machines: TURN and STUN clients, the signaling
//                   client, sealed payloads, ICE (no FerrySystem)
//   → FerryConfig   the config file model, parser and validation (pure)
//   → FerryPreflight what must hold on this host before ferryd serves (certificates, state
//                   directory, relay addresses, placeholders): shared by ferryd and `ferry config check`
//   → FerryServer   listeners, data plane, admin HTTP, metrics, composition
//   → FerryPeer     the peer side's I/O shell: client connections, ferry probe, ferry tunnel
//   → ferryd, ferry thin executables
//   FerryFuzz, ferry-fuzz: fuzz targets over the pure modules (tests only)
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ferryd", targets: ["ferryd"]),
        .executable(name: "ferry", targets: ["ferry"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
    ],
    targets: [
        .target(name: "CFerryLinux"),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CNATS", pkgConfig: "libnats",
                       providers: [.apt(["libnats-dev"])]),
        .target(name: "CFerryTLS", dependencies: ["COpenSSL"]),
        // libbpf (Debian's libbpf-dev) behind a thin shim, for the XDP fast path.
        .target(name: "CFerryXDP", linkerSettings: [.linkedLibrary("bpf")]),
        // Compiles FerryXDP's kernel program with clang's BPF target (SwiftPM builds C for the host only).
        .plugin(name: "BPFObject", capability: .buildTool(), path: "Sources/BPFObject"),
        .target(name: "FerryCore", dependencies: ["CFerryLinux"], swiftSettings: strict),
        .target(name: "FerrySystem", dependencies: ["FerryCore", "CFerryLinux", "CSystemd"],
                swiftSettings: strict),
        .target(name: "FerryWire", dependencies: ["COpenSSL", "FerryCore"], swiftSettings: strict),
        .target(name: "FerryTLS", dependencies: ["COpenSSL", "CFerryTLS", "FerrySystem"], swiftSettings: strict),
        .target(name: "FerryTURN", dependencies: ["FerryCore", "FerryWire"], swiftSettings: strict),
        .target(name: "FerryRelay", dependencies: ["FerryCore", "FerryWire"], swiftSettings: strict),
        .target(name: "FerryXDP", dependencies: ["CFerryXDP", "FerryCore", "FerrySystem", "FerryWire", "FerryTURN", "FerryRelay"], exclude: ["bpf"],
                swiftSettings: strict, plugins: ["BPFObject"]),
        .target(name: "FerrySignal", dependencies: ["FerryCore", "FerryWire", "FerryTLS", "FerryRelay"], swiftSettings: strict),
        .target(name: "FerryClient", dependencies: ["FerryCore", "FerryWire", "FerryTLS", "FerrySignal", "FerryRelay"], swiftSettings: strict),
        .target(name: "FerryConfig",
                dependencies: ["FerryCore", "FerrySystem", .product(name: "TOMLKit", package: "TOMLKit")],
                swiftSettings: strict),
        .target(name: "FerryPreflight",
                dependencies: ["FerryCore", "FerrySystem", "FerryConfig", "FerryTLS", "FerryTURN"], swiftSettings: strict),
        .target(name: "FerryServer",
                dependencies: ["FerryCore", "FerrySystem", "FerryWire", "FerryTURN", "FerryRelay", "FerryXDP", "FerryTLS", "FerrySignal", "FerryConfig", "FerryPreflight", "CNATS",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "DequeModule", package: "swift-collections")],
                swiftSettings: strict),
        .target(name: "FerryPeer",
                dependencies: ["FerryCore", "FerrySystem", "FerryWire", "FerryTLS", "FerrySignal", "FerryClient", "FerryRelay"],
                swiftSettings: strict),
        .executableTarget(name: "ferryd",
                          dependencies: ["FerryServer", "FerryConfig", "FerryWire",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          swiftSettings: strict),
        .executableTarget(name: "ferry",
                          dependencies: ["FerryCore", "FerryConfig", "FerryWire", "FerrySystem", "FerrySignal", "FerryTLS",
                                         "FerryClient", "FerryPeer", "FerryPreflight",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: strict),
        // Fuzz targets (docs/testing.md): a library the unit tests replay corpora through, and the
        // executable scripts/fuzz.sh builds with libFuzzer (a plain build replays files).
        .target(name: "FerryFuzz",
                dependencies: ["FerryCore", "FerrySystem", "FerryWire", "FerryTLS", "FerryTURN", "FerryRelay", "FerrySignal", "FerryConfig", "FerryClient", "COpenSSL"],
                swiftSettings: strict),
        .executableTarget(name: "ferry-fuzz", dependencies: ["FerryFuzz"], swiftSettings: strict),
        .testTarget(name: "FerrySystemTests", dependencies: ["FerrySystem", "FerryCore", "CFerryLinux"], swiftSettings: strict),
        .testTarget(name: "FerryWireTests", dependencies: ["FerryWire", "FerryCore", "FerrySystem"], exclude: ["Vectors"], swiftSettings: strict),
        .testTarget(name: "FerryTLSTests", dependencies: ["FerryTLS", "COpenSSL", "CFerryTLS"], swiftSettings: strict),
        .testTarget(name: "FerrySignalTests", dependencies: ["FerrySignal", "FerrySystem", "FerryCore"], swiftSettings: strict),
        .testTarget(name: "FerryRelayTests", dependencies: ["FerryRelay", "FerryCore", "FerryWire", "FerrySystem"], exclude: ["Vectors"], swiftSettings: strict),
        .testTarget(name: "FerryTURNTests", dependencies: ["FerryTURN", "FerryCore", "FerryClient"], swiftSettings: strict),
        .testTarget(name: "FerryClientTests", dependencies: ["FerryClient", "FerryCore", "FerryWire", "FerryTLS", "FerrySignal", "FerryRelay"], swiftSettings: strict),
        .testTarget(name: "FerryConfigTests", dependencies: ["FerryConfig", "FerryCore", "FerrySystem", "FerryPreflight"], swiftSettings: strict),
        .testTarget(name: "FerryServerTests", dependencies: ["FerryServer", "FerryCore"], swiftSettings: strict),
        .testTarget(name: "FerryFuzzTests", dependencies: ["FerryFuzz"], exclude: ["Corpus", "Crashes"], swiftSettings: strict),
    ]
)
