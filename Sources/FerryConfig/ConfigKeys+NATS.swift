extension FerryConfig {
    /// `[signal.nats]`: signaling across instances (docs/deployment.md). Read at start only: the
    /// connection carries every subscription of this instance's peers, and a change of servers or
    /// identity is a reconnection that ferryd makes on restart, when its peers fail over.
    static let natsKeys: [ConfigKey] = [
        ConfigKey(default: "[]", allowed: "nats:// or tls:// URLs", override: "", reload: .restart,
                  meaning: "NATS servers of this region's cluster (any few; the client learns the rest); empty: signaling stays within this process", [
            .field("signal.nats.servers", \.signal.nats.servers, example: [("signal.nats.servers", "[\"nats://127.0.0.1:4222\"]")]),
        ]),
        ConfigKey(default: "ferry", allowed: "NATS tokens joined by dots", override: "", reload: .restart,
                  meaning: "first tokens of every subject; ferryds that should route to each other share it", [
            .field("signal.nats.subject_prefix", \.signal.nats.subjectPrefix, example: [("signal.nats.subject_prefix", "\"ferry.prod\"")]),
        ]),
        ConfigKey(default: "\"\" (random per start)", allowed: "token", override: "", reload: .restart,
                  meaning: "this instance's name in subjects, heartbeats and the status page; unique per running ferryd", [
            .field("signal.nats.instance", \.signal.nats.instance, example: [("signal.nats.instance", "\"eu-1\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "", override: "", reload: .restart,
                  meaning: "NATS credentials: user and password, a token, or a `.creds` file (JWT and seed)", [
            .field("signal.nats.user", \.signal.nats.user, example: [("signal.nats.user", "\"ferry\""), ("signal.nats.password", "\"secret\"")]),
            .field("signal.nats.password", \.signal.nats.password, example: [("signal.nats.password", "\"secret\"")]),
            .field("signal.nats.token", \.signal.nats.token, example: [("signal.nats.token", "\"natstoken\"")]),
            .field("signal.nats.credentials_file", \.signal.nats.credentialsFile, example: [("signal.nats.credentials_file", "\"/etc/ferry/nats.creds\"")]),
        ]),
        ConfigKey(default: "\"\"", allowed: "PEM paths", override: "", reload: .restart,
                  meaning: "TLS to NATS (also for tls:// URLs): the CA that signed the servers, and this client's certificate and key", [
            .field("signal.nats.ca_file", \.signal.nats.caFile, example: [("signal.nats.ca_file", "\"/etc/ferry/nats-ca.pem\"")]),
            .field("signal.nats.cert_file", \.signal.nats.certFile, example: [("signal.nats.cert_file", "\"/etc/ferry/nats.pem\""), ("signal.nats.key_file", "\"/etc/ferry/nats.key\"")]),
            .field("signal.nats.key_file", \.signal.nats.keyFile, example: [("signal.nats.key_file", "\"/etc/ferry/nats.key\""), ("signal.nats.cert_file", "\"/etc/ferry/nats.pem\"")]),
        ]),
        ConfigKey(default: "65536", allowed: "16–10000000", override: "", reload: .restart,
                  meaning: "publishes queued for the NATS thread; past it a message for another instance is answered `unavailable` and counted (`backlog`)", [
            .field("signal.nats.max_pending", \.signal.nats.maxPending, example: [("signal.nats.max_pending", "1024")]),
        ]),
        ConfigKey(default: "65536", allowed: "16–10000000", override: "", reload: .restart,
                  meaning: "messages one NATS subscription may hold undelivered; past it the client drops and counts them (`slow_consumer`)", [
            .field("signal.nats.subscription_pending", \.signal.nats.subscriptionPending, example: [("signal.nats.subscription_pending", "1024")]),
        ]),
        ConfigKey(default: "250", allowed: "10–60000", override: "", reload: .restart,
                  meaning: "milliseconds between reconnection attempts (forever) when NATS is lost", [
            .field("signal.nats.reconnect_wait_ms", \.signal.nats.reconnectWaitMillis, example: [("signal.nats.reconnect_wait_ms", "1000")]),
        ]),
    ]
}
