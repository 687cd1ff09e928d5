#if canImport(Glibc)
import Glibc
#endif
import CFerryLinux

/// Something registered on a loop for readiness events. Called once per epoll event (a batch
/// of packets), never once per packet, so one dynamic call here costs nothing measurable.
public protocol EventHandler: AnyObject {
    /// `events` is the epoll event mask (`EPOLLIN`, `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP`, …).
    func handleEvent(_ events: UInt32, loop: EventLoop)
}

/// A registration on a loop; stale tokens are ignored, so an event delivered for a handler
/// that was removed earlier in the same batch never reaches a newcomer in its slot.
public struct Registration: Hashable, Sendable {
    let slot: UInt32
    let generation: UInt32
    var packed: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
}

public enum Epoll {
    public static let input = UInt32(EPOLLIN.rawValue)
    public static let output = UInt32(EPOLLOUT.rawValue)
    public static let error = UInt32(EPOLLERR.rawValue)
    public static let hangup = UInt32(EPOLLHUP.rawValue)
    public static let readHangup = UInt32(EPOLLRDHUP.rawValue)
    public static let edgeTriggered = UInt32(bitPattern: Int32(EPOLLET.rawValue))
    public static let exclusive = UInt32(EPOLLEXCLUSIVE.rawValue)
}

/// One epoll instance and everything that runs on it: handlers, timers, a once-a-second sweep,
/// end-of-iteration flushes and a mailbox for work posted from other threads.
///
/// Ownership: every member is owned by the loop's thread, except `tasks` (a `Mailbox`, safe
/// from any thread) and `index`/`name` (static after construction). Hence `@unchecked Sendable`:
/// only `execute(_:)` and `stop()` may be called from other threads.
public final class EventLoop: @unchecked Sendable {
    public typealias Task = @Sendable (EventLoop) -> Void

