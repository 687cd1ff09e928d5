/// The release this build is.
public enum FerryVersion {
    public static let string = "0.1.0"
}
