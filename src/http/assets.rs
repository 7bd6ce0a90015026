//! Static files embedded in the binary: the demo widget, the agent console and
//! the browser build of the JavaScript SDK.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The embedded file served at `path` (the request path without its query).
pub fn lookup(path: &str) -> Option<Asset> {
    let _ = path;
    None
}
