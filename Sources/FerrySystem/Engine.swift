#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux

/// The worker threads: one event loop each, one per core by default, optionally pinned.
/// Listeners give each worker its own SO_REUSEPORT socket, so the kernel spreads flows over
/// workers and a flow stays on one worker: no state is shared on the packet path.
public final class Engine: @unchecked Sendable {
    /// Static after construction.
    public let loops: [EventLoop]
    private let pin: Bool
    /// Written by `start()`/`join()` on the controlling thread only.
    private var threads: [pthread_t] = []

    public init(workers: Int, pin: Bool) throws(SystemError) {
        precondition(workers > 0)
        var loops: [EventLoop] = []
        for i in 0..<workers { loops.append(try EventLoop(index: i, name: "ferry-w\(i)")) }
        self.loops = loops
        self.pin = pin
    }

    /// Number of CPUs this process may run on.
    public static var availableCores: Int { Int(ferry_cpu_count()) }

    public func start() throws(SystemError) {
        let cores = Engine.availableCores
        for loop in loops {
            let context = WorkerContext(loop: loop, cpu: pin ? loop.index % cores : -1)
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, ferryWorkerMain, Unmanaged.passRetained(context).toOpaque())
            if rc != 0 { throw SystemError(call: "pthread_create", errno: rc) }
            threads.append(tid)
        }
    }

    /// Asks every loop to stop and waits for the threads to end.
    public func stopAndJoin() {
        for loop in loops { loop.stop() }
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
    }
}

final class WorkerContext {
    let loop: EventLoop
    let cpu: Int
    init(loop: EventLoop, cpu: Int) {
        self.loop = loop
        self.cpu = cpu
    }
}

/// A global function, not a closure: a closure literal handed to pthread_create from top-level
/// code was inferred @MainActor and crashed (see ../shared/NOTES.md).
private func ferryWorkerMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let context = Unmanaged<WorkerContext>.fromOpaque(arg!).takeRetainedValue()
    _ = ferry_set_thread_name(context.loop.name)
    if context.cpu >= 0 { _ = ferry_pin_current_thread(Int32(context.cpu)) }
    context.loop.run()
    return nil
}

/// A detached helper thread for blocking control work beside the loops (the tunnel's signaling
/// connection, TURN over TCP/TLS connecting): never for packets.
public enum Threads {
    public static func detach(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let context = ThreadContext(name: name, body: body)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, ferryHelperMain, Unmanaged.passRetained(context).toOpaque())
        if rc != 0 { throw SystemError(call: "pthread_create", errno: rc) }
        pthread_detach(tid)
    }
}

final class ThreadContext {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

private func ferryHelperMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let context = Unmanaged<ThreadContext>.fromOpaque(arg!).takeRetainedValue()
    _ = ferry_set_thread_name(context.name)
    context.body()
    return nil
}