    public let index: Int
    public let name: String
    private let epfd: FileDescriptor
    private let tasks: Mailbox<Task>
    private var handlers: [EventHandler?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [UInt32] = []
    private var timers: TimerWheel<() -> Void>
    private var sweepHooks: [(UInt64) -> Void] = []
    private var flushHooks: [() -> Void] = []
    private var running = false
    /// Sockets taken out of epoll while they are busy (see `pollWithoutWakeups`).
    private var hot: [(fd: Int32, token: Registration, events: UInt32, handler: EventHandler)] = []
    private var firedScratch: [() -> Void] = []
    private static let wakeToken: UInt64 = .max

    /// Monotonic time of the current iteration, in nanoseconds: read once per wakeup.
    public private(set) var now: UInt64
    /// Interval of the sweep hooks.
    public var sweepInterval: UInt64 = 1_000_000_000
    private var nextSweep: UInt64
    /// Upper bound on how long epoll_wait sleeps, so the sweep runs on time.
    public let maxEvents: Int32 = 256

    public init(index: Int, name: String) throws(SystemError) {
        self.index = index
        self.name = name
        epfd = FileDescriptor(try syscallValue("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
        tasks = try Mailbox()
        now = monotonicNanos()
        nextSweep = now + sweepInterval
        timers = TimerWheel(now: now)
        var ev = epoll_event(events: Epoll.input, data: epoll_data_t(u64: EventLoop.wakeToken))
        try syscallValue("epoll_ctl(ADD eventfd)") { sysEpollCtl(epfd.raw, EPOLL_CTL_ADD, tasks.wakeFD.raw, &ev) }
    }

    /// The loop owns its epoll descriptor (registered sockets belong to their handlers).
    deinit { epfd.close() }

    // MARK: Registration (loop thread only)

    @discardableResult
    public func register(fd: Int32, events: UInt32, handler: EventHandler) throws(SystemError) -> Registration {
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
            handlers[Int(slot)] = handler
        } else {
            slot = UInt32(handlers.count)
            handlers.append(handler)
            generations.append(0)
        }
        let token = Registration(slot: slot, generation: generations[Int(slot)])
        var ev = epoll_event(events: events, data: epoll_data_t(u64: token.packed))
        do {
            try syscallValue("epoll_ctl(ADD)") { sysEpollCtl(epfd.raw, EPOLL_CTL_ADD, fd, &ev) }
        } catch {
            release(slot)
            throw error
        }
        return token
    }

    public func modify(fd: Int32, _ token: Registration, events: UInt32) throws(SystemError) {
        var ev = epoll_event(events: events, data: epoll_data_t(u64: token.packed))
        try syscallValue("epoll_ctl(MOD)") { sysEpollCtl(epfd.raw, EPOLL_CTL_MOD, fd, &ev) }
    }

    /// Removes the fd from epoll and forgets the handler. Call before closing the fd.
    public func deregister(fd: Int32, _ token: Registration) {
        guard Int(token.slot) < handlers.count, generations[Int(token.slot)] == token.generation else { return }
        hot.removeAll { $0.token == token }
        var ev = epoll_event()
        _ = sysEpollCtl(epfd.raw, EPOLL_CTL_DEL, fd, &ev)
        release(token.slot)
    }

    private func release(_ slot: UInt32) {
        handlers[Int(slot)] = nil
        generations[Int(slot)] &+= 1
        freeSlots.append(slot)
    }

    public var registeredCount: Int { handlers.count - freeSlots.count }

    /// Takes a busy socket out of epoll and calls its handler every iteration instead, until it
    /// calls `resumeWakeups`. Why: while a socket is in an epoll set, every datagram queued on
    /// it and every sent datagram freed wakes its wait queue (a spinlock with interrupts off, in
    /// `sock_def_readable` and `sock_wfree`); measured, that is ~10% of a forwarding core at
    /// 500k packets/s. A saturated socket has data every time anyway, so it is read directly.
    public func suspendWakeups(fd: Int32, _ token: Registration, events: UInt32) {
        guard Int(token.slot) < handlers.count, generations[Int(token.slot)] == token.generation,
              let handler = handlers[Int(token.slot)], !hot.contains(where: { $0.token == token }) else { return }
        var ev = epoll_event()
        guard sysEpollCtl(epfd.raw, EPOLL_CTL_DEL, fd, &ev) == 0 else { return }
        hot.append((fd, token, events, handler))
    }

    /// Puts a socket taken out by `suspendWakeups` back into epoll. Level-triggered, so data
    /// that arrived in between is reported at once.
    public func resumeWakeups(fd: Int32, _ token: Registration) {
        guard let i = hot.firstIndex(where: { $0.token == token }) else { return }
        let entry = hot.remove(at: i)
        var ev = epoll_event(events: entry.events, data: epoll_data_t(u64: token.packed))
        if sysEpollCtl(epfd.raw, EPOLL_CTL_ADD, fd, &ev) != 0 {
            preconditionFailure("epoll_ctl(ADD) on resume: errno \(errno)")
        }
    }

    /// True while `token`'s socket is polled without wakeups.
    public func isSuspended(_ token: Registration) -> Bool { hot.contains { $0.token == token } }

    // MARK: Timers and hooks (loop thread only)

    @discardableResult
    public func schedule(after nanos: UInt64, _ body: @escaping () -> Void) -> TimerID {
        timers.schedule(at: now + nanos, body)
    }

    public func cancel(_ timer: TimerID) { timers.cancel(timer) }

    /// Runs `hook(now)` every `sweepInterval`: expiry of allocations, permissions, channels.
    public func onSweep(_ hook: @escaping (UInt64) -> Void) { sweepHooks.append(hook) }

    /// Runs `hook` at the end of every loop iteration: where batched sends are flushed.
    public func onIterationEnd(_ hook: @escaping () -> Void) { flushHooks.append(hook) }

    // MARK: Cross-thread

    /// Runs `task` on this loop's thread, soon. Safe from any thread.
    public func execute(_ task: @escaping Task) { tasks.post(task) }

    /// Ends `run()` after the current iteration. Safe from any thread.
    public func stop() { execute { $0.running = false } }

    // MARK: Running

    /// Runs until `stop()`. Call on the loop's own thread.
    public func run() {
        running = true
        var events = [epoll_event](repeating: epoll_event(), count: Int(maxEvents))
        while running {
            let timeout = pollTimeoutMillis()
            let n = events.withUnsafeMutableBufferPointer { buf in
                sysEpollWait(epfd.raw, buf.baseAddress, maxEvents, timeout)
            }
            now = monotonicNanos()
            if n < 0 {
                if errno == EINTR { continue }
                preconditionFailure("epoll_wait: errno \(errno)")
            }
            for i in 0..<Int(n) {
                let ev = events[i]
                let data = ev.data.u64
                if data == EventLoop.wakeToken {
                    for task in tasks.drain() { task(self) }
                    continue
                }
                let slot = Int(truncatingIfNeeded: data & 0xFFFF_FFFF)
                let generation = UInt32(truncatingIfNeeded: data >> 32)
                guard slot < handlers.count, generations[slot] == generation, let handler = handlers[slot] else { continue }
                handler.handleEvent(ev.events, loop: self)
            }
            if !hot.isEmpty {
                // Iterate over a copy: handlers may resume (leave the list) while we go.
                for entry in hot { entry.handler.handleEvent(entry.events, loop: self) }
            }
            if !timers.isEmpty {
                timers.advance(to: now, into: &firedScratch)
                for fire in firedScratch { fire() }
                firedScratch.removeAll(keepingCapacity: true)
            }
            if now >= nextSweep {
                nextSweep = now + sweepInterval
                for hook in sweepHooks { hook(now) }
            }
            for flush in flushHooks { flush() }
        }
    }

    private func pollTimeoutMillis() -> Int32 {
        if !hot.isEmpty { return 0 }
        var wait = nextSweep > now ? nextSweep - now : 0
        if let t = timers.nanosUntilNextTick(now: now) { wait = min(wait, t) }
        return Int32((wait + 999_999) / 1_000_000)
    }
}
