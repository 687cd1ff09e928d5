/// Quantities as people read them, for the status page and `ferry status` (one rule for both).
public enum HumanUnits {
    /// 1234567 → "1.2 MB" (powers of 1000, as network rates are given).
    public static func bytes(_ v: Double) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var x = v, k = 0
        while x >= 1000 && k < units.count - 1 { x /= 1000; k += 1 }
        return k == 0 ? "\(Int(x)) B" : "\((x * 10).rounded() / 10) \(units[k])"
    }

    /// Seconds as "42 s", "17 min", "5 h" or "12 days".
    public static func duration(_ seconds: Double) -> String {
        let s = Int(seconds)
        if s < 120 { return "\(s) s" }
        if s < 7200 { return "\(s / 60) min" }
        if s < 172_800 { return "\(s / 3600) h" }
        return "\(s / 86400) days"
    }
}
