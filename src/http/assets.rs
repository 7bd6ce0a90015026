//! Static files embedded in the binary: the demo widget, the agent console and
//! the browser build of the JavaScript SDK.
//!
//! The SDK needs no build step: its ES modules under `clients/js/src/` are
//! served as they are under `/sdk/`, and the demo pages (`web/`) import
//! `/sdk/index.js` with the JSON encoding, so no npm package is needed at
//! runtime in the browser.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TS: &str = "text/plain; charset=utf-8";

/// Every embedded file: request path, content type, body.
static FILES: &[(&str, &str, &[u8])] = &[
    // Demo pages.
    ("/", HTML, include_bytes!("../../web/widget.html")),
    ("/console", HTML, include_bytes!("../../web/console.html")),
    (
        "/static/common.css",
        CSS,
        include_bytes!("../../web/common.css"),
    ),
    (
        "/static/widget.css",
        CSS,
        include_bytes!("../../web/widget.css"),
    ),
    (
        "/static/console.css",
        CSS,
        include_bytes!("../../web/console.css"),
    ),
    ("/static/ui.js", JS, include_bytes!("../../web/ui.js")),
    (
        "/static/widget.js",
        JS,
        include_bytes!("../../web/widget.js"),
    ),
    (
        "/static/console.js",
        JS,
        include_bytes!("../../web/console.js"),
    ),
    // The SDK, module by module.
    (
        "/sdk/index.js",
        JS,
        include_bytes!("../../clients/js/src/index.js"),
    ),
    (
        "/sdk/client.js",
        JS,
        include_bytes!("../../clients/js/src/client.js"),
    ),
    (
        "/sdk/actions.js",
        JS,
        include_bytes!("../../clients/js/src/actions.js"),
    ),
    (
        "/sdk/backoff.js",
        JS,
        include_bytes!("../../clients/js/src/backoff.js"),
    ),
    (
        "/sdk/codec.js",
        JS,
        include_bytes!("../../clients/js/src/codec.js"),
    ),
    (
        "/sdk/emitter.js",
        JS,
        include_bytes!("../../clients/js/src/emitter.js"),
    ),
    (
        "/sdk/errors.js",
        JS,
        include_bytes!("../../clients/js/src/errors.js"),
    ),
    (
        "/sdk/storage.js",
        JS,
        include_bytes!("../../clients/js/src/storage.js"),
    ),
    (
        "/sdk/index.d.ts",
        TS,
        include_bytes!("../../clients/js/types/index.d.ts"),
    ),
];

/// Other spellings of the pages' paths.
fn canonical(path: &str) -> &str {
    match path {
        "/index.html" | "/widget" | "/widget/" | "/widget.html" => "/",
        "/console/" | "/console.html" => "/console",
        other => other,
    }
}

/// The embedded file served at `path` (the request path without its query).
pub fn lookup(path: &str) -> Option<Asset> {
    let path = canonical(path);
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(_, content_type, body)| Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_sdk_are_served() {
        let widget = lookup("/").expect("widget page");
        assert!(widget.content_type.starts_with("text/html"));
        assert!(lookup("/console").is_some());
        assert!(lookup("/console/").is_some());
        assert!(lookup("/sdk/index.js").is_some());
        assert!(lookup("/nope").is_none());
        assert!(lookup("/static/../Cargo.toml").is_none());
    }

    /// Every relative import of an embedded module (`from "./x.js"`) and every
    /// absolute one (`from "/static/ui.js"`) must itself be embedded.
    #[test]
    fn every_module_import_is_served() {
        for (path, content_type, body) in FILES {
            if *content_type != JS {
                continue;
            }
            let text = std::str::from_utf8(body).expect("utf-8 module");
            for line in text.lines() {
                let Some(at) = line.find("from \"") else {
                    continue;
                };
                let rest = &line[at + 6..];
                let Some(end) = rest.find('"') else { continue };
                let spec = &rest[..end];
                let target = if let Some(rel) = spec.strip_prefix("./") {
                    let dir = &path[..path.rfind('/').unwrap() + 1];
                    format!("{dir}{rel}")
                } else if spec.starts_with('/') {
                    spec.to_string()
                } else {
                    continue; // bare specifiers are loaded only on demand (msgpack)
                };
                assert!(
                    lookup(&target).is_some(),
                    "{path} imports {spec}, which is not embedded"
                );
            }
        }
    }

    /// Pages reference only embedded stylesheets and scripts.
    #[test]
    fn page_links_are_served() {
        for page in ["/", "/console"] {
            let text = std::str::from_utf8(lookup(page).unwrap().body).unwrap();
            for attr in ["href=\"/", "src=\"/"] {
                for (at, _) in text.match_indices(attr) {
                    let rest = &text[at + attr.len() - 1..];
                    let target = &rest[..rest.find('"').unwrap()];
                    if target.starts_with("/static/") || target.starts_with("/sdk/") {
                        assert!(
                            lookup(target).is_some(),
                            "{page} links {target}, which is not embedded"
                        );
                    }
                }
            }
        }
    }
}
