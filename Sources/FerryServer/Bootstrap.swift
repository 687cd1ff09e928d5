import Logging
import FerryConfig

/// Process-wide logging set-up for ferryd: one handler, level shared so reload can change it.
public enum LoggingBootstrap {
    public static func start(_ config: FerryConfig) -> LogLevelBox {
        let box = LogLevelBox(Logger.Level(config.log.level))
        let format: FerryLogHandler.Format = config.log.format == .json ? .json : .text
        LoggingSystem.bootstrap { label in FerryLogHandler(label: label, format: format, level: box) }
        return box
    }
}
